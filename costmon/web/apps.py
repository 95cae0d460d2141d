from __future__ import annotations

from django.apps import AppConfig


class WebConfig(AppConfig):
    """The top layer: the dashboard's pages, Prometheus, and the commands that start the whole
    product (`quickstart`, `sync_schedule`). It may use every app; no app uses it."""

    name = "costmon.web"
    label = "web"
    verbose_name = "costmon web"

    def ready(self) -> None:
        from costmon.web.dashboard import warmup
        from costmon.web.prometheus.totals import usage_recorded
        from usage import settled, signals

        # Prometheus's cached usage sums learn of events that land in hours they already hold.
        signals.batch_recorded.connect(
            usage_recorded, dispatch_uid="web.prometheus_sums_after_batch"
        )
        # The dashboard's kept sums of past days are forgotten when those days change.
        signals.batch_recorded.connect(
            settled.usage_recorded, dispatch_uid="web.dashboard_sums_after_batch"
        )
        signals.bulk_loaded.connect(
            settled.usage_loaded, dispatch_uid="web.dashboard_sums_after_bulk_load"
        )
        signals.usage_rewritten.connect(
            settled.usage_rewritten, dispatch_uid="web.dashboard_sums_after_rewrite"
        )
        # ...and computed again in the background, before anyone's view needs them.
        signals.settled_sums_forgotten.connect(
            warmup.sums_forgotten, dispatch_uid="web.dashboard_sums_warm_up"
        )
