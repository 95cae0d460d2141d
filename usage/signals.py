"""What the usage app tells the apps above it. Each signal carries one frozen dataclass.

The ingest service (`usage.services.usage_record_batch`) sends two signals per batch that stored
new events, at the two points where it calls them in its body; the bulk loader sends one at the
end of a load. Receivers live in the app that reacts and connect in its `AppConfig.ready()`
(budgets: spend counters, reservations, the emergency stop; costmon.web: Prometheus sums).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from django.dispatch import Signal

from costmon.core.models import Tenant


class RecordedRow(NamedTuple):
    """One event a batch stored (duplicates are not in a batch's rows). Immutable as the
    dataclasses here, but a tuple: a batch makes a thousand of them, at a third of the cost."""

    event_id: str
    occurred_at: datetime  # timezone-aware
    provider: str  # lower case, as stored in the dictionary
    model: str
    operation: str
    end_user: str
    api_key_id: int  # the key that reported it; 0 when none did
    tags: Mapping[str, str] | None
    cost_nanos: int
    cost_source: int  # usage.models.CostSource
    # Reported, not stored: the pre-flight check's reservation this event settles.
    reservation_id: str | None


@dataclass(frozen=True, slots=True)
class RecordedBatch:
    """The events one ingest batch stored for a tenant, and the UTC hours they fell in."""

    tenant: Tenant
    rows: tuple[RecordedRow, ...]
    hours: frozenset[datetime]


@dataclass(frozen=True, slots=True)
class BulkLoaded:
    """A bulk load (seeding, imports) finished for a tenant."""

    tenant: Tenant
    examined: int
    inserted: int
    cost_nanos: int  # of the inserted events


# Sent with `tenant` before the ingest transaction begins (outside it): a receiver loads what its
# `batch_committing` receiver will read (budgets: the tenant's configuration), so the
# transaction, one psycopg pipeline on PostgreSQL, reads nothing in the middle. A read inside
# the pipeline after a 1,000-event insert once hung a benchmark run: the backend waited for the
# client (ClientRead) while the client waited for the read's answer, every other batch of the
# tenant behind its row locks.
batch_preparing = Signal()

# Sent with `batch` (a RecordedBatch) inside the ingest transaction, just before it commits,
# holding the tenant's ingest lock shared. A receiver that raises rolls the whole batch back and
# its exception reaches the caller of `usage_record_batch` (a 500 for the API): use it only for
# writes that must commit with the events (budgets: the batch's pending counter update). On
# PostgreSQL it is first sent for a batch assumed all new (`usage.newevents`); if one event was
# stored already, that transaction is rolled back and it is sent again for the events really
# new (or not at all): keep nothing that outlives the transaction unless tied to that `batch`.
batch_committing = Signal()

# Sent with the same `batch` right after the ingest transaction commits, still holding the
# tenant's ingest lock shared (so a counter rebuild, which takes it exclusively, never sees a
# batch half-counted). Sent robustly: a receiver that raises is logged
# (`after_record_hook_failed`) and the others still run; the events are stored either way and
# the caller gets its answer.
batch_recorded = Signal()

# Sent with `load` (a BulkLoaded) once a bulk load has stored all its events. Sent robustly: a
# receiver that raises is logged (`after_bulk_load_hook_failed`); the load still succeeds.
bulk_loaded = Signal()

# A tenant's stored usage changed other than by ingest: events were re-priced, deleted or reset.
# Sent with `tenant_id` once the change has committed; anything kept beside the events (the
# budgets app's spend counters) must be rebuilt from them.
usage_rewritten = Signal()

# Sent with `tenant_id` and `recent_only` (bool) by `usage.settled` right after it forgot a
# tenant's kept dashboard sums (all of them, or only the recent days'): the web app queues their
# computation in the background, so no person's view is the first to sum those days again.
settled_sums_forgotten = Signal()
