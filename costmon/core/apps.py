from __future__ import annotations

from django.apps import AppConfig
from django.db.backends.signals import connection_created

from costmon.core.tenancy import install_rls_wrapper


class CostmonConfig(AppConfig):
    """The core every app shares: tenants, memberships and API keys (app label "costmon", as
    before the core had a package of its own, so migrations and tables keep their names)."""

    name = "costmon.core"
    label = "costmon"
    verbose_name = "costmon"

    def ready(self) -> None:
        # Imported when the app registry is ready, as Django asks of system checks.
        from costmon.core import checks  # noqa: F401  (registers system checks)

        connection_created.connect(install_rls_wrapper, dispatch_uid="costmon_rls")
