"""Copying PostgreSQL's raw events into the ClickHouse event store (`manage.py events_migrate`).

Idempotent and resumable: a tenant's UTC day is skipped when ClickHouse holds exactly its keys,
judged without reading them: both databases give, per day, the number of keys and the sum of
a 32-bit hash of each (the first 8 hex digits of the MD5 of `event id|unix seconds|micros`,
which PostgreSQL's `md5` and ClickHouse's `MD5` compute alike). Any other day is read from
PostgreSQL in key order, in chunks, and each chunk's events whose keys ClickHouse lacks are
inserted. Keys count in any version: an event deleted on ClickHouse (a tombstone) that
PostgreSQL still holds is not copied again. So a run stopped half-way, run again, or run once
more after the switch (for events that arrived meanwhile, even as many as ClickHouse got that
day) copies each event once. A day on which ClickHouse also holds events PostgreSQL lacks (sent
after the switch) is read again on each run, copying nothing.

Then the store's own rollups of the tenant (`chrebuild.rollups_from_postgres`): months with
events in ClickHouse recomputed from them, months that PostgreSQL's `HourlyRollup` has without
events (retention dropped them) filled from it; each by adding the difference, so idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db import connection
from django.db.models import Q

from costmon.core.models import Tenant
from costmon.core.tenancy import tenant_context
from usage.eventstore.chrebuild import rollups_from_postgres
from usage.eventstore.chrows import BUFFER
from usage.eventstore.clickhouse import ClickHouseStore, tenant_where
from usage.models import UsageEvent
from usage.rows import EVENT_COLUMNS

CHUNK = 10_000


@dataclass
class MigrateReport:
    examined: int = 0  # events read from PostgreSQL
    copied: int = 0  # of them, inserted into ClickHouse
    days_skipped: int = 0  # tenant-days ClickHouse had complete already (`_pg_days`)
    rollup_keys: int = 0  # rollup keys of the store whose sums changed


def _pg_days(tenant: Tenant) -> dict[date, tuple[int, int]]:
    """The tenant's keys per UTC day in PostgreSQL: (how many, sum of their hashes mod 2^64)."""
    table = UsageEvent._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT day, count(*), sum(h) FROM (SELECT (occurred_at AT TIME ZONE 'UTC')::date "
            "AS day, ('x' || substr(md5(event_id || '|' || "
            "floor(extract(epoch FROM occurred_at))::bigint || '|' || "
            "((extract(epoch FROM occurred_at) * 1000000)::bigint %% 1000000)), 1, 8))"
            f"::bit(32)::bigint AS h FROM {table} WHERE tenant_id = %s) AS k GROUP BY day",
            [tenant.pk],
        )
        return {day: (int(n), int(h) % 2**64) for day, n, h in cursor.fetchall()}


def _ch_days(store: ClickHouseStore, tenant: Tenant) -> dict[date, tuple[int, int]]:
    """The same of ClickHouse: each key once, in any version (tombstones count)."""
    key = "concat(event_id, '|', toString(toUInt32(occurred_at)), '|', toString(micros))"
    rows = store.run(
        tenant.pk,
        "SELECT toDate(occurred_at) AS day, count(), "
        f"sum(reinterpretAsUInt32(reverse(unhex(substring(hex(MD5({key})), 1, 8))))) "
        f"FROM (SELECT DISTINCT occurred_at, micros, event_id FROM {BUFFER} "
        f"WHERE {tenant_where(tenant.pk)}) GROUP BY day",
    )
    return {day: (int(n), int(h)) for day, n, h in rows}


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
            held = _ch_days(store, tenant)
            changed: set[int] = set()  # months (YYYYMM) with a day copied
            for day, keys in sorted(_pg_days(tenant).items()):
                if held.get(day) == keys:
                    report.days_skipped += 1
                    continue
                changed.add(day.year * 100 + day.month)
                start = datetime.combine(day, time(), UTC)
                _copy(store, tenant, start, start + timedelta(days=1), chunk, report)
                if progress:
                    progress(tenant, report)
            report.rollup_keys += rollups_from_postgres(store, tenant, changed).keys_changed
    return report


def _copy(
    store: ClickHouseStore,
    tenant: Tenant,
    start: datetime,
    end: datetime,
    chunk: int,
    report: MigrateReport,
) -> None:
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
