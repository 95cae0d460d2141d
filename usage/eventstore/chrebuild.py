"""Whole ranges of the ClickHouse store's rollups made right (`chrollups.reconcile`): the
`clickhouse_rollups_rebuild` command, the rollups' part of `events_migrate` and of
`clickhouse_rebalance`.

A month in which the shard holds events of the tenant is recomputed from them, a UTC day at a
time (each day in a transaction of its own that holds the tenant's exclusive ingest lock, the
buffers flushed: ingest waits for a day at most). A month without events there (retention
dropped them; or never copied) keeps its rollups: the rebuild leaves it as it is, the migration
fills it from PostgreSQL's `HourlyRollup` and the rebalance from the old shard's rollups, in
both cases by adding the difference, so a second run adds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import transaction
from django.db.models import Sum
from django.db.models.functions import TruncMonth

from costmon.core.models import Tenant
from usage.eventstore.chrollups import (
    ROLLUPS,
    copy_sums,
    month_span,
    month_totals,
    months_of,
    reconcile,
    rollup_sums_by_key,
)
from usage.eventstore.chschema import buffer_flush
from usage.eventstore.chserver import Connections
from usage.eventstore.clickhouse import ClickHouseStore
from usage.models import HourlyRollup
from usage.rollups import ROLLUP_KEY, ROLLUP_SUMS, Sums
from usage.transactions import rewrite_lock

DAY = 86400


@dataclass
class RollupReport:
    months_rebuilt: int = 0  # recomputed from the events
    months_copied: int = 0  # without events: filled from elsewhere (migration, rebalance)
    months_kept: int = 0  # without events: left as they are (the rebuild)
    months_skipped: int = 0  # the same events and sums as the source's: nothing to do
    keys_changed: int = 0  # rollup keys whose sums a difference was added to


Progress = Callable[[Tenant, int, RollupReport], None]


def _month_of(at: datetime) -> int:
    at = at.astimezone(UTC)
    return at.year * 100 + at.month


def month_rebuild(store: ClickHouseStore, index: int, tenant_id: int, lo: int, hi: int) -> int:
    """Recompute the tenant's rollups on shard `index` from its events there, from `lo` to `hi`
    (unix seconds, whole hours), a day at a time under the tenant's lock; keys changed."""
    conns = store.connections
    changed = 0
    for start in range(lo, hi, DAY):
        with transaction.atomic():
            rewrite_lock(tenant_id)
            buffer_flush(conns, index)
            changed += reconcile(conns, index, tenant_id, start, min(start + DAY, hi))
    return changed


def rollups_rebuild(
    store: ClickHouseStore,
    tenant: Tenant,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    progress: Progress | None = None,
) -> RollupReport:
    """The tenant's rollups from `since` to `until` (UTC hours, rounded outwards) recomputed
    from its events, month by month; months without events are kept."""
    report = RollupReport()
    index = store.shard_of(tenant.pk)
    buffer_flush(store.connections, index)
    events, rollups = months_of(store.connections, index, tenant.pk)
    first = int(since.timestamp()) // 3600 * 3600 if since else None
    last = -(-int(until.timestamp()) // 3600) * 3600 if until else None
    for month in sorted(events | rollups):
        lo, hi = month_span(month)
        lo, hi = max(lo, first if first is not None else lo), min(hi, last or hi)
        if lo >= hi:
            continue
        if month in events:
            report.keys_changed += month_rebuild(store, index, tenant.pk, lo, hi)
            report.months_rebuilt += 1
        else:
            report.months_kept += 1
        if progress:
            progress(tenant, month, report)
    return report


def _postgres_sums(tenant: Tenant, month: int) -> Sums:
    """PostgreSQL's `HourlyRollup` rows of the tenant's month, keyed as `chrollups` keys."""
    lo, hi = month_span(month)
    rows = (
        HourlyRollup.objects.for_tenant(tenant)
        .filter(hour__gte=datetime.fromtimestamp(lo, UTC), hour__lt=datetime.fromtimestamp(hi, UTC))
        .values_list(*ROLLUP_KEY, *ROLLUP_SUMS)
    )
    width = len(ROLLUP_KEY)
    sums: Sums = {}
    for row in rows:
        key = (int(row[0]), row[1].astimezone(UTC), *(int(v or 0) for v in row[2:width]))
        sums[key] = [int(v or 0) for v in row[width:]]
    return sums


def _postgres_totals(tenant: Tenant) -> dict[int, list[int]]:
    """PostgreSQL's `HourlyRollup` sums of the tenant per month (YYYYMM)."""
    rows = (
        HourlyRollup.objects.for_tenant(tenant)
        .annotate(m=TruncMonth("hour", tzinfo=UTC))
        .values_list("m")
        .annotate(*(Sum(name) for name in ROLLUP_SUMS))
        .order_by()
    )
    return {_month_of(m): [int(v or 0) for v in values] for m, *values in rows}


def rollups_from_postgres(
    store: ClickHouseStore, tenant: Tenant, changed: set[int] | None = None
) -> RollupReport:
    """`events_migrate`'s last step for a tenant (its events copied first): months with events
    in ClickHouse recomputed from them; the months of PostgreSQL's `HourlyRollup` without
    (retention dropped their events) filled from it. A month whose events were complete
    already (not in `changed`: None, every month changed) and whose sums per month are
    PostgreSQL's is skipped. Call in the tenant's context."""
    report = RollupReport()
    index = store.shard_of(tenant.pk)
    buffer_flush(store.connections, index)
    events, _ = months_of(store.connections, index, tenant.pk)
    kept = _postgres_totals(tenant)
    held = month_totals(store.connections, index, tenant.pk)
    for month in sorted(events | kept.keys()):
        untouched = changed is not None and month not in changed
        if (untouched or month not in events) and held.get(month) == kept.get(month):
            report.months_skipped += 1
        elif month in events:
            lo, hi = month_span(month)
            report.keys_changed += month_rebuild(store, index, tenant.pk, lo, hi)
            report.months_rebuilt += 1
        else:
            with transaction.atomic():
                rewrite_lock(tenant.pk)
                sums = _postgres_sums(tenant, month)
                report.keys_changed += copy_sums(store.connections, index, tenant.pk, month, sums)
            report.months_copied += 1
    return report


def rollups_move(
    store: ClickHouseStore,
    old: Connections,
    source: int,
    target: int,
    tenant_id: int,
    complete: set[int],
) -> RollupReport:
    """`clickhouse_rebalance`'s rollups of a moved tenant (its events copied first): on the new
    shard `target`, months in which the old shard `source` holds events recomputed from the
    copies; months of the old shard's rollups without events there copied from them. A month
    whose events the new shard held complete already (`complete`, or none on either) and whose
    rollup sums per month are the old shard's is skipped: a run again after the copy is quick."""
    report = RollupReport()
    buffer_flush(old, source)
    events, rollups = months_of(old, source, tenant_id)
    totals = month_totals(old, source, tenant_id)
    held = month_totals(store.connections, target, tenant_id)
    for month in sorted(events | rollups):
        lo, hi = month_span(month)
        if (month in complete or month not in events) and held.get(month) == totals.get(month):
            report.months_skipped += 1
        elif month in events:
            report.keys_changed += month_rebuild(store, target, tenant_id, lo, hi)
            report.months_rebuilt += 1
        else:
            sums = rollup_sums_by_key(old, source, tenant_id, lo, hi, table=ROLLUPS)
            with transaction.atomic():
                rewrite_lock(tenant_id)
                report.keys_changed += copy_sums(store.connections, target, tenant_id, month, sums)
            report.months_copied += 1
    return report
