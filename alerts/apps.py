from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"

    def ready(self) -> None:
        from alerts import services
        from budgets import services as budgets_services

        # An emergency stop tripped or lifted is announced at once, not at the next evaluation.
        if services.on_emergency_stop not in budgets_services.stop_hooks:
            budgets_services.stop_hooks.append(services.on_emergency_stop)
