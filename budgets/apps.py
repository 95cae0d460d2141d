from django.apps import AppConfig


class BudgetsConfig(AppConfig):
    name = "budgets"

    def ready(self) -> None:
        from budgets import counters, receivers, updates  # noqa: F401  (receivers connect)
        from usage import signals

        # Spend counters follow every ingest commit, exactly once (see budgets.updates).
        signals.batch_preparing.connect(
            updates.batch_preparing, dispatch_uid="budgets.counter_update_prepare"
        )
        signals.batch_committing.connect(
            updates.batch_pending, dispatch_uid="budgets.counter_update_pending"
        )
        signals.batch_recorded.connect(
            updates.record_batch, dispatch_uid="budgets.counter_update_apply"
        )
        # A bulk load (seeding, imports) rebuilds them once at the end instead.
        signals.bulk_loaded.connect(
            counters.bulk_loaded, dispatch_uid="budgets.rebuild_counters_after_bulk_load"
        )
