"""PostgreSQL's rollups brought back to the ClickHouse store's after PostgreSQL lost a commit.

Ingest on ClickHouse (`ClickHouseStore.insert_new`) adds a batch's sums to PostgreSQL's rollups,
inserts the events and the store's own rollups into ClickHouse, and PostgreSQL commits last. If
that COMMIT fails (connection lost, server restarting), ClickHouse keeps the events and its
rollups, while PostgreSQL's by-model and by-tag rollups, and the counter update that commits with
them (`budgets.updates`), are gone; a retry finds every key held and adds nothing. Two repairs:
- `held_batch_repair`, on that retry itself (a batch with keys held already): its hours are
  compared and repaired in the retry's own transaction, so the retry's 201 is true at once;
- `store_reconcile`, every tenant's recent hours (`COSTMON_CLICKHOUSE_RECONCILE_HOURS`), from
  `usage.tasks.reconcile_store_rollups` (Celery beat, with the ClickHouse store only) or
  `manage.py clickhouse_reconcile`: for batches never retried.

Both compare each UTC hour's sums by model key (the store's rollups folded onto
`ModelHourlyRollup`'s key) and repair an hour where PostgreSQL holds fewer calls than the store
for some key; an hour where PostgreSQL holds more is left alone (events a ClickHouse buffer lost
stay counted there: README, "Buffer"). A repair rebuilds the hour from the events under the
tenant's exclusive ingest lock (`storerewrites.store_rollups_rebuild`: by model, by tag from the
events' tag sets, and the store's own rollups), so a batch in flight is never counted twice, then
tells the apps above (`usage_rewritten`): budgets mark the tenant's counters stale, so checks
read PostgreSQL, and rebuild them; the dashboard forgets its kept sums.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from django.db import transaction

from costmon.core.models import Tenant
from costmon.core.tenancy import tenant_context, unscoped
from usage.eventstore.base import EventStore
from usage.eventstore.chrollups import rollup_sums_by_model
from usage.eventstore.chschema import buffer_flush
from usage.eventstore.clickhouse import ClickHouseStore
from usage.models import ModelHourlyRollup
from usage.rollups import MODEL_ROLLUP_KEY, ROLLUP_SUMS
from usage.storerewrites import rewritten, store_rollups_rebuild
from usage.transactions import rewrite_lock

log = structlog.get_logger(__name__)

# (tenant id, hour number, provider id, model id, operation id): 0 for none, as in ClickHouse.
ModelKey = tuple[int, int, int, int, int]
ModelSums = dict[ModelKey, list[int]]
CALLS = ROLLUP_SUMS.index("calls")


@dataclass
class StoreReconcileReport:
    tenants_repaired: int = 0
    hours_repaired: int = 0
    hours_kept: int = 0  # PostgreSQL holds more than the store there: left alone (see above)


Progress = Callable[[Tenant, list[datetime]], None]


def _store_sums(
    store: ClickHouseStore, index: int, lo: int, hi: int, *, tenant_id: int | None = None
) -> ModelSums:
    """The store's rollups of shard `index` by model key (`chrollups.rollup_sums_by_model`)."""
    return _keyed(rollup_sums_by_model(store.connections, index, lo, hi, tenant_id=tenant_id))


def _postgres_sums(lo: int, hi: int, *, tenant: Tenant | None = None) -> ModelSums:
    """PostgreSQL's `ModelHourlyRollup` rows from `lo` to `hi` by model key: one tenant's, or
    (staff code) every tenant's."""
    start, end = datetime.fromtimestamp(lo, UTC), datetime.fromtimestamp(hi, UTC)
    if tenant is None:
        with unscoped():
            return _postgres_rows(ModelHourlyRollup.objects.unscoped(), start, end)
    with tenant_context(tenant):
        return _postgres_rows(ModelHourlyRollup.objects.for_tenant(tenant), start, end)


def _postgres_rows(rows: Any, start: datetime, end: datetime) -> ModelSums:
    found = rows.filter(hour__gte=start, hour__lt=end).values_list(*MODEL_ROLLUP_KEY, *ROLLUP_SUMS)
    return _keyed((row[0], int(row[1].timestamp()) // 3600, *row[2:]) for row in found)


def _keyed(rows: Iterable[Sequence[Any]]) -> ModelSums:
    sums: ModelSums = {}
    width = len(MODEL_ROLLUP_KEY)
    for row in rows:
        values = [int(v or 0) for v in row[width:]]
        if any(values):  # a key all of whose sums are 0 (deleted events) is no row
            t, h, p, m, o = (int(v or 0) for v in row[:width])
            sums[(t, h, p, m, o)] = values
    return sums


def _short_hours(held: ModelSums, kept: ModelSums) -> tuple[set[tuple[int, int]], int]:
    """(tenant id, hour number) of the hours where PostgreSQL (`kept`) holds fewer calls than
    the store (`held`) for some key; and how many other hours differ (PostgreSQL ahead)."""
    short: set[tuple[int, int]] = set()
    differing: set[tuple[int, int]] = set()
    for key in held.keys() | kept.keys():
        store, postgres = held.get(key), kept.get(key)
        if store == postgres:
            continue
        differing.add(key[:2])
        if (store[CALLS] if store else 0) > (postgres[CALLS] if postgres else 0):
            short.add(key[:2])
    return short, len(differing - short)


def _repair(store: ClickHouseStore, tenant: Tenant, numbers: Iterable[int]) -> list[datetime]:
    """Compare the tenant's hours `numbers` again and rebuild those PostgreSQL is short of.
    The caller holds the tenant's ingest lock exclusively (or, in ingest, the store's lock
    with the ingest lock shared), so nothing of the tenant is in flight: exact."""
    wanted = set(numbers)
    if not wanted:
        return []
    lo, hi = min(wanted) * 3600, (max(wanted) + 1) * 3600
    held = _store_sums(store, store.shard_of(tenant.pk), lo, hi, tenant_id=tenant.pk)
    kept = _postgres_sums(lo, hi, tenant=tenant)
    short, _ = _short_hours(held, kept)
    hours = [datetime.fromtimestamp(h * 3600, UTC) for t, h in sorted(short) if h in wanted]
    if not hours:
        return []
    store_rollups_rebuild(store=store, tenant=tenant, hours=hours)
    rewritten(tenant.pk)  # once this commits: counters rebuilt, kept sums forgotten
    log.warning(
        "store_rollups_repaired",
        tenant=tenant.slug,
        hours=len(hours),
        first_hour=hours[0].isoformat(),
        last_hour=hours[-1].isoformat(),
    )
    return hours


def held_batch_repair(
    *, store: EventStore, tenant: Tenant, rows: Sequence[dict[str, Any]]
) -> list[datetime]:
    """A batch some of whose keys the ClickHouse store held already (a retry), just stored:
    if PostgreSQL's rollups of its hours are short of the store's (the first attempt's COMMIT
    was lost), rebuild them now, in the ingest transaction, under its locks (its new events
    are in both already). The hours repaired; nothing on the PostgreSQL store. Cheap when
    nothing is short: one query to each database."""
    if not isinstance(store, ClickHouseStore) or not rows:
        return []
    return _repair(store, tenant, {int(r["occurred_at"].timestamp()) // 3600 for r in rows})


def store_reconcile(
    *,
    store: ClickHouseStore,
    since: datetime,
    tenant: Tenant | None = None,
    progress: Progress | None = None,
) -> StoreReconcileReport:
    """Repair PostgreSQL's rollups of every hour from `since`'s (of one tenant, or all) that
    they are short of the store's (see the module's docstring). First one comparison per shard
    and one in PostgreSQL, without locks (a batch in flight may look short); then each tenant
    with short hours, under its exclusive ingest lock, its buffers flushed, compared again and
    repaired in one transaction. Doing it twice changes nothing."""
    report = StoreReconcileReport()
    lo, hi = int(since.timestamp()) // 3600 * 3600, 2**32 - 3600
    shards = range(len(store.shards)) if tenant is None else [store.shard_of(tenant.pk)]
    held: ModelSums = {}
    for index in shards:
        held.update(
            _store_sums(store, index, lo, hi, tenant_id=tenant.pk if tenant is not None else None)
        )
    short, report.hours_kept = _short_hours(held, _postgres_sums(lo, hi, tenant=tenant))
    by_tenant: dict[int, set[int]] = {}
    for tenant_id, number in short:
        by_tenant.setdefault(tenant_id, set()).add(number)
    with unscoped():
        tenants = list(Tenant.objects.filter(pk__in=by_tenant).order_by("pk"))
    for each in tenants:
        with tenant_context(each), transaction.atomic():
            rewrite_lock(each.pk)
            buffer_flush(store.connections, store.shard_of(each.pk))
            hours = _repair(store, each, by_tenant[each.pk])
        if hours:
            report.tenants_repaired += 1
            report.hours_repaired += len(hours)
        if progress:
            progress(each, hours)
    return report
