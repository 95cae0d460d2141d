"""Bulk loading: millions of events, for seeding and imports.

PostgreSQL's events table: the rows are priced and mapped to the tenant's dictionary in Python,
COPYed into a temporary table, then moved into the events table with `ON CONFLICT DO NOTHING`,
and the rollups of the rows that really went in are added in the same statement.

Another event store (ClickHouse): the rows, priced and mapped the same way, are sorted by time
and handed to the store's `insert_new` a calendar month at a time (ClickHouse partitions by
month, so each insert is one part, written whole or not at all), each in its own PostgreSQL
transaction under the tenant's ingest lock: the store drops the keys it holds already, adds the
others to the PostgreSQL rollups, then inserts them straight into its table. PostgreSQL first,
the event store last: a failed insert rolls back that month's rollups.

Either way a bulk load keeps the two promises of the ingest API: loading the same events again
adds nothing, and the rollups always equal the sum of the events. Spend counters are rebuilt
once at the end, by the receivers of `usage.signals.bulk_loaded`.

On SQLite (the embedded default) the same events go through `usage_record_batch`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from django.db import transaction

from costmon.core.models import Tenant
from costmon.core.tenancy import tenant_context
from usage.catalog import catalog_for
from usage.dimensions import dimension_ids, dimension_keys
from usage.eventstore.base import EventStore
from usage.eventstore.current import event_store
from usage.ingest import EventIn
from usage.models import CostSource, UsageEvent
from usage.rows import event_row, price_event
from usage.services import usage_record_batch
from usage.signals import BulkLoaded, bulk_loaded
from usage.storage import copy_supported, events_copy
from usage.transactions import ingest_lock

log = structlog.get_logger(__name__)

CHUNK = 50_000
_UNPRICED = int(CostSource.UNPRICED)


@dataclass
class BulkReport:
    examined: int = 0
    inserted: int = 0
    cost_nanos: int = 0  # of the inserted events
    unpriced: int = 0  # inserted events without a price

    @property
    def duplicates(self) -> int:
        return self.examined - self.inserted


def usage_bulk_load(
    *,
    tenant: Tenant,
    events: Iterable[EventIn],
    chunk: int = CHUNK,
    progress: Callable[[int], None] | None = None,
) -> BulkReport:
    """Store many validated events fast; events already stored are skipped (by event id).

    Each chunk is one transaction. `progress` is called with the number of events examined
    after each chunk.
    """
    report = BulkReport()
    iterator = iter(events)
    store = event_store()
    while part := list(itertools.islice(iterator, chunk)):
        if not copy_supported():
            _record_chunk(tenant, part, report)  # SQLite
        elif store.name == "postgres":
            _load_chunk(tenant, part, report)  # COPY into PostgreSQL's events table
        else:
            _store_chunk(store, tenant, part, report)
        report.examined += len(part)
        if progress:
            progress(len(part))
    loaded = BulkLoaded(
        tenant=tenant,
        examined=report.examined,
        inserted=report.inserted,
        cost_nanos=report.cost_nanos,
    )
    for receiver, result in bulk_loaded.send_robust(sender=UsageEvent, load=loaded):
        if isinstance(result, Exception):
            # The events are stored; counters rebuild on their own later (nightly, or when a
            # check finds them missing). A busy Redis must not fail a long load at its end.
            log.error(
                "after_bulk_load_hook_failed",
                hook=getattr(receiver, "__name__", repr(receiver)),
                exc_info=result,
            )
    log.info("usage_bulk_loaded", tenant=tenant.slug, **report.__dict__)
    return report


def _record_chunk(tenant: Tenant, part: list[EventIn], report: BulkReport) -> None:
    for start in range(0, len(part), 1000):
        for result in usage_record_batch(tenant=tenant, events=part[start : start + 1000]):
            if not result.duplicate:
                report.inserted += 1
                report.cost_nanos += result.cost_nanos
                report.unpriced += result.cost_source == CostSource.UNPRICED


def _rows(tenant: Tenant, part: list[EventIn]) -> Iterator[dict[str, Any]]:
    """The chunk's events as priced rows, the first of each id (its names' ids made first)."""
    catalog = catalog_for(tenant.pk)
    dims = dimension_ids(tenant=tenant, wanted=dimension_keys(part))
    for e in _first_of_each_id(part):
        priced = price_event(catalog, e)
        yield event_row(tenant_id=tenant.pk, event=e, dims=dims, priced=priced, api_key_id=0)


def _load_chunk(tenant: Tenant, part: list[EventIn], report: BulkReport) -> None:
    with tenant_context(tenant), ingest_lock(tenant.pk, shared=True), transaction.atomic():
        inserted, cost, unpriced = events_copy(_rows(tenant, part))
    report.inserted += inserted
    report.cost_nanos += cost
    report.unpriced += unpriced


def _store_chunk(
    store: EventStore, tenant: Tenant, part: list[EventIn], report: BulkReport
) -> None:
    """The chunk into another event store by its `insert_new`, a transaction per month."""
    with tenant_context(tenant), ingest_lock(tenant.pk, shared=True):
        with transaction.atomic():
            # Dictionary and tag-set ids first, committed on their own (idempotent).
            rows = list(_rows(tenant, part))
            store.prepare(rows)
        # By time: the duplicate check's groups of ids each cover a short span.
        rows.sort(key=_time)
        for _, month in itertools.groupby(rows, key=_month):
            same_month = list(month)
            with transaction.atomic():
                inserted = store.insert_new(same_month, direct=True)
            for row in same_month:
                if row["event_id"] in inserted:
                    report.inserted += 1
                    report.cost_nanos += row["cost_nanos"]
                    report.unpriced += row["cost_source"] == _UNPRICED


def _time(row: dict[str, Any]) -> datetime:
    return row["occurred_at"]  # type: ignore[no-any-return]


def _month(row: dict[str, Any]) -> tuple[int, int]:
    """The row's month in UTC: ClickHouse's partition (`toYYYYMM` of a UTC `DateTime`)."""
    at = row["occurred_at"].astimezone(UTC)
    return at.year, at.month


def _first_of_each_id(part: list[EventIn]) -> Iterator[EventIn]:
    """The same id twice in one load: the first one counts."""
    seen: set[str] = set()
    for e in part:
        if e.event_id not in seen:
            seen.add(e.event_id)
            yield e
