from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"

    def ready(self) -> None:
        # Imported once the models are loaded (Django's app loading), hence here. The tasks
        # are registered in every process, web included: alerts.services enqueues the
        # delivery task by its name (DELIVER_NOTIFICATION_TASK).
        from alerts import receivers, tasks  # noqa: F401
        from budgets.signals import emergency_stop_changed

        # An emergency stop tripped or lifted is announced at once, not at the next evaluation.
        emergency_stop_changed.connect(
            receivers.announce_emergency_stop, dispatch_uid="alerts.announce_emergency_stop"
        )
