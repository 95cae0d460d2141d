"""Celery tasks of the usage app: thin wrappers that pick tenants and call services.

`reprice_unpriced_usage` is defined in `usage.repricing` (the catalog's writes enqueue it) and
named here for the worker and the schedule.
"""

from __future__ import annotations

from datetime import timedelta

import structlog
from celery import shared_task
from django.conf import settings
from django.utils import timezone

from costmon.core.exceptions import DomainError
from usage.eventstore.base import StoreUnavailable
from usage.eventstore.clickhouse import ClickHouseStore
from usage.eventstore.current import event_store
from usage.maintenance import usage_events_purge
from usage.prices import price_sync_failed, prices_sync, read_price_list
from usage.repricing import reprice_unpriced_usage
from usage.storage import events_partitions_ahead, stamps_forget_before, usage_analyze
from usage.storereconcile import store_reconcile

__all__ = [
    "apply_retention",
    "create_event_partitions",
    "reconcile_store_rollups",
    "reprice_unpriced_usage",
    "sync_prices",
]

log = structlog.get_logger(__name__)


@shared_task(ignore_result=True)
def create_event_partitions() -> int:
    """PostgreSQL: this month's events partition and the next two's, ahead of their events.

    Then fresh planner statistics for the events table as a whole: autovacuum analyzes each
    partition but never the partitioned parent, whose statistics plan the reads that span
    months (a 90-day view)."""
    created = events_partitions_ahead(timezone.now())
    if created:
        log.info("events_partitions_created", months=[f"{m:%Y-%m}" for m in created])
    usage_analyze()
    return len(created)


@shared_task(ignore_result=True)
def apply_retention() -> int:
    """Remove raw events past COSTMON_RETENTION_DAYS (rollups stay): on PostgreSQL whole
    monthly partitions, so a month goes once all of it is past the cutoff. The stamps of
    time-less events older than the cutoff are forgotten too."""
    if not settings.COSTMON_RETENTION_DAYS:
        return 0
    cutoff = timezone.now() - timedelta(days=settings.COSTMON_RETENTION_DAYS)
    deleted = usage_events_purge(before=cutoff)
    # The times kept for events sent without one go at the cutoff too (a plain DELETE).
    stamps = stamps_forget_before(cutoff)
    log.info(
        "retention_applied", deleted=deleted, stamps=stamps, days=settings.COSTMON_RETENTION_DAYS
    )
    return deleted


@shared_task(ignore_result=True)
def sync_prices() -> int | None:
    """Sync the global catalog from COSTMON_PRICES_URL (daily). A failure is recorded where
    staff look (Price syncs in the admin) and tried again the next day; the catalog keeps its
    prices meanwhile."""
    url, format = settings.COSTMON_PRICES_URL, settings.COSTMON_PRICES_FORMAT
    if not url:
        return None
    try:
        sync = prices_sync(price_list=read_price_list(url, format))
    except DomainError as exc:
        price_sync_failed(source=url, format=format, error=exc.message)
        return None
    return sync.pk


@shared_task(ignore_result=True)
def reconcile_store_rollups() -> int:
    """ClickHouse store: repair PostgreSQL's rollups of the recent hours
    (COSTMON_CLICKHOUSE_RECONCILE_HOURS) that a lost COMMIT left short (`usage.storereconcile`);
    the hours repaired. Nothing to do on the PostgreSQL store."""
    store = event_store()
    if not isinstance(store, ClickHouseStore):
        return 0
    since = timezone.now() - timedelta(hours=settings.COSTMON_CLICKHOUSE_RECONCILE_HOURS)
    try:
        return store_reconcile(store=store, since=since).hours_repaired
    except StoreUnavailable as exc:
        # ClickHouse restarting: the next run, 10 minutes on, compares the same hours again.
        log.warning("store_reconcile_skipped", error=str(exc))
        return 0
