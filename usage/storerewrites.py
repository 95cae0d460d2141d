"""Rewrites of stored events kept in ClickHouse: re-pricing and deleting chosen events, with the
PostgreSQL rollups of the hours touched rebuilt from ClickHouse (`usage.maintenance` calls these
when that is the store; what both stores share is here too).

There is no transaction across the two databases, so a rewrite is an outbox:
1. it is recorded as an `EventRewrite` row, committed on its own;
2. under the tenant's exclusive ingest lock, in one PostgreSQL transaction: the rows are written
   to ClickHouse again with a new version (re-priced) or as tombstones (deleted), the rollups of
   their hours are rebuilt from ClickHouse, and the row is marked done.
Stopped between ClickHouse's writes and the commit, the row stays pending and the rollups keep
the old figures; the next rewrite of the tenant, the hourly re-pricing task or `reprice_usage`
runs it again (`store_rewrites_resume`): at a higher version, over what ClickHouse holds now,
rebuilding every hour it examines, which is the same end state. So the services refuse to run
inside a transaction of the caller's (`outside_transaction`): the outbox row must commit before
ClickHouse is written. Versions come from PostgreSQL's clock, doubled: even, increasing under
the lock, and never equal to a resent deleted event's (its tombstone's plus one,
`ClickHouseStore.insert_new`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import structlog
from django.db import connection, transaction
from django.db.models import Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from costmon.core.models import Tenant
from costmon.core.periods import TimeRange
from costmon.core.tenancy import tenant_context, unscoped
from usage.catalog import GlobalLists, load_catalog
from usage.eventstore.base import event_query
from usage.eventstore.chrewrite import (
    events_by_key,
    events_write,
    hour_sums,
    store_rollups_match,
)
from usage.eventstore.clickhouse import ClickHouseStore
from usage.kept_metrics import int_rows
from usage.models import (
    CostSource,
    Dimension,
    EndUserDailyRollup,
    EventRewrite,
    HourlyRollup,
    ModelHourlyRollup,
    TagHourlyRollup,
    UsageEvent,
)
from usage.price_lookup import Catalog
from usage.pricing import breakdown
from usage.rollup_writes import rollups_add, store_keeps_users, upsert
from usage.rollups import ROLLUP_SUMS, USER_DAY_KEY, day_of, hour_of
from usage.signals import usage_rewritten
from usage.transactions import rewrite_lock

log = structlog.get_logger(__name__)
Progress = Callable[[int, int], None]


@dataclass
class RepriceReport:
    examined: int = 0
    changed: int = 0
    still_unpriced: int = 0
    hours_rebuilt: int = 0


def price_again(
    catalog: Catalog, names: dict[int, str], event: UsageEvent, report: RepriceReport
) -> bool:
    """Set the event's price from the catalog; whether it changed."""
    if event.cache_hit:
        return False
    found = catalog.resolve(
        names[event.provider_id], names[event.model_id], event.occurred_at, event.tier
    )
    new: tuple[int, int, int | None]
    if found is None:
        new = (0, CostSource.UNPRICED, None)
        report.still_unpriced += 1
    else:
        new = (breakdown(found.price, event.usage).nanos, CostSource.COMPUTED, found.price.id)
    if new == (event.cost_nanos, event.cost_source, event.price_id):
        return False
    event.cost_nanos, event.cost_source, event.price_id = new
    return True


def price_names(tenant: Tenant) -> dict[int, str]:
    """The tenant's provider and model names by dictionary id (what the catalog matches)."""
    kinds = [Dimension.Kind.PROVIDER, Dimension.Kind.MODEL]
    return dict(
        Dimension.objects.for_tenant(tenant).filter(kind__in=kinds).values_list("pk", "value")
    )


def rewritten(tenant_id: int) -> None:
    """Tell the apps above, once this commits, that the tenant's stored usage changed."""
    transaction.on_commit(
        lambda: usage_rewritten.send(sender=UsageEvent, tenant_id=tenant_id), robust=True
    )


def rollups_clear(tenant: Tenant, hours: Sequence[datetime]) -> None:
    """Delete the tenant's rollup rows of these hours (a rebuild writes them again)."""
    for model in (HourlyRollup, ModelHourlyRollup, TagHourlyRollup):
        model.objects.for_tenant(tenant).filter(hour__in=list(hours)).delete()


def user_days_rebuild(tenant: Tenant, hours: Sequence[datetime]) -> None:
    """Sum the daily rollups by end user of the days holding these hours again, from the
    hourly rollups (rebuilt first): a rebuild replaces some hours of a day, the day's sums
    hold its other hours too. One query per day (a day's rows, through the hour index).
    Nothing to do when the event store keeps the sums by end user itself."""
    if store_keeps_users():
        return
    days = sorted({day_of(hour) for hour in hours})
    sums = {name: Coalesce(Sum(name), 0) for name in ROLLUP_SUMS}
    for i in range(0, len(days), 100):
        part = days[i : i + 100]
        EndUserDailyRollup.objects.for_tenant(tenant).filter(day__in=part).delete()
        found = {}
        for day in part:
            rows = (
                HourlyRollup.objects.for_tenant(tenant)
                .filter(hour__gte=day, hour__lt=day + timedelta(days=1))
                .values_list("end_user_id")
                .annotate(**sums)
                .order_by()
            )
            for end_user_id, *values in int_rows(rows):
                found[(tenant.pk, day, end_user_id)] = values
        upsert(EndUserDailyRollup, USER_DAY_KEY, found, replace=False)


def store_rollups_rebuild(
    *, store: ClickHouseStore, tenant: Tenant, hours: Sequence[datetime]
) -> int:
    """Recompute the rollups of these hours from ClickHouse's events. Call inside a transaction
    that holds the tenant's exclusive ingest lock (the buffer flushed first: exact sums)."""
    store.flush(tenant.pk)
    for i in range(0, len(hours), 500):
        part = list(hours[i : i + 500])
        rollups_clear(tenant, part)
        sums, tags = hour_sums(store, tenant, part)
        store_rollups_match(store, tenant.pk, part, sums)
        rollups_add(sums, replace=True, tags=tags)
    user_days_rebuild(tenant, hours)
    return len(hours)


def outside_transaction(name: str) -> None:
    """Refuse (a programming error) to start a rewrite inside the caller's transaction, where
    its outbox row could not commit before ClickHouse is written. A test case's own wrapping
    blocks do not count, as for `transaction.atomic(durable=True)`."""
    blocks = transaction.get_connection().atomic_blocks
    if any(not getattr(block, "_from_testcase", False) for block in blocks):
        raise RuntimeError(
            f"{name} must be called outside transaction.atomic() with the ClickHouse event "
            "store: its outbox row (EventRewrite) must commit before ClickHouse is written."
        )


def store_reprice(
    *,
    store: ClickHouseStore,
    tenant: Tenant,
    start: datetime,
    end: datetime,
    only_unpriced: bool = False,
    progress: Progress | None = None,
    lists: GlobalLists | None = None,
) -> RepriceReport:
    """`usage.maintenance.usage_reprice` on ClickHouse (see the module's docstring)."""
    outside_transaction("usage_reprice")
    store_rewrites_resume(store=store, tenant=tenant)
    with tenant_context(tenant), transaction.atomic():
        job = EventRewrite.objects.create(
            tenant=tenant,
            kind=EventRewrite.Kind.REPRICE,
            start=start,
            end=end,
            only_unpriced=only_unpriced,
        )
    return _run(store, job, first=True, lists=lists, progress=progress)


def store_events_delete(
    *, store: ClickHouseStore, tenant: Tenant, keys: Sequence[tuple[str, datetime]]
) -> int:
    """`usage.maintenance.usage_events_delete` on ClickHouse: the events with these keys (event
    id, time) are deleted; returns how many existed."""
    outside_transaction("usage_events_delete")
    store_rewrites_resume(store=store, tenant=tenant)
    with tenant_context(tenant), transaction.atomic():
        job = EventRewrite.objects.create(
            tenant=tenant,
            kind=EventRewrite.Kind.DELETE,
            keys=[[eid, at.astimezone(UTC).isoformat()] for eid, at in keys],
        )
    return _run(store, job, first=True).changed


def store_rewrites_resume(*, store: ClickHouseStore, tenant: Tenant | None = None) -> int:
    """Finish the rewrites left pending (of one tenant, or every tenant); returns how many."""
    with unscoped():
        pending = EventRewrite.objects.unscoped().filter(done_at__isnull=True)
        if tenant is not None:
            pending = pending.filter(tenant=tenant)
        jobs = list(pending.select_related("tenant").order_by("pk"))
    for job in jobs:
        log.warning("event_rewrite_resumed", rewrite=job.pk, kind=job.kind, tenant=job.tenant_id)
        _run(store, job, first=False)
    return len(jobs)


def _version() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
        (micros,) = cursor.fetchone()
    return 2 * int(micros)


def _run(
    store: ClickHouseStore,
    job: EventRewrite,
    *,
    first: bool,
    lists: GlobalLists | None = None,
    progress: Progress | None = None,
) -> RepriceReport:
    tenant = job.tenant
    report = RepriceReport()
    with tenant_context(tenant), transaction.atomic():
        rewrite_lock(tenant.pk)
        claimed = EventRewrite.objects.for_tenant(tenant).select_for_update()
        if not claimed.filter(pk=job.pk, done_at__isnull=True).exists():
            return report  # another process finished it meanwhile
        # The tenant's buffered rows to the table first: read whole, and replaced by rows
        # inserted after them (the table's merges keep the highest version, or the last row).
        store.flush(tenant.pk)
        version = _version()
        if job.kind == EventRewrite.Kind.DELETE:
            keys = [(eid, datetime.fromisoformat(at)) for eid, at in job.keys]
            events = events_by_key(store, tenant, keys)
            events_write(store, tenant.pk, events, version=version, deleted=True)
            report.examined = report.changed = len(events)
            hours = {hour_of(at) for _, at in keys}
        else:
            hours = _reprice(store, job, version, first, lists, progress, report)
        report.hours_rebuilt = store_rollups_rebuild(
            store=store, tenant=tenant, hours=sorted(hours)
        )
        claimed.filter(pk=job.pk).update(done_at=timezone.now(), changed=report.changed)
        if report.changed or not first:
            rewritten(tenant.pk)
    log.info(
        "events_rewritten", rewrite=job.pk, kind=job.kind, tenant=tenant.slug, **report.__dict__
    )
    return report


def _reprice(
    store: ClickHouseStore,
    job: EventRewrite,
    version: int,
    first: bool,
    lists: GlobalLists | None,
    progress: Progress | None,
    report: RepriceReport,
) -> set[datetime]:
    """Write the job's events whose price changes at `version`; the hours to rebuild (every
    hour examined when finishing a job begun before: its first attempt may have written some)."""
    tenant = job.tenant
    assert job.start is not None and job.end is not None
    catalog = load_catalog(tenant.pk, lists=lists)
    names = price_names(tenant)
    query = event_query(
        time_range=TimeRange(job.start, job.end, "custom", ZoneInfo("UTC")),
        # Finishing a job begun before: every event, as the first attempt's are priced now.
        cost_source="unpriced" if job.only_unpriced and first else None,
    )
    hours: set[datetime] = set()
    batch: list[UsageEvent] = []
    for event in store.iter_events(tenant, query):
        if event.cost_source == CostSource.CALLER:
            continue
        if not first:
            hours.add(hour_of(event.occurred_at))
        if job.only_unpriced and event.cost_source != CostSource.UNPRICED:
            continue
        report.examined += 1
        if price_again(catalog, names, event, report):
            batch.append(event)
            hours.add(hour_of(event.occurred_at))
        if len(batch) >= 1000:
            events_write(store, tenant.pk, batch, version=version)
            report.changed += len(batch)
            batch = []
        if progress and report.examined % 10000 == 0:
            progress(report.examined, report.examined)
    events_write(store, tenant.pk, batch, version=version)
    report.changed += len(batch)
    if progress:
        progress(report.examined, report.examined)
    return hours
