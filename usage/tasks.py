"""Celery tasks of the usage app: thin wrappers that pick tenants and call services."""

from __future__ import annotations

import structlog
from celery import shared_task

from costmon.core.models import Tenant
from costmon.core.tenancy import unscoped
from usage.models import CostSource, UsageEvent
from usage.services import usage_reprice_unpriced

log = structlog.get_logger(__name__)


@shared_task(ignore_result=True)
def reprice_unpriced_usage(tenant_id: int | None = None) -> int:
    """Price events stored without a price, for one tenant or every tenant that has some."""
    with unscoped():
        tenant_ids = (
            [tenant_id]
            if tenant_id is not None
            else list(
                UsageEvent.objects.unscoped()
                .filter(cost_source=CostSource.UNPRICED)
                .values_list("tenant_id", flat=True)
                .distinct()
            )
        )
        tenants = list(Tenant.objects.filter(pk__in=tenant_ids))
    changed = 0
    for tenant in tenants:
        # The service runs in the tenant's own context: RLS applies as for a request.
        changed += usage_reprice_unpriced(tenant=tenant).changed
    log.info("unpriced_usage_repriced", tenants=len(tenants), changed=changed)
    return changed


def schedule_reprice_unpriced(tenant_id: int | None = None) -> None:
    """Enqueue after the current transaction commits, so the task sees the new prices."""
    from django.db import transaction

    transaction.on_commit(lambda: reprice_unpriced_usage.delay(tenant_id))


@shared_task(ignore_result=True)
def apply_retention() -> int:
    """Delete raw events past COSTMON_RETENTION_DAYS (rollups stay)."""
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from usage.services import usage_events_purge

    if not settings.COSTMON_RETENTION_DAYS:
        return 0
    deleted = usage_events_purge(
        before=timezone.now() - timedelta(days=settings.COSTMON_RETENTION_DAYS)
    )
    log.info("retention_applied", deleted=deleted, days=settings.COSTMON_RETENTION_DAYS)
    return deleted


@shared_task(ignore_result=True)
def sync_prices() -> int | None:
    """Sync the global catalog from COSTMON_PRICES_URL (daily). A failure is recorded where
    staff look (Price syncs in the admin) and tried again the next day; the catalog keeps its
    prices meanwhile."""
    from django.conf import settings

    from costmon.core.exceptions import DomainError
    from usage.management.commands.load_prices import read_price_list
    from usage.prices import price_sync_failed, prices_sync

    url, format = settings.COSTMON_PRICES_URL, settings.COSTMON_PRICES_FORMAT
    if not url:
        return None
    try:
        sync = prices_sync(price_list=read_price_list(url, format))
    except DomainError as exc:
        price_sync_failed(source=url, format=format, error=exc.message)
        return None
    return sync.pk
