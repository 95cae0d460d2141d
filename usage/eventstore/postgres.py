"""Raw events in the database Django talks to (PostgreSQL, or SQLite embedded): today's
behaviour, the default store. The statements themselves are in `usage.storage`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

from django.db.models import Count, Sum
from django.db.models.functions import TruncDay, TruncHour

from costmon.core.models import Tenant
from usage.event_queries import (
    EventPage,
    event_aggregates,
    iter_usage_events,
    usage_event_page,
    usage_events,
)
from usage.eventstore.base import (
    GROUP_COLUMNS,
    EventQuery,
    EventStore,
    EventSums,
    checked_grouping,
)
from usage.models import EventStamp, UsageEvent
from usage.newevents import events_insert_all_new
from usage.rollups import ROLLUP_SUMS
from usage.storage import events_drop_before, events_insert, events_prepare


def _queryset(tenant: Tenant, query: EventQuery) -> Any:
    qs = usage_events(
        tenant=tenant,
        time_range=query.time_range,
        filters=query.filters,
        session_id=query.session_id,
    )
    if query.is_error is not None:
        qs = qs.filter(is_error=query.is_error)
    if query.cost_source is not None:
        qs = qs.filter(cost_source=query.cost_source)
    return qs


class PostgresStore(EventStore):
    name = "postgres"
    label = "PostgreSQL"
    pipelined_writes = True
    one_trip_writes = True  # PostgreSQL only: ingest uses it inside a pipeline only

    def prepare(self, rows: Sequence[dict[str, Any]]) -> None:
        events_prepare(rows)

    def insert_new(self, rows: Sequence[dict[str, Any]], *, direct: bool = False) -> set[str]:
        return events_insert(rows)

    def insert_all_new(
        self, rows: Sequence[dict[str, Any]], new_names: Sequence[tuple[int, str]] = ()
    ) -> Callable[[], list[int]]:
        return events_insert_all_new(rows, new_names)

    def stored_costs(
        self, tenant_id: int, times: dict[str, datetime]
    ) -> dict[str, tuple[int, int]]:
        # The time lets the lookup use the events table's key instead of reading all of the
        # tenant's ids.
        if not times:
            return {}
        return {
            eid: (cost, source)
            for eid, at, cost, source in UsageEvent.objects.for_tenant(tenant_id)
            .filter(event_id__in=list(times), occurred_at__in=set(times.values()))
            .values_list("event_id", "occurred_at", "cost_nanos", "cost_source")
            if times[eid] == at
        }

    def page(self, tenant: Tenant, query: EventQuery, cursor: str | None, limit: int) -> EventPage:
        return usage_event_page(events=_queryset(tenant, query), cursor=cursor, limit=limit)

    def iter_events(self, tenant: Tenant, query: EventQuery) -> Iterator[UsageEvent]:
        return iter_usage_events(events=_queryset(tenant, query))

    def lookup(
        self, tenant: Tenant, event_id: str, occurred_at: datetime | None
    ) -> UsageEvent | None:
        # With the time: one index probe on the key (tenant, time, id). Without it, an event
        # sent without a time is found by the time it was stamped with (`EventStamp`); any
        # other is looked for in all of the tenant's partitions (a scan).
        events = UsageEvent.objects.for_tenant(tenant).select_related(
            "provider", "model", "operation", "end_user", "session"
        )
        at = occurred_at
        if at is None:
            at = (
                EventStamp.objects.for_tenant(tenant)
                .filter(event_id=event_id)
                .values_list("occurred_at", flat=True)
                .first()
            )
        event = events.filter(event_id=event_id, occurred_at=at).first() if at else None
        if event is None and occurred_at is None:
            event = events.filter(event_id=event_id).first()
        return event

    def event_sums(
        self,
        tenant: Tenant,
        query: EventQuery,
        *,
        by: Sequence[str] = (),
        bucket: str | None = None,
    ) -> list[EventSums]:
        checked_grouping(by, bucket, query)
        qs = _queryset(tenant, query).order_by()
        columns = [GROUP_COLUMNS[k] for k in by]
        if bucket is not None:
            assert query.time_range is not None
            trunc = TruncHour if bucket == "hour" else TruncDay
            qs = qs.annotate(bucket=trunc("occurred_at", tzinfo=query.time_range.tz))
            columns.append("bucket")
        rows: list[dict[str, Any]] = (
            list(qs.values(*columns).annotate(**event_aggregates()))
            if columns
            else [qs.aggregate(**event_aggregates())]
        )
        return [
            EventSums(
                key=tuple(r[c] for c in columns[: len(by)]),
                bucket=r.get("bucket"),
                sums={name: int(r[name] or 0) for name in ROLLUP_SUMS},
            )
            for r in rows
            if r["calls"]
        ]

    def repeated_prompts(self, tenant: Tenant, query: EventQuery) -> list[tuple[int, int]]:
        groups = (
            _queryset(tenant, query)
            .filter(prompt_hash__isnull=False)
            .order_by()
            .values("prompt_hash")
            .annotate(n=Count("pk"), cost=Sum("cost_nanos"))
            .filter(n__gt=1)
            .values_list("n", "cost")
        )
        return [(int(n), int(cost or 0)) for n, cost in groups]

    def delete_tenant(self, tenant_id: int) -> int:
        # A raw delete: no per-row signals or cascades to collect over millions of events.
        return UsageEvent.objects.for_tenant(tenant_id)._raw_delete(UsageEvent.objects.db)

    def drop_before(self, before: datetime) -> list[tuple[str, int]] | None:
        return events_drop_before(before)
