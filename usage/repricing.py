"""Pricing unpriced events later: the Celery task, and the helper that enqueues it after commit.

The price catalog's writes (`usage.prices`, `usage.services.model_alias_set`) enqueue it, so it
lives below them; `usage.tasks` (the tasks beat runs, which call those writes) is above them.
It keeps its registered name, `usage.tasks.reprice_unpriced_usage`, for the schedule.
"""

from __future__ import annotations

import structlog
from celery import shared_task
from django.db import transaction

from costmon.core.models import Tenant
from costmon.core.tenancy import unscoped
from usage.catalog import GlobalLists
from usage.eventstore.chrewrite import tenants_with_unpriced
from usage.eventstore.clickhouse import ClickHouseStore
from usage.eventstore.current import event_store
from usage.maintenance import usage_reprice_unpriced
from usage.models import CostSource, UsageEvent
from usage.storerewrites import store_rewrites_resume

log = structlog.get_logger(__name__)


@shared_task(name="usage.tasks.reprice_unpriced_usage", ignore_result=True)
def reprice_unpriced_usage(tenant_id: int | None = None) -> int:
    """Price events stored without a price, for one tenant or every tenant that has some.
    With the ClickHouse store it first finishes rewrites left pending (`usage.storerewrites`).
    With a store that cannot rewrite its events it says so in the log and changes nothing."""
    store = event_store()
    if not store.rewrites_events:
        log.warning(
            "unpriced_usage_not_repriced",
            tenant_id=tenant_id,
            reason=f"the {store.label} event store cannot re-price stored events yet",
        )
        return 0
    if isinstance(store, ClickHouseStore):
        store_rewrites_resume(store=store)
    with unscoped():
        tenant_ids = (
            [tenant_id]
            if tenant_id is not None
            else list(tenants_with_unpriced(store))
            if isinstance(store, ClickHouseStore)
            else list(
                UsageEvent.objects.unscoped()
                .filter(cost_source=CostSource.UNPRICED)
                .values_list("tenant_id", flat=True)
                .distinct()
            )
        )
        tenants = list(Tenant.objects.filter(pk__in=tenant_ids))
    changed = 0
    lists: GlobalLists = {}  # the global list indexed once for the pass, not once a tenant
    for tenant in tenants:
        # The service runs in the tenant's own context: RLS applies as for a request.
        changed += usage_reprice_unpriced(tenant=tenant, lists=lists).changed
    log.info("unpriced_usage_repriced", tenants=len(tenants), changed=changed)
    return changed


def schedule_reprice_unpriced(tenant_id: int | None = None) -> None:
    """Enqueue after the current transaction commits, so the task sees the new prices."""
    transaction.on_commit(lambda: reprice_unpriced_usage.delay(tenant_id))
