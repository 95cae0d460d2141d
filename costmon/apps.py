from __future__ import annotations

from django.apps import AppConfig


class CostmonConfig(AppConfig):
    name = "costmon"
    verbose_name = "costmon"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from costmon import checks  # noqa: F401  (registers system checks)
        from costmon.tenancy import install_rls_wrapper

        connection_created.connect(install_rls_wrapper, dispatch_uid="costmon_rls")

        from costmon.prometheus.totals import usage_recorded
        from usage import services

        # Prometheus's cached usage sums learn of events that land in hours they already hold.
        if usage_recorded not in services.after_record_hooks:
            services.after_record_hooks.append(usage_recorded)
