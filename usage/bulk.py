"""Bulk loading: millions of events into PostgreSQL with COPY, for seeding and imports.

The rows are priced and mapped to the tenant's dictionary in Python, COPYed into a temporary
table, then moved into the events table with `ON CONFLICT DO NOTHING`, and the rollups of the
rows that really went in are added in the same statement. So a bulk load keeps the two promises
of the ingest API: loading the same events again adds nothing, and the rollups always equal the
sum of the events. Spend counters are rebuilt once at the end by the `after_bulk_load_hooks`.

On SQLite (the embedded default) the same events go through `usage_record_batch`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog
from django.db import connection, transaction

from costmon.core.models import Tenant
from costmon.core.tenancy import raw_cursor, tenant_context
from usage.catalog import catalog_for
from usage.ingest import EventIn
from usage.models import UsageEvent
from usage.rollups import with_rollups
from usage.services import (
    _EVENT_COLUMNS,
    _dimension_keys,
    _event_row,
    _ingest_lock,
    dimension_ids,
    price_event,
    usage_record_batch,
)

log = structlog.get_logger(__name__)

# Called with the tenant once a bulk load has finished (the budgets app rebuilds its counters).
after_bulk_load_hooks: list[Callable[[Tenant], None]] = []

CHUNK = 50_000

# How each rollup sum is computed from the inserted rows.


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
        if connection.vendor == "postgresql":
            _load_chunk(tenant, part, report)
        else:
            _record_chunk(tenant, part, report)
        report.examined += len(part)
        if progress:
            progress(len(part))
    for hook in after_bulk_load_hooks:
        try:
            hook(tenant)
        except Exception:
            # The events are stored; counters rebuild on their own later (nightly, or when a
            # check finds them missing). A busy Redis must not fail a long load at its end.
            log.exception("after_bulk_load_hook_failed", hook=getattr(hook, "__name__", repr(hook)))
    log.info("usage_bulk_loaded", tenant=tenant.slug, **report.__dict__)
    return report


def _record_chunk(tenant: Tenant, part: list[EventIn], report: BulkReport) -> None:
    for start in range(0, len(part), 1000):
        for result in usage_record_batch(tenant=tenant, events=part[start : start + 1000]):
            if not result.duplicate:
                report.inserted += 1
                report.cost_nanos += result.cost_nanos
                report.unpriced += result.cost_source == 2


def _load_chunk(tenant: Tenant, part: list[EventIn], report: BulkReport) -> None:
    catalog = catalog_for(tenant.pk)
    events = UsageEvent._meta.db_table
    columns = ", ".join(_EVENT_COLUMNS)
    tags = _EVENT_COLUMNS.index("tags")
    with tenant_context(tenant), _ingest_lock(tenant.pk), transaction.atomic():
        dims = dimension_ids(tenant=tenant, wanted=_dimension_keys(part))
        with raw_cursor(connection) as cursor:
            cursor.execute(
                f"CREATE TEMP TABLE usage_bulk_stage ON COMMIT DROP AS "
                f"SELECT {columns} FROM {events} WITH NO DATA"
            )
            with cursor.copy(f"COPY usage_bulk_stage ({columns}) FROM STDIN") as copy:
                seen: set[str] = set()
                for e in part:
                    if e.event_id in seen:
                        continue  # the same id twice in one load: the first one counts
                    seen.add(e.event_id)
                    cost, source, price_id = price_event(catalog, e)
                    row = _event_row(tenant.pk, e, dims, cost, source, 0, price_id)
                    values = [row[c] for c in _EVENT_COLUMNS]
                    if values[tags] is not None:
                        values[tags] = json.dumps(values[tags])
                    copy.write_row(values)
            cursor.execute(
                with_rollups(
                    f"INSERT INTO {events} ({columns}) SELECT {columns} FROM usage_bulk_stage"
                    f" ORDER BY occurred_at ON CONFLICT (tenant_id, event_id) DO NOTHING",
                    tags=True,
                )
                + " SELECT count(*), coalesce(sum(cost_nanos), 0),"
                " count(*) FILTER (WHERE cost_source = 2) FROM fresh"
            )
            inserted, cost, unpriced = cursor.fetchone()
            cursor.execute("DROP TABLE usage_bulk_stage")  # inside an outer transaction too
    report.inserted += inserted
    report.cost_nanos += int(cost)
    report.unpriced += unpriced
