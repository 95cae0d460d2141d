"""Rewrites of stored usage: re-pricing, deleting events, resetting a tenant, and retention.

Each keeps the rollups equal to the sum of the events (the hours touched are rebuilt in the same
transaction, under the tenant's exclusive ingest lock) and tells the apps above, once it commits,
that the tenant's usage changed (`usage.signals.usage_rewritten`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import structlog
from django.db import transaction
from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models import Max as models_max
from django.db.models import Min as models_min
from django.db.models.functions import TruncHour

from costmon.core.models import Tenant
from costmon.core.tenancy import tenant_context, unscoped
from usage.catalog import GlobalLists, load_catalog
from usage.eventstore.base import RewriteUnavailable
from usage.eventstore.chrewrite import unpriced_bounds
from usage.eventstore.clickhouse import ClickHouseStore
from usage.eventstore.current import event_store
from usage.models import (
    PRICED_COLUMNS,
    CostSource,
    EndUserDailyRollup,
    EventStamp,
    HourlyRollup,
    ModelHourlyRollup,
    TagHourlyRollup,
    UsageEvent,
)
from usage.rollups import SUMMED_EVENT_COLUMNS, aggregate_tags, hour_of
from usage.storage import events_set_prices, rollups_add
from usage.storerewrites import (
    RepriceReport,
    price_again,
    price_names,
    rewritten,
    rollups_clear,
    store_events_delete,
    store_reprice,
    store_rollups_rebuild,
    user_days_rebuild,
)
from usage.transactions import rewrite_lock

# What `aggregate_tags` reads of an event besides its tenant, time and tags (a rollup rebuild).
_TAG_EVENT_FIELDS = ("provider_id", "model_id", "operation_id", *SUMMED_EVENT_COLUMNS)

log = structlog.get_logger(__name__)
__all__ = ["RepriceReport"]


def usage_reprice(
    *,
    tenant: Tenant,
    start: datetime,
    end: datetime,
    only_unpriced: bool = False,
    progress: Callable[[int, int], None] | None = None,
    lists: GlobalLists | None = None,
) -> RepriceReport:
    """Price a tenant's events in [start, end) again with the catalog as it is now.

    Caller-supplied costs are kept. The rollups of every hour touched are rebuilt from the
    events in the same transaction, under the tenant's exclusive ingest lock, so rollups stay
    equal to the sum of their events. On ClickHouse: `usage.storerewrites.store_reprice`.
    """
    store = event_store()
    store.require_rewrites("Re-pricing stored events")
    if isinstance(store, ClickHouseStore):
        return store_reprice(
            store=store,
            tenant=tenant,
            start=start,
            end=end,
            only_unpriced=only_unpriced,
            progress=progress,
            lists=lists,
        )
    catalog = load_catalog(tenant.pk, lists=lists)
    report = RepriceReport()
    with tenant_context(tenant), transaction.atomic():
        rewrite_lock(tenant.pk)
        qs = UsageEvent.objects.for_tenant(tenant).filter(
            occurred_at__gte=start, occurred_at__lt=end
        )
        qs = qs.exclude(cost_source=CostSource.CALLER)
        if only_unpriced:
            qs = qs.filter(cost_source=CostSource.UNPRICED)
        total = qs.count()
        hours: set[datetime] = set()
        batch: list[UsageEvent] = []
        names = price_names(tenant)
        for event in qs.only(
            "pk", "tenant_id", "event_id", "occurred_at", "provider_id", "model_id", "service_tier", *PRICED_COLUMNS,
            "cost_nanos", "cost_source", "price_id", "cache_hit",
        ).iterator(chunk_size=2000):  # fmt: skip
            report.examined += 1
            if price_again(catalog, names, event, report):
                batch.append(event)
                hours.add(hour_of(event.occurred_at))
            if len(batch) >= 1000:
                _save_prices(batch, report)
                batch = []
            if progress and report.examined % 10000 == 0:
                progress(report.examined, total)
        _save_prices(batch, report)
        report.hours_rebuilt = rollups_rebuild(tenant=tenant, hours=sorted(hours))
        if report.changed:
            rewritten(tenant.pk)
    if progress:
        progress(report.examined, report.examined)
    log.info("usage_repriced", tenant=tenant.slug, **report.__dict__)
    return report


def _save_prices(events: list[UsageEvent], report: RepriceReport) -> None:
    if events:
        events_set_prices(events)
        report.changed += len(events)


def usage_events_delete(
    *,
    events: QuerySet[UsageEvent] | None = None,
    tenant: Tenant | None = None,
    keys: Sequence[tuple[str, datetime]] = (),
) -> int:
    """Delete events and rebuild the rollups of their hours, under each tenant's exclusive
    ingest lock, so rollups still equal the sum of their events; returns how many existed.
    The events: a queryset of PostgreSQL's table (admin; staff code, runs unscoped), or a
    tenant's keys (event id, time) in whichever store holds them."""
    store = event_store()
    store.require_rewrites("Deleting chosen events")
    if events is None:
        if tenant is None:
            raise ValueError("give events, or a tenant and its keys")
        if isinstance(store, ClickHouseStore):
            return store_events_delete(store=store, tenant=tenant, keys=keys)
        by_key = Q(pk__in=[])
        for event_id, at in keys:
            by_key |= Q(event_id=event_id, occurred_at=at)
        with unscoped():
            events = UsageEvent.objects.for_tenant(tenant).filter(by_key)
    elif isinstance(store, ClickHouseStore):
        raise RewriteUnavailable(
            "Deleting events chosen in PostgreSQL's table is not available with the ClickHouse "
            "event store: its events are there. Delete them by key (usage_events_delete with "
            "tenant and keys); nothing was changed."
        )
    with unscoped():
        rows = list(events.values_list("pk", "tenant_id", "occurred_at", "event_id"))
        by_tenant: dict[int, tuple[list[int], set[datetime]]] = defaultdict(lambda: ([], set()))
        key_sets: dict[int, tuple[set[datetime], set[str]]] = defaultdict(lambda: (set(), set()))
        for pk, tenant_id, occurred_at, event_id in rows:
            by_tenant[tenant_id][0].append(pk)
            by_tenant[tenant_id][1].add(hour_of(occurred_at))
            key_sets[tenant_id][0].add(occurred_at)
            key_sets[tenant_id][1].add(event_id)
        tenants = list(Tenant.objects.filter(pk__in=by_tenant).order_by("pk"))
    with transaction.atomic():
        for tenant in tenants:
            pks, hours = by_tenant[tenant.pk]
            with tenant_context(tenant):
                rewrite_lock(tenant.pk)
                # By id, narrowed by time and event id so PostgreSQL finds the rows through
                # the key (tenant, occurred_at, event_id): `id` has no index there.
                times, ids = key_sets[tenant.pk]
                UsageEvent.objects.for_tenant(tenant).filter(
                    pk__in=pks, occurred_at__in=times, event_id__in=ids
                ).delete()
                rollups_rebuild(tenant=tenant, hours=sorted(hours))
            rewritten(tenant.pk)
    return len(rows)


def usage_tenant_reset(*, tenant: Tenant) -> tuple[int, int]:
    """Delete all of a tenant's usage (events, rollups, kept stamps), under its exclusive ingest lock so
    no batch lands half-way. Returns the counts deleted.

    The dictionary of names stays: every process may hold its ids (`dimension_ids`), and a
    name without usage shows nowhere.
    """
    with tenant_context(tenant), transaction.atomic():
        rewrite_lock(tenant.pk)
        # Raw deletes: no per-row signals or cascades to collect over millions of events.
        events = event_store().delete_tenant(tenant.pk)
        rollups = HourlyRollup.objects.for_tenant(tenant)._raw_delete(HourlyRollup.objects.db)
        ModelHourlyRollup.objects.for_tenant(tenant)._raw_delete(ModelHourlyRollup.objects.db)
        TagHourlyRollup.objects.for_tenant(tenant)._raw_delete(TagHourlyRollup.objects.db)
        EndUserDailyRollup.objects.for_tenant(tenant)._raw_delete(EndUserDailyRollup.objects.db)
        # The times kept for time-less events: starting over, a resend is a new event.
        EventStamp.objects.for_tenant(tenant)._raw_delete(EventStamp.objects.db)
        rewritten(tenant.pk)
    return events, rollups


def usage_reprice_unpriced(*, tenant: Tenant, lists: GlobalLists | None = None) -> RepriceReport:
    """Price the tenant's unpriced events for which a price now exists (whole history); a
    pass over many tenants shares `lists` (see `load_catalog`)."""
    store = event_store()
    store.require_rewrites("Re-pricing stored events")
    if isinstance(store, ClickHouseStore):
        found = unpriced_bounds(store, tenant.pk)
        if found is None:
            return RepriceReport()
        return usage_reprice(
            tenant=tenant, start=found[0], end=found[1], only_unpriced=True, lists=lists
        )
    with tenant_context(tenant):  # the task calls it with no context: RLS would hide every row
        bounds = (
            UsageEvent.objects.for_tenant(tenant)
            .filter(cost_source=CostSource.UNPRICED)
            .aggregate(first=models_min("occurred_at"), last=models_max("occurred_at"))
        )
    if bounds["first"] is None:
        return RepriceReport()
    return usage_reprice(
        tenant=tenant,
        start=bounds["first"],
        end=bounds["last"] + timedelta(microseconds=1),
        only_unpriced=True,
        lists=lists,
    )


def usage_events_purge(
    *, before: datetime, batch_size: int = 10_000, progress: Callable[[int], None] | None = None
) -> int:
    """Remove raw events older than `before`, every tenant; rollups stay, so every total and
    chart keeps its history. Returns the number of events removed. Staff code: runs unscoped.

    PostgreSQL: whole monthly partitions that end at or before `before` are dropped (no row
    is deleted; a month that ends later is kept entirely, so retention works in whole months).
    SQLite: the rows are deleted, in batches.
    """
    deleted = 0
    with unscoped():
        dropped = event_store().drop_before(before)
        if dropped is not None:
            for name, rows in dropped:
                log.info("events_partition_dropped", partition=name, events=rows)
            return sum(rows for _, rows in dropped)
        while True:
            ids = list(
                UsageEvent.objects.unscoped()
                .filter(occurred_at__lt=before)
                .values_list("pk", flat=True)[:batch_size]
            )
            if not ids:
                return deleted
            with transaction.atomic():
                deleted += (
                    UsageEvent.objects.unscoped()
                    .filter(pk__in=ids)
                    ._raw_delete(UsageEvent.objects.db)
                )
            if progress:
                progress(deleted)


# --- rollups -------------------------------------------------------------------------------


def rollups_rebuild(*, tenant: Tenant, hours: Sequence[datetime]) -> int:
    """Recompute the rollup tables for the given hours from the events. Call inside a
    transaction that holds the tenant's exclusive ingest lock."""
    if not hours:
        return 0
    store = event_store()
    store.require_rewrites("Rebuilding rollups from the events")
    if isinstance(store, ClickHouseStore):
        return store_rollups_rebuild(store=store, tenant=tenant, hours=hours)
    rebuilt = 0
    for i in range(0, len(hours), 500):
        part = list(hours[i : i + 500])
        rollups_clear(tenant, part)
        window = Q()
        for hour in part:
            window |= Q(occurred_at__gte=hour, occurred_at__lt=hour + timedelta(hours=1))
        # Tags live in each event's tag set: the tagged events of these hours, summed per tag.
        tagged = (
            UsageEvent.objects.for_tenant(tenant)
            .filter(window, tag_set__isnull=False)
            .values("tenant_id", "occurred_at", *_TAG_EVENT_FIELDS, tags=F("tag_set__tags"))
        )
        rows = (
            UsageEvent.objects.for_tenant(tenant)
            .filter(window)
            .annotate(bucket=TruncHour("occurred_at", tzinfo=UTC))
            .values(
                "bucket", "provider_id", "model_id", "operation_id", "end_user_id", "api_key_id"
            )
            .annotate(
                calls=Count("pk"),
                errors=Count("pk", filter=Q(is_error=True)),
                cache_hits=Count("pk", filter=Q(cache_hit=True)),
                unpriced_calls=Count("pk", filter=Q(cost_source=CostSource.UNPRICED)),
                input_tokens_sum=Sum("input_tokens"),
                output_tokens_sum=Sum("output_tokens"),
                cached_input_tokens_sum=Sum("cached_input_tokens"),
                cache_write_tokens_sum=Sum("cache_write_tokens"),
                reasoning_tokens_sum=Sum("reasoning_tokens"),
                cost_nanos_sum=Sum("cost_nanos"),
                latency_ms_sum=Sum("latency_ms"),
                latency_count=Count("latency_ms"),
            )
        )
        sums = {
            (
                tenant.pk,
                r["bucket"],
                r["provider_id"],
                r["model_id"],
                r["operation_id"],
                r["end_user_id"],
                r["api_key_id"],
            ): [
                r["calls"],
                r["errors"],
                r["cache_hits"],
                r["unpriced_calls"],
                r["input_tokens_sum"] or 0,
                r["output_tokens_sum"] or 0,
                r["cached_input_tokens_sum"] or 0,
                r["cache_write_tokens_sum"] or 0,
                r["reasoning_tokens_sum"] or 0,
                r["cost_nanos_sum"] or 0,
                r["latency_ms_sum"] or 0,
                r["latency_count"],
            ]
            for r in rows
        }
        rollups_add(sums, replace=True, tags=aggregate_tags(tagged.iterator(chunk_size=5000)))
        rebuilt += len(part)
    user_days_rebuild(tenant, hours)
    return rebuilt
