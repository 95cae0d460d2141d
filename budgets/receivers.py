"""How the budgets app reacts to what the usage app tells it."""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from budgets import counters
from budgets.tasks import reconcile_counters
from usage.signals import usage_rewritten


@receiver(usage_rewritten, dispatch_uid="budgets.rebuild_counters_after_rewrite")
def rebuild_counters_after_rewrite(sender: Any, *, tenant_id: int, **kwargs: Any) -> None:
    """Re-priced or deleted events change what was spent: checks read PostgreSQL until the
    counters are rebuilt, which starts at once."""
    counters.mark_stale(tenant_id)
    reconcile_counters.delay(tenant_id)
