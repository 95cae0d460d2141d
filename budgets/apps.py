from django.apps import AppConfig


class BudgetsConfig(AppConfig):
    name = "budgets"

    def ready(self) -> None:
        from budgets import counters, receivers  # noqa: F401  (connects the receivers)
        from usage import bulk, services

        # Spend counters follow every ingest commit.
        if counters.record_batch not in services.after_record_hooks:
            services.after_record_hooks.append(counters.record_batch)
        # A bulk load (seeding, imports) rebuilds them once at the end instead.
        if counters.bulk_loaded not in bulk.after_bulk_load_hooks:
            bulk.after_bulk_load_hooks.append(counters.bulk_loaded)
