from django.apps import AppConfig


class BudgetsConfig(AppConfig):
    name = "budgets"

    def ready(self) -> None:
        from budgets import counters, receivers, updates  # noqa: F401  (receivers connect)
        from usage import bulk, services

        # Spend counters follow every ingest commit, exactly once (see budgets.updates).
        if updates.batch_pending not in services.before_commit_hooks:
            services.before_commit_hooks.append(updates.batch_pending)
        if updates.record_batch not in services.after_record_hooks:
            services.after_record_hooks.append(updates.record_batch)
        # A bulk load (seeding, imports) rebuilds them once at the end instead.
        if counters.bulk_loaded not in bulk.after_bulk_load_hooks:
            bulk.after_bulk_load_hooks.append(counters.bulk_loaded)
