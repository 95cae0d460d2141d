"""Writes for usage: recording a batch of events (the ingest service) and model aliases.

Re-pricing, deletes, resets and retention are in `usage.maintenance`; the price catalog's writes
in `usage.prices`. Ingest, as `usage_record_batch` reads from top to bottom: price each event
(`usage.rows`), name its dictionary ids (`usage.dimensions`), insert the new events and add them
to the rollups in one transaction (`usage.storage`), then tell the apps above what was stored
(`usage.signals`: `batch_committing` before the commit, `batch_recorded` after it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from costmon.core.cache import cache_writes_together
from costmon.core.models import Tenant
from costmon.core.tenancy import forget_rls_state, tenant_context
from usage.catalog import bump_version, catalog_for
from usage.dimensions import (
    dimension_ids,
    dimension_ids_or_new,
    dimension_ids_remember,
    dimension_keys,
    dimension_placeholders_replace,
)
from usage.eventstore.base import EventStore
from usage.eventstore.current import event_store
from usage.ingest import EventIn
from usage.models import ModelAlias, UsageEvent
from usage.newevents import not_all_new
from usage.price_lookup import Catalog
from usage.repricing import schedule_reprice_unpriced
from usage.rollups import hours_of
from usage.rows import Priced, event_row, price_event
from usage.signals import (
    RecordedBatch,
    RecordedRow,
    batch_committing,
    batch_preparing,
    batch_recorded,
)
from usage.storage import stamps_keep
from usage.storereconcile import held_batch_repair
from usage.transactions import ingest_lock, pipeline_usable, write_transaction

log = structlog.get_logger(__name__)

# A group of at most this many new events sends its transaction in one write
# (`usage.transactions.write_transaction`'s `one_write`): single events and their groups. A
# bigger batch lets PostgreSQL insert while the process computes the receivers' writes.
ONE_WRITE_MAX_EVENTS = 50


@dataclass(frozen=True, slots=True)
class EventResult:
    event_id: str
    cost_nanos: int
    cost_source: int
    duplicate: bool


def usage_record_batch(
    *, tenant: Tenant, events: Sequence[EventIn], api_key_id: int | None = None
) -> list[EventResult]:
    """Price and store a validated batch; events already stored are reported as duplicates.

    One transaction holds the events and the rollup changes, so rollups always equal the sum
    of the events. Re-sending a batch (even concurrently) never counts an event twice: the
    key (tenant, occurred_at, event_id) decides which copy is stored. `api_key_id` is the key that
    reported the batch (budgets per key count its spend).
    """
    catalog = catalog_for(tenant.pk)
    firsts: dict[str, EventIn] = {}
    for event in events:
        if event.event_id not in firsts:  # the same id twice in one batch: the first one counts
            firsts[event.event_id] = event
    prices = [price_event(catalog, e) for e in firsts.values()]
    store = event_store()
    with tenant_context(tenant):
        # ClickHouse's duplicate check reads under its lock inside the transaction: no pipeline.
        pipelined = store.pipelined_writes and pipeline_usable()
        one_trip = pipelined and store.one_trip_writes
        # The ingest lock (shared): rewrites and counter rebuilds, which take it exclusively,
        # never run while a batch is being stored. With a pipeline it is a transaction-level
        # lock taken in the events' transaction's first round trip (by the one-trip function
        # itself, `usage.newevents`, else by a statement) and released by its COMMIT
        # (a rebuild may then come before `batch_recorded`'s counter update: the update's
        # marker and the rebuild's one script keep the counters exact, `budgets.counters`);
        # else held until the receivers of `batch_recorded` are done.
        with ingest_lock(tenant.pk, shared=True, deferred=pipelined) as lock:
            try:
                # First what can be settled before the events, idempotent and remembered (a
                # known name, tag set or month costs no query): the stamps of time-less
                # events, dictionary ids, tag-set ids, partitions. Committed on their own:
                # with a pipeline, statement by statement (autocommit: new partitions get a
                # transaction of their own), else in one transaction. Names new to this
                # process: with the one round trip, created in the events' transaction
                # (`usage.newevents`); else a statement before it.
                with contextlib.nullcontext() if pipelined else transaction.atomic():
                    prices = _keep_stamps(tenant.pk, firsts, prices, catalog)
                    wanted = dimension_keys(events)
                    if one_trip:
                        dims, new_names = dimension_ids_or_new(tenant_id=tenant.pk, wanted=wanted)
                    else:
                        dims, new_names = dimension_ids(tenant=tenant, wanted=wanted), []
                    rows = [
                        event_row(
                            tenant_id=tenant.pk,
                            event=e,
                            dims=dims,
                            priced=p,
                            api_key_id=api_key_id or 0,
                        )
                        for e, p in zip(firsts.values(), prices, strict=True)
                    ]
                    store.prepare(rows)
                batch_preparing.send(sender=UsageEvent, tenant=tenant)
                # Then one transaction, one commit: events, rollups and what commits with
                # them. On PostgreSQL one round trip if every event is new (`_store_all_new`),
                # else two (`usage.transactions.write_transaction`).
                batch = None
                if one_trip:
                    batch = _store_all_new(store, tenant, firsts, rows, new_names)
                if batch is None:
                    # A resend: its new names now as any batch's, before its transaction.
                    dimension_placeholders_replace(tenant.pk, rows, new_names)
                    with write_transaction(lock, pipeline=pipelined):
                        inserted = store.insert_new(rows)
                        if len(inserted) < len(rows):  # a resend: what a lost COMMIT left
                            held_batch_repair(store=store, tenant=tenant, rows=rows)
                        batch = _recorded_batch(tenant, firsts, rows, inserted)
                        if batch.rows:
                            _send_committing(batch)
                else:
                    inserted = set(firsts)
            except Exception:
                forget_rls_state(connection)
                raise
            if batch.rows:
                # Committed: budgets update the spend counters, settle reservations and may
                # trip the emergency stop; Prometheus marks its cached sums stale.
                _send_recorded(batch)
        stored = store.stored_costs(
            tenant.pk, {eid: e.occurred_at for eid, e in firsts.items() if eid not in inserted}
        )
    return _results(events, rows, inserted, stored)


def _store_all_new(
    store: EventStore,
    tenant: Tenant,
    firsts: dict[str, EventIn],
    rows: list[dict[str, Any]],
    new_names: list[tuple[int, str]],
) -> RecordedBatch | None:
    """Store the batch as if every event were new, in one round trip: the insert's answer is
    not waited for, so the receivers' writes and COMMIT go with it (`usage.newevents`), and
    so do the names new to this process (their ids remembered once committed). None, with
    nothing stored, if an event was stored already (a resend): the caller stores the batch
    again by the path that reads which events are new. The function takes the tenant's ingest
    lock itself, first (one statement less a group; skipping that statement took single
    events paced at 650 requests/s from a p50 of 7.51 to 6.80 ms, docs/benchmark.md); the
    ingest lock given to `usage_record_batch`'s block stays not held, for that other path."""
    try:
        one_write = settings.COSTMON_INGEST_ONE_WRITE and len(rows) <= ONE_WRITE_MAX_EVENTS
        with write_transaction(one_write=one_write):
            new_ids = store.insert_all_new(rows, new_names)
            if new_names:
                dimension_ids_remember(tenant.pk, new_names, new_ids)
            # The receivers read names, not ids (budgets' counter update): the new names'
            # ids are not needed before the commit.
            batch = _recorded_batch(tenant, firsts, rows, set(firsts))
            _send_committing(batch)
    except DatabaseError as exc:
        if not not_all_new(exc):
            raise
        forget_rls_state(connection)  # the rollback undid the transaction's RLS settings
        return None
    return batch


def _send_committing(batch: RecordedBatch) -> None:
    # What must commit with the events (budgets: the pending counter update). Runs before the
    # pipeline's answers are all in: a receiver should write without reading back, or it
    # costs a round trip.
    batch_committing.send(sender=UsageEvent, batch=batch)


def _keep_stamps(
    tenant_id: int, firsts: dict[str, EventIn], prices: list[Priced], catalog: Catalog
) -> list[Priced]:
    """Events sent without a time get the time their id was first stamped with (see
    `usage.models.EventStamp`), so a resend lands on the stored event's key and is a duplicate.
    Updates `firsts` in place and returns the prices, an event re-priced at its stored time.
    Events that carry their time cost nothing here (no query)."""
    stamps = {eid: e.occurred_at for eid, e in firsts.items() if e.stamped}
    if not stamps:
        return prices
    kept = stamps_keep(tenant_id, stamps)
    prices = list(prices)
    for index, (eid, event) in enumerate(firsts.items()):
        at = kept.get(eid)
        if event.stamped and at is not None and at != event.occurred_at:
            firsts[eid] = replace(event, occurred_at=at)
            prices[index] = price_event(catalog, firsts[eid])
    return prices


def _recorded_batch(
    tenant: Tenant,
    firsts: dict[str, EventIn],
    rows: list[dict[str, Any]],
    inserted: set[str],
) -> RecordedBatch:
    recorded = tuple(
        RecordedRow(
            event_id=e.event_id,
            occurred_at=e.occurred_at,
            provider=e.provider,
            model=e.model,
            operation=e.operation,
            end_user=e.end_user,
            api_key_id=row["api_key_id"],
            tags=e.tags,
            cost_nanos=row["cost_nanos"],
            cost_source=row["cost_source"],
            reservation_id=e.reservation_id,
        )
        for e, row in zip(firsts.values(), rows, strict=True)
        if e.event_id in inserted
    )
    return RecordedBatch(
        tenant=tenant, rows=recorded, hours=hours_of(r.occurred_at for r in recorded)
    )


def _send_recorded(batch: RecordedBatch) -> None:
    # The receivers' marks of cached sums (Prometheus's, the dashboard's) go in one round trip.
    with cache_writes_together():
        sent = batch_recorded.send_robust(sender=UsageEvent, batch=batch)
    for receiver, result in sent:
        if isinstance(result, Exception):
            log.error(
                "after_record_hook_failed",
                hook=getattr(receiver, "__name__", repr(receiver)),
                exc_info=result,
            )


def _results(
    events: Sequence[EventIn],
    rows: list[dict[str, Any]],
    inserted: set[str],
    stored: dict[str, tuple[int, int]],
) -> list[EventResult]:
    """One result per event sent, in order (`rows` holds the first of each id)."""
    row_of = {row["event_id"]: row for row in rows}
    results = []
    reported: set[str] = set()
    for event in events:
        eid = event.event_id
        row = row_of[eid]
        if eid in inserted and eid not in reported:
            reported.add(eid)
            results.append(EventResult(eid, row["cost_nanos"], row["cost_source"], False))
        else:
            # Stored earlier (report what was stored then), or repeated within this batch.
            cost, source = stored.get(eid, (row["cost_nanos"], row["cost_source"]))
            results.append(EventResult(eid, cost, source, True))
    return results


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
        # Events that waited for a price under this name get it once this commits.
        schedule_reprice_unpriced(tenant.pk)
    bump_version()
    return obj
