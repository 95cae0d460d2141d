"""Writes for usage: recording batches, re-pricing, and the price catalog."""

from __future__ import annotations

import contextlib
import functools
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from django.db import connection, transaction
from django.db.models import Max as models_max
from django.db.models import Min as models_min
from django.db.models import Q, QuerySet

from costmon.core.models import Tenant
from costmon.core.money import usd_to_nanos
from costmon.core.tenancy import forget_rls_state, raw_cursor, tenant_context
from usage.catalog import bump_version, catalog_for
from usage.ingest import EventIn
from usage.models import (
    PRICED_COLUMNS,
    CostSource,
    Dimension,
    HourlyRollup,
    ModelAlias,
    ModelHourlyRollup,
    ServiceTier,
    UsageEvent,
)
from usage.pricing import Catalog, Usage, breakdown
from usage.rollups import aggregate, hour_of, rollups_add, rollups_rebuild, with_rollups
from usage.signals import usage_rewritten

log = structlog.get_logger(__name__)

# Ingest takes this PostgreSQL advisory lock (shared) per tenant and re-pricing takes it
# exclusively, so a rollup rebuild never races an ingest into the same hours.
_LOCK_NAMESPACE = 7401

Kind = Dimension.Kind


@dataclass(frozen=True, slots=True)
class EventResult:
    event_id: str
    cost_nanos: int
    cost_source: int
    duplicate: bool


# --- dimensions ---------------------------------------------------------------------------


# Dictionary ids this process has seen committed, per tenant: {(kind, value): id}. An entry,
# once committed, stays for as long as its tenant (a usage reset keeps the dictionary), so a
# known id never goes stale and a batch of known names needs no query at all.
_known_ids: dict[int, dict[tuple[int, str], int]] = {}
_KNOWN_PER_TENANT = 100_000  # past this (many end users), start the tenant's map over


def forget_known_dimensions() -> None:
    _known_ids.clear()


def dimension_ids(
    *, tenant: Tenant | int, wanted: Iterable[tuple[int, str]]
) -> dict[tuple[int, str], int]:
    """Ids of the tenant's dictionary entries, creating the missing ones."""
    tenant_id = tenant if isinstance(tenant, int) else tenant.pk
    known = _known_ids.get(tenant_id, {})
    found: dict[tuple[int, str], int] = {}
    unknown: list[tuple[int, str]] = []
    for key in set(wanted):
        pk = known.get(key)
        if pk is None:
            unknown.append(key)
        else:
            found[key] = pk
    if not unknown:
        return found
    unknown.sort()  # a fixed order, so concurrent batches never deadlock
    by_kind: dict[int, list[str]] = defaultdict(list)
    for kind, value in unknown:
        by_kind[kind].append(value)
    looked_up: dict[tuple[int, str], int] = {}

    def fetch() -> None:
        q = Q()
        for kind, values in by_kind.items():
            q |= Q(kind=kind, value__in=values)
        for pk, kind, value in (
            Dimension.objects.for_tenant(tenant_id).filter(q).values_list("pk", "kind", "value")
        ):
            looked_up[(kind, value)] = pk

    fetch()
    missing = [key for key in unknown if key not in looked_up]
    if missing:
        Dimension.objects.bulk_create(
            [Dimension(tenant_id=tenant_id, kind=k, value=v) for k, v in missing],
            ignore_conflicts=True,
        )
        by_kind = defaultdict(list)
        for kind, value in missing:
            by_kind[kind].append(value)
        fetch()
    found.update(looked_up)

    def remember() -> None:
        # Only once committed: entries created in a transaction that rolls back never existed.
        mine = _known_ids.setdefault(tenant_id, {})
        if len(mine) + len(looked_up) > _KNOWN_PER_TENANT:
            mine.clear()
        mine.update(looked_up)

    transaction.on_commit(remember)
    return found


# --- pricing one event ----------------------------------------------------------------------


def usage_of(event: EventIn) -> Usage:
    """What the event says the call consumed, for pricing."""
    return Usage(
        input_tokens=event.input_tokens,
        output_tokens=event.output_tokens,
        cached_input_tokens=event.cached_input_tokens,
        cache_write_tokens=event.cache_write_tokens,
        cache_write_1h_tokens=event.cache_write_1h_tokens,
        input_audio_tokens=event.input_audio_tokens,
        output_audio_tokens=event.output_audio_tokens,
        input_image_tokens=event.input_image_tokens,
        output_image_tokens=event.output_image_tokens,
        reasoning_tokens=event.reasoning_tokens,
        web_search_calls=event.web_search_calls,
        output_images=event.output_images,
    )


def price_event(catalog: Catalog, event: EventIn) -> tuple[int, int, int | None]:
    """(cost in nano-dollars, cost source, catalog row used) for one validated event."""
    if event.cost_usd is not None:
        return usd_to_nanos(event.cost_usd), CostSource.CALLER, None
    if event.cache_hit:
        # Served from the application's own cache: no API call, nothing to pay.
        return 0, CostSource.COMPUTED, None
    found = catalog.resolve(event.provider, event.model, event.occurred_at, event.service_tier)
    if found is None:
        return 0, CostSource.UNPRICED, None
    return breakdown(found.price, usage_of(event)).nanos, CostSource.COMPUTED, found.price.id


# --- recording a batch -----------------------------------------------------------------------

# (column, PostgreSQL type) of the bulk insert; short type names keep the statement under
# psycopg's 4 kB parse cache (see `insert_statement`).
_EVENT_COLUMN_TYPES = (
    ("tenant_id", "int8"),
    ("event_id", "text"),
    ("occurred_at", "timestamptz"),
    ("provider_id", "int4"),
    ("model_id", "int4"),
    ("operation_id", "int4"),
    ("end_user_id", "int4"),
    ("session_id", "int4"),
    ("api_key_id", "int8"),
    ("tags", "jsonb"),
    ("input_tokens", "int4"),
    ("output_tokens", "int4"),
    ("cached_input_tokens", "int4"),
    ("cache_write_tokens", "int4"),
    ("reasoning_tokens", "int4"),
    ("cache_write_1h_tokens", "int4"),
    ("input_audio_tokens", "int4"),
    ("output_audio_tokens", "int4"),
    ("input_image_tokens", "int4"),
    ("output_image_tokens", "int4"),
    ("web_search_calls", "int4"),
    ("output_images", "int4"),
    ("service_tier", "int2"),
    ("cost_nanos", "int8"),
    ("cost_source", "int2"),
    ("price_id", "int4"),
    ("latency_ms", "int4"),
    ("is_error", "bool"),
    ("cache_hit", "bool"),
    ("prompt_hash", "text"),
)
_EVENT_COLUMNS = tuple(c for c, _ in _EVENT_COLUMN_TYPES)
_PG_EVENT_TYPES = tuple(t for _, t in _EVENT_COLUMN_TYPES)
# Called with (tenant, the rows just stored) after the ingest transaction commits, while the
# tenant's shared ingest lock is still held: the budgets app updates its spend counters here,
# and a counter rebuild (which takes the lock exclusively) never sees a batch half-counted.
after_record_hooks: list[Callable[[Tenant, list[dict[str, Any]]], None]] = []
# Called with the same arguments inside the ingest transaction, just before it commits: the
# budgets app writes the batch's counter update there, so a process that dies between the
# commit and the hooks above leaves a record that its update is still to be applied.
before_commit_hooks: list[Callable[[Tenant, list[dict[str, Any]]], None]] = []


def usage_record_batch(
    *, tenant: Tenant, events: Sequence[EventIn], api_key_id: int | None = None
) -> list[EventResult]:
    """Price and store a validated batch; events already stored are reported as duplicates.

    One transaction holds the events and the rollup changes, so rollups always equal the sum
    of the events. Re-sending a batch (even concurrently) never counts an event twice: the
    unique (tenant, event_id) index decides which copy is stored. `api_key_id` is the key that
    reported the batch (budgets per key count its spend).
    """
    catalog = catalog_for(tenant.pk)
    priced: dict[str, tuple[EventIn, int, int, int | None]] = {}
    for event in events:
        if event.event_id not in priced:  # the same id twice in one batch: the first one counts
            priced[event.event_id] = (event, *price_event(catalog, event))
    first = {eid: i for i, eid in enumerate(priced)}
    with tenant_context(tenant), _ingest_lock(tenant.pk):
        try:
            # One transaction, one commit: new dictionary entries, events and rollups.
            with transaction.atomic():
                dims = dimension_ids(tenant=tenant, wanted=_dimension_keys(events))
                rows = [
                    _event_row(tenant.pk, e, dims, cost, source, api_key_id or 0, price_id)
                    for e, cost, source, price_id in priced.values()
                ]
                inserted = _insert_events(rows)
                fresh = [r for r in rows if r["event_id"] in inserted]
                if connection.vendor != "postgresql":  # there the insert added them
                    rollups_add(aggregate(fresh))
                if fresh:
                    for hook in before_commit_hooks:
                        hook(tenant, fresh)
        except Exception:
            forget_rls_state(connection)
            raise
        if fresh:
            _run_hooks(tenant, fresh)
        stored = _stored_costs(
            tenant.pk, [r["event_id"] for r in rows if r["event_id"] not in inserted]
        )
    results = []
    reported: set[str] = set()
    for event in events:
        eid = event.event_id
        row = rows[first[eid]]
        if eid in inserted and eid not in reported:
            reported.add(eid)
            results.append(EventResult(eid, row["cost_nanos"], row["cost_source"], False))
        else:
            # Stored earlier (report what was stored then), or repeated within this batch.
            cost, source = stored.get(eid, (row["cost_nanos"], row["cost_source"]))
            results.append(EventResult(eid, cost, source, True))
    return results


@contextlib.contextmanager
def _ingest_lock(tenant_id: int) -> Iterator[None]:
    """The tenant's ingest lock, shared, held across the commit and the after-commit hooks."""
    if connection.vendor != "postgresql":
        yield  # SQLite serialises writers already
        return
    key = [_LOCK_NAMESPACE, tenant_id % 2_000_000_000]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock_shared(%s, %s)", key)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock_shared(%s, %s)", key)


def _run_hooks(tenant: Tenant, rows: list[dict[str, Any]]) -> None:
    for hook in after_record_hooks:
        try:
            hook(tenant, rows)
        except Exception:
            log.exception("after_record_hook_failed", hook=getattr(hook, "__name__", repr(hook)))


def _dimension_keys(events: Iterable[EventIn]) -> set[tuple[int, str]]:
    keys: set[tuple[int, str]] = set()
    for e in events:
        keys.add((Kind.PROVIDER, e.provider))
        keys.add((Kind.MODEL, e.model))
        keys.add((Kind.OPERATION, e.operation))
        keys.add((Kind.END_USER, e.end_user))
        if e.session_id:
            keys.add((Kind.SESSION, e.session_id))
    return keys


def _event_row(
    tenant_id: int,
    e: EventIn,
    dims: dict[tuple[int, str], int],
    cost: int,
    source: int,
    api_key_id: int,
    price_id: int | None = None,
) -> dict[str, Any]:
    return {
        # Not stored: read by the after-record hooks (budgets match names, settle reservations).
        "names": (e.provider, e.model, e.operation, e.end_user),
        "reservation_id": e.reservation_id,
        "api_key_id": api_key_id,
        "tenant_id": tenant_id,
        "event_id": e.event_id,
        "occurred_at": e.occurred_at,
        "provider_id": dims[(Kind.PROVIDER, e.provider)],
        "model_id": dims[(Kind.MODEL, e.model)],
        "operation_id": dims[(Kind.OPERATION, e.operation)],
        "end_user_id": dims[(Kind.END_USER, e.end_user)],
        "session_id": dims[(Kind.SESSION, e.session_id)] if e.session_id else None,
        "tags": e.tags,
        "input_tokens": e.input_tokens,
        "output_tokens": e.output_tokens,
        "cached_input_tokens": e.cached_input_tokens,
        "cache_write_tokens": e.cache_write_tokens,
        "reasoning_tokens": e.reasoning_tokens,
        # The rarer parts as NULL when zero: a NULL costs the row nothing.
        "cache_write_1h_tokens": e.cache_write_1h_tokens or None,
        "input_audio_tokens": e.input_audio_tokens or None,
        "output_audio_tokens": e.output_audio_tokens or None,
        "input_image_tokens": e.input_image_tokens or None,
        "output_image_tokens": e.output_image_tokens or None,
        "web_search_calls": e.web_search_calls or None,
        "output_images": e.output_images or None,
        "service_tier": ServiceTier.code(e.service_tier),
        "cost_nanos": cost,
        "cost_source": int(source),
        "price_id": price_id,
        "latency_ms": e.latency_ms,
        "is_error": e.is_error,
        "cache_hit": e.cache_hit,
        "prompt_hash": e.prompt_hash,
    }


def _lock_tenant(tenant_id: int, *, shared: bool) -> None:
    if connection.vendor != "postgresql":
        return  # SQLite serialises writers already
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {fn}(%s, %s)", [_LOCK_NAMESPACE, tenant_id % 2_000_000_000])


@functools.cache
def insert_statement() -> str:
    """PostgreSQL: one array parameter per column, new events added to the rollups in the same
    statement; the ids of the events inserted come back."""
    unnest = ", ".join(f"%b::{t}[]" for t in _PG_EVENT_TYPES)
    return (
        with_rollups(
            f"INSERT INTO {UsageEvent._meta.db_table} ({', '.join(_EVENT_COLUMNS)}) "
            f"SELECT * FROM unnest({unnest}) ON CONFLICT (tenant_id, event_id) DO NOTHING"
        )
        + " SELECT event_id FROM fresh"
    )


def _insert_events(rows: list[dict[str, Any]]) -> set[str]:
    """Insert what is new, and on PostgreSQL add it to the rollups in the same statement;
    return the event ids that were inserted."""
    if not rows:
        return set()
    table = UsageEvent._meta.db_table
    columns = ", ".join(_EVENT_COLUMNS)
    inserted: set[str] = set()
    if connection.vendor == "postgresql":
        # One statement, one array parameter per column: the fastest bulk path short of COPY,
        # and unlike COPY it can skip duplicates.
        arrays: list[list[Any] | None] = []
        for col in _EVENT_COLUMNS:
            if col == "tags":
                values = [json.dumps(r["tags"]) if r["tags"] is not None else None for r in rows]
            else:
                values = [r[col] for r in rows]
            # A column with no value in the batch (the rarer token kinds, usually) goes as a
            # NULL array, which unnest pads with NULLs: nothing to encode per row.
            arrays.append(values if any(v is not None for v in values) else None)
        with raw_cursor(connection) as cursor:
            cursor.execute(
                insert_statement(),
                arrays,
                binary=True,
                prepare=True,  # the same text every time: planned once per connection
            )
            inserted.update(r[0] for r in cursor.fetchall())
        return inserted
    with connection.cursor() as cursor:
        ops = connection.ops
        chunk = max(1, 30000 // len(_EVENT_COLUMNS))
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            params: list[Any] = []
            for r in part:
                for col in _EVENT_COLUMNS:
                    value = r[col]
                    if col == "occurred_at":
                        value = ops.adapt_datetimefield_value(value)
                    elif col == "tags":
                        value = json.dumps(value) if value is not None else None
                    params.append(value)
            marks = "(" + ", ".join(["%s"] * len(_EVENT_COLUMNS)) + ")"
            cursor.execute(
                f"INSERT INTO {table} ({columns}) VALUES {', '.join([marks] * len(part))} "
                f"ON CONFLICT (tenant_id, event_id) DO NOTHING RETURNING event_id",
                params,
            )
            inserted.update(r[0] for r in cursor.fetchall())
    return inserted


def _stored_costs(tenant_id: int, event_ids: list[str]) -> dict[str, tuple[int, int]]:
    if not event_ids:
        return {}
    return {
        eid: (cost, source)
        for eid, cost, source in UsageEvent.objects.for_tenant(tenant_id)
        .filter(event_id__in=event_ids)
        .values_list("event_id", "cost_nanos", "cost_source")
    }


# --- aliases ------------------------------------------------------------------------------


def model_alias_set(
    *, tenant: Tenant, alias: str, target_provider: str, target_model: str, provider: str = ""
) -> ModelAlias:
    with tenant_context(tenant):
        obj, _ = ModelAlias.objects.update_or_create(
            tenant=tenant,
            provider=provider.lower(),
            alias=alias,
            defaults={"target_provider": target_provider.lower(), "target_model": target_model},
        )
        from usage.tasks import schedule_reprice_unpriced

        schedule_reprice_unpriced(tenant.pk)
    bump_version()
    return obj


# --- re-pricing ------------------------------------------------------------------------------


@dataclass
class RepriceReport:
    examined: int = 0
    changed: int = 0
    still_unpriced: int = 0
    hours_rebuilt: int = 0


def usage_reprice(
    *,
    tenant: Tenant,
    start: datetime,
    end: datetime,
    only_unpriced: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> RepriceReport:
    """Price a tenant's events in [start, end) again with the catalog as it is now.

    Caller-supplied costs are kept. The rollups of every hour touched are rebuilt from the
    events in the same transaction, under the tenant's exclusive ingest lock, so rollups stay
    equal to the sum of their events.
    """
    from usage.catalog import load_catalog

    catalog = load_catalog(tenant.pk)
    report = RepriceReport()
    with tenant_context(tenant), transaction.atomic():
        _lock_tenant(tenant.pk, shared=False)
        qs = UsageEvent.objects.for_tenant(tenant).filter(
            occurred_at__gte=start, occurred_at__lt=end
        )
        qs = qs.exclude(cost_source=CostSource.CALLER)
        if only_unpriced:
            qs = qs.filter(cost_source=CostSource.UNPRICED)
        total = qs.count()
        hours: set[datetime] = set()
        batch: list[UsageEvent] = []
        names: dict[int, str] = dict(
            Dimension.objects.for_tenant(tenant)
            .filter(kind__in=[Kind.PROVIDER, Kind.MODEL])
            .values_list("pk", "value")
        )
        for event in qs.only(
            "pk", "occurred_at", "provider_id", "model_id", "service_tier", *PRICED_COLUMNS,
            "cost_nanos", "cost_source", "price_id", "cache_hit",
        ).iterator(chunk_size=2000):  # fmt: skip
            report.examined += 1
            if event.cache_hit:
                continue
            found = catalog.resolve(
                names[event.provider_id], names[event.model_id], event.occurred_at, event.tier
            )
            new: tuple[int, int, int | None]
            if found is None:
                new = (0, CostSource.UNPRICED, None)
                report.still_unpriced += 1
            else:
                new = (
                    breakdown(found.price, event.usage).nanos,
                    CostSource.COMPUTED,
                    found.price.id,
                )
            if new != (event.cost_nanos, event.cost_source, event.price_id):
                event.cost_nanos, event.cost_source, event.price_id = new
                batch.append(event)
                hours.add(hour_of(event.occurred_at))
            if len(batch) >= 1000:
                UsageEvent.objects.bulk_update(batch, ["cost_nanos", "cost_source", "price_id"])
                report.changed += len(batch)
                batch = []
            if progress and report.examined % 10000 == 0:
                progress(report.examined, total)
        if batch:
            UsageEvent.objects.bulk_update(batch, ["cost_nanos", "cost_source", "price_id"])
            report.changed += len(batch)
        report.hours_rebuilt = rollups_rebuild(tenant=tenant, hours=sorted(hours))
        if report.changed:
            _rewritten(tenant.pk)
    if progress:
        progress(report.examined, report.examined)
    log.info("usage_repriced", tenant=tenant.slug, **report.__dict__)
    return report


def usage_events_delete(*, events: QuerySet[UsageEvent]) -> int:
    """Delete events and rebuild the rollups of their hours, under each tenant's exclusive
    ingest lock, so rollups still equal the sum of their events. Staff code: runs unscoped."""
    from costmon.core.tenancy import unscoped

    with unscoped():
        rows = list(events.values_list("pk", "tenant_id", "occurred_at"))
        by_tenant: dict[int, tuple[list[int], set[datetime]]] = defaultdict(lambda: ([], set()))
        for pk, tenant_id, occurred_at in rows:
            by_tenant[tenant_id][0].append(pk)
            by_tenant[tenant_id][1].add(hour_of(occurred_at))
        tenants = list(Tenant.objects.filter(pk__in=by_tenant).order_by("pk"))
    with transaction.atomic():
        for tenant in tenants:
            pks, hours = by_tenant[tenant.pk]
            with tenant_context(tenant):
                _lock_tenant(tenant.pk, shared=False)
                UsageEvent.objects.for_tenant(tenant).filter(pk__in=pks).delete()
                rollups_rebuild(tenant=tenant, hours=sorted(hours))
            _rewritten(tenant.pk)
    return len(rows)


def usage_tenant_reset(*, tenant: Tenant) -> tuple[int, int]:
    """Delete all of a tenant's usage (events and rollups), under its exclusive ingest lock so
    no batch lands half-way. Returns the counts deleted.

    The dictionary of names stays: every process may hold its ids (`dimension_ids`), and a
    name without usage shows nowhere.
    """
    with tenant_context(tenant), transaction.atomic():
        _lock_tenant(tenant.pk, shared=False)
        # Raw deletes: no per-row signals or cascades to collect over millions of events.
        events = UsageEvent.objects.for_tenant(tenant)._raw_delete(UsageEvent.objects.db)
        rollups = HourlyRollup.objects.for_tenant(tenant)._raw_delete(HourlyRollup.objects.db)
        ModelHourlyRollup.objects.for_tenant(tenant)._raw_delete(ModelHourlyRollup.objects.db)
        _rewritten(tenant.pk)
    return events, rollups


def _rewritten(tenant_id: int) -> None:
    """Tell the apps above, once this commits, that the tenant's stored usage changed."""
    transaction.on_commit(
        lambda: usage_rewritten.send(sender=UsageEvent, tenant_id=tenant_id), robust=True
    )


def usage_reprice_unpriced(*, tenant: Tenant) -> RepriceReport:
    """Price the tenant's unpriced events for which a price now exists (whole history)."""
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
    )


def usage_events_purge(
    *, before: datetime, batch_size: int = 10_000, progress: Callable[[int], None] | None = None
) -> int:
    """Delete raw events older than `before`, every tenant, in batches; rollups stay, so every
    total and chart keeps its history. Staff code: runs unscoped."""
    from costmon.core.tenancy import unscoped

    deleted = 0
    with unscoped():
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
