from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"

    def ready(self) -> None:
        # Imported once the models are loaded (Django's app loading), hence here. The tasks
        # are registered in every process, web included: alerts.services enqueues the
        # delivery task by its name (DELIVER_NOTIFICATION_TASK).
        from alerts import receivers, tasks  # noqa: F401
        from budgets.signals import emergency_stop_changed, usage_counted
        from usage import signals

        # An emergency stop tripped or lifted is announced at once, not at the next evaluation.
        emergency_stop_changed.connect(
            receivers.announce_emergency_stop, dispatch_uid="alerts.announce_emergency_stop"
        )
        # Changed usage makes the tenant's next round of frequent rules due (alerts.rounds):
        # once the spend counters hold it (ingest's pending counter updates keep it due until
        # then), or a bulk load or a rewrite changed it.
        usage_counted.connect(receivers.usage_counted, dispatch_uid="alerts.usage_counted")
        signals.bulk_loaded.connect(receivers.bulk_loaded, dispatch_uid="alerts.bulk_loaded")
        signals.usage_rewritten.connect(
            receivers.usage_rewritten, dispatch_uid="alerts.usage_rewritten"
        )
