from django.apps import AppConfig


class BudgetsConfig(AppConfig):
    name = "budgets"

    def ready(self) -> None:
        from budgets import counters
        from usage import services

        # Spend counters follow every ingest commit.
        if counters.record_batch not in services.after_record_hooks:
            services.after_record_hooks.append(counters.record_batch)
