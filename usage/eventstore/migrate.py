"""Copying PostgreSQL's raw events into the ClickHouse event store (`manage.py events_migrate`).

Idempotent and resumable: a tenant's month of which ClickHouse already holds as many keys is
skipped; any other is read from PostgreSQL in key order, in chunks, and each chunk's events whose
keys ClickHouse lacks are inserted. Keys count in any version: an event deleted on ClickHouse
(a tombstone) that PostgreSQL still holds is not copied again. So a run stopped half-way, run
again, or run once more after the switch (for events that arrived meanwhile) copies each event
once. Rollups are not touched: they stay in PostgreSQL and already hold these events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db.models import Count, Q
from django.db.models.functions import TruncMonth

from costmon.core.models import Tenant
from costmon.core.tenancy import tenant_context
from usage.eventstore.clickhouse import ClickHouseStore
from usage.models import UsageEvent
from usage.rows import EVENT_COLUMNS

CHUNK = 10_000


@dataclass
class MigrateReport:
    examined: int = 0  # events read from PostgreSQL
    copied: int = 0  # of them, inserted into ClickHouse
    months_skipped: int = 0  # tenant-months ClickHouse had complete already


def _pg_months(tenant: Tenant) -> dict[int, int]:
    rows = (
        UsageEvent.objects.for_tenant(tenant)
        .annotate(month=TruncMonth("occurred_at", tzinfo=UTC))
        .values("month")
        .annotate(n=Count("pk"))
        .values_list("month", "n")
    )
    return {month.year * 100 + month.month: n for month, n in rows}


def events_migrate(
    *,
    store: ClickHouseStore,
    tenants: list[Tenant],
    chunk: int = CHUNK,
    progress: Callable[[Tenant, MigrateReport], None] | None = None,
) -> MigrateReport:
    report = MigrateReport()
    for tenant in tenants:
        with tenant_context(tenant):
            held = store.months(tenant.pk)
            for month, count in sorted(_pg_months(tenant).items()):
                if held.get(month, 0) >= count:
                    report.months_skipped += 1
                    continue
                _copy_month(store, tenant, month, chunk, report)
                if progress:
                    progress(tenant, report)
    return report


def _copy_month(
    store: ClickHouseStore, tenant: Tenant, month: int, chunk: int, report: MigrateReport
) -> None:
    year, number = divmod(month, 100)
    start = datetime(year, number, 1, tzinfo=UTC)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    events = UsageEvent.objects.for_tenant(tenant).filter(
        occurred_at__gte=start, occurred_at__lt=end
    )
    last: tuple[datetime, str] | None = None
    while True:
        page = events
        if last is not None:
            page = page.filter(
                Q(occurred_at__gt=last[0]) | Q(occurred_at=last[0], event_id__gt=last[1])
            )
        rows = list(page.order_by("occurred_at", "event_id").values(*EVENT_COLUMNS)[:chunk])
        if not rows:
            return
        report.examined += len(rows)
        have = store.keys_held(tenant.pk, rows)
        fresh = [r for r in rows if store.key(r) not in have]
        if fresh:
            store.insert_rows(tenant.pk, fresh)
            report.copied += len(fresh)
        last = (rows[-1]["occurred_at"], rows[-1]["event_id"])
