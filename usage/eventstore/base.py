"""The event store's interface: what ingest and the raw-event reads ask of wherever raw events
are kept. `postgres.PostgresStore` is today's behaviour (the default); `clickhouse.ClickHouseStore`
keeps them in ClickHouse. Rollups stay in PostgreSQL with either store: ingest adds exactly the
events the store reports as new to them, in the PostgreSQL transaction of the batch.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from costmon.core.errors import Conflict, DomainError, ServiceUnavailable
from costmon.core.models import Tenant
from costmon.core.periods import TimeRange
from usage.event_queries import EventPage, UsageFilters
from usage.models import CostSource, UsageEvent
from usage.rollups import ROLLUP_SUMS
from usage.tagsets import with_tag_set_ids


class StoreUnavailable(ServiceUnavailable):
    """The event store cannot be reached: the API answers 503 with Retry-After."""


class RewriteUnavailable(Conflict):
    """The event store cannot rewrite chosen stored events (re-price them, delete some): the
    caller is told so (409, a command error, an admin message) and nothing is changed."""


@dataclass(frozen=True)
class EventQuery:
    """Which of a tenant's raw events a list or export wants (checked: see `event_query`)."""

    time_range: TimeRange | None
    filters: UsageFilters
    session_id: str | None = None
    is_error: bool | None = None
    cost_source: int | None = None


def event_query(
    *,
    time_range: TimeRange | None,
    filters: UsageFilters | None = None,
    session_id: str | None = None,
    status: str | None = None,
    cost_source: str | None = None,
) -> EventQuery:
    """The parameters of the event list as a query; a bad value is a clear 400."""
    is_error = None
    if status is not None:
        if status not in ("success", "error"):
            raise DomainError("status must be success or error.", field="status")
        is_error = status == "error"
    source = None
    if cost_source is not None:
        labels = {label: value for value, label in CostSource.choices}
        if cost_source not in labels:
            raise DomainError(
                "cost_source must be computed, caller or unpriced.", field="cost_source"
            )
        source = labels[cost_source]
    return EventQuery(
        time_range=time_range,
        filters=filters or UsageFilters(),
        session_id=session_id,
        is_error=is_error,
        cost_source=source,
    )


# What event sums can be grouped by (`EventStore.event_sums`), and the event column of each:
# dictionary ids for names, the tag set's id for tags (its tags are in PostgreSQL).
GROUP_COLUMNS = {
    "provider": "provider_id",
    "model": "model_id",
    "operation": "operation_id",
    "end_user": "end_user_id",
    "session": "session_id",
    "api_key": "api_key_id",
    "tag_set": "tag_set_id",
}
BUCKETS = ("hour", "day")


@dataclass(frozen=True)
class EventSums:
    """The events of one group summed as a rollup row is (`usage.rollups.ROLLUP_SUMS`)."""

    key: tuple[int | None, ...]  # the ids of `by`, in its order (None: the event has none)
    bucket: datetime | None  # the start of the hour or day in the range's time zone
    sums: dict[str, int]


def checked_grouping(by: Sequence[str], bucket: str | None, query: EventQuery) -> None:
    """What `event_sums` accepts (a programming error otherwise, not user input)."""
    unknown = [k for k in by if k not in GROUP_COLUMNS]
    if unknown or (bucket is not None and bucket not in BUCKETS):
        raise ValueError(f"cannot group events by {[*unknown, bucket]}")
    if bucket is not None and query.time_range is None:
        raise ValueError("a time bucket needs the query's time range (its time zone)")


def no_sums() -> dict[str, int]:
    return dict.fromkeys(ROLLUP_SUMS, 0)


class EventStore(abc.ABC):
    """Where a deployment's raw usage events are kept."""

    name: str
    label: str  # as people read it
    # Whether `insert_new` only writes (nothing it sends waits for an answer before the end), so
    # ingest may send its transaction as one pipeline (`usage.transactions.write_transaction`).
    pipelined_writes: bool = False
    # Whether, with a pipeline, `insert_all_new` can store a batch of new events without
    # waiting for an answer (ingest's transaction is then one round trip).
    one_trip_writes: bool = False
    # Whether chosen stored events can be re-priced or deleted, their rollups rebuilt from them
    # (`usage.maintenance`). A store that cannot refuses (`require_rewrites`), never skips.
    rewrites_events: bool = True
    # Whether the store itself keeps the sums by end user and API key (every dimension, per
    # hour), so PostgreSQL keeps only the rollups without them (by model, by tag): every
    # question about end users or keys is then asked of the store (`event_sums`).
    keeps_user_rollups: bool = False

    def require_rewrites(self, what: str) -> None:
        """Raise `RewriteUnavailable` naming `what` unless this store can rewrite events."""
        if not self.rewrites_events:
            raise RewriteUnavailable(
                f"{what} is not available with the {self.label} event store yet "
                "(COSTMON_EVENT_STORE_URL): nothing was changed. Stored events keep their "
                "prices; load prices before the usage arrives, or re-price in PostgreSQL "
                "before moving events with events_migrate."
            )

    def prepare(self, rows: Sequence[dict[str, Any]]) -> None:
        """What `insert_new` needs to exist first, done by ingest in a transaction of its own
        (idempotent): by default the rows' tag-set ids, which PostgreSQL keeps for every store."""
        with_tag_set_ids([r for r in rows if r["tags"] and r.get("tag_set_id") is None])

    @abc.abstractmethod
    def insert_new(self, rows: Sequence[dict[str, Any]], *, direct: bool = False) -> set[str]:
        """Store the rows (one tenant's, `usage.rows.event_row`) whose key is new and add exactly
        those to the PostgreSQL rollups, in the caller's transaction; return their event ids.
        A row resent, even concurrently, is stored and counted once. `direct` (a bulk load):
        into the events table itself, past any buffer in front of it."""

    def insert_all_new(
        self, rows: Sequence[dict[str, Any]], new_names: Sequence[tuple[int, str]] = ()
    ) -> Callable[[], list[int]]:
        """As `insert_new` when every row is new, sent without waiting for its answer; if a
        row is stored already, the transaction fails (`usage.newevents.not_all_new`) and
        keeps nothing. The rows' dictionary ids of `new_names` are placeholders
        (`usage.dimensions.dimension_ids_or_new`): the names are created with the events;
        returns what reads their ids once the transaction is done. Only for stores with
        `one_trip_writes`."""
        raise NotImplementedError

    @abc.abstractmethod
    def stored_costs(
        self, tenant_id: int, times: dict[str, datetime]
    ) -> dict[str, tuple[int, int]]:
        """(cost in nano-dollars, cost source) stored for events sent before, by id (`times`:
        event id -> its time)."""

    @abc.abstractmethod
    def page(self, tenant: Tenant, query: EventQuery, cursor: str | None, limit: int) -> EventPage:
        """One page of the tenant's events, newest first, and the cursor of the next."""

    @abc.abstractmethod
    def iter_events(self, tenant: Tenant, query: EventQuery) -> Iterator[UsageEvent]:
        """Every matching event, newest first (the CSV export)."""

    @abc.abstractmethod
    def lookup(
        self, tenant: Tenant, event_id: str, occurred_at: datetime | None
    ) -> UsageEvent | None:
        """One event by id (and time, when known), or None."""

    @abc.abstractmethod
    def event_sums(
        self,
        tenant: Tenant,
        query: EventQuery,
        *,
        by: Sequence[str] = (),
        bucket: str | None = None,
    ) -> list[EventSums]:
        """The matching events summed in the store, per value of the `by` columns
        (`GROUP_COLUMNS`) and per hour or day of the query's time zone (`bucket`); groups
        without events are absent. What the rollups cannot answer: tags, sessions, exact
        local days of zones whose offset is not whole hours."""

    @abc.abstractmethod
    def repeated_prompts(self, tenant: Tenant, query: EventQuery) -> list[tuple[int, int]]:
        """(events, cost in nano-dollars) of each prompt hash sent more than once."""

    @abc.abstractmethod
    def delete_tenant(self, tenant_id: int) -> int:
        """Remove every raw event of the tenant; return how many (as far as known)."""

    @abc.abstractmethod
    def drop_before(self, before: datetime) -> list[tuple[str, int]] | None:
        """Drop whole months of events ending at or before `before`, every tenant: (partition,
        rows) of each; None when the store cannot (the caller deletes rows)."""
