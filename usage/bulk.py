"""Bulk loading: millions of events into PostgreSQL with COPY, for seeding and imports.

The rows are priced and mapped to the tenant's dictionary in Python, COPYed into a temporary
table, then moved into the events table with `ON CONFLICT DO NOTHING`, and the rollups of the
rows that really went in are added in the same statement. So a bulk load keeps the two promises
of the ingest API: loading the same events again adds nothing, and the rollups always equal the
sum of the events. Spend counters are rebuilt once at the end, by the receivers of
`usage.signals.bulk_loaded`.

On SQLite (the embedded default) the same events go through `usage_record_batch`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import structlog
from django.db import transaction

from costmon.core.models import Tenant
from costmon.core.tenancy import tenant_context
from usage.catalog import catalog_for
from usage.dimensions import dimension_ids, dimension_keys
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
    while part := list(itertools.islice(iterator, chunk)):
        # COPY writes PostgreSQL's events table: with another event store, through ingest.
        if copy_supported() and event_store().name == "postgres":
            _load_chunk(tenant, part, report)
        else:
            _record_chunk(tenant, part, report)
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


def _load_chunk(tenant: Tenant, part: list[EventIn], report: BulkReport) -> None:
    catalog = catalog_for(tenant.pk)
    with tenant_context(tenant), ingest_lock(tenant.pk, shared=True), transaction.atomic():
        dims = dimension_ids(tenant=tenant, wanted=dimension_keys(part))
        rows = (
            event_row(
                tenant_id=tenant.pk,
                event=e,
                dims=dims,
                priced=price_event(catalog, e),
                api_key_id=0,
            )
            for e in _first_of_each_id(part)
        )
        inserted, cost, unpriced = events_copy(rows)
    report.inserted += inserted
    report.cost_nanos += cost
    report.unpriced += unpriced


def _first_of_each_id(part: list[EventIn]) -> Iterator[EventIn]:
    """The same id twice in one load: the first one counts."""
    seen: set[str] = set()
    for e in part:
        if e.event_id not in seen:
            seen.add(e.event_id)
            yield e
