"""Reads of raw events as PostgreSQL (or SQLite) keeps them: the filters of a usage query, the
event querysets and their cursor pages, and event-level sums named as the rollup columns. The
PostgreSQL event store (`usage.eventstore.postgres`) is built on these; `usage.selectors` sits
above the stores and reads events through them."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db.models import Count, F, Func, Q, QuerySet, Sum, TextField, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from costmon.core.exceptions import DomainError
from costmon.core.models import Tenant
from costmon.core.periods import EARLIEST, LATEST, TimeRange
from usage.models import CostSource, TagSet, UsageEvent

FILTER_FIELDS = ("provider", "model", "operation", "end_user")


@dataclass(frozen=True)
class UsageFilters:
    provider: str | None = None
    model: str | None = None
    operation: str | None = None
    end_user: str | None = None
    tag: tuple[str, str] | None = None

    def is_empty(self) -> bool:
        return not any((self.provider, self.model, self.operation, self.end_user, self.tag))


class TagValue(Func):
    """The value of an event's tag `name` (from its tag set, `source`), for any name:
    `tags__<name>` and KeyTextTransform read `__` as a lookup and a number as an array index,
    and SQLite's JSON paths cannot name a key with a quote (nor a non-ASCII key, as Django
    stores them escaped)."""

    output_field = TextField()

    def __init__(self, name: str, source: str = "tag_set__tags") -> None:
        super().__init__(F(source), Value(name))

    def as_sql(
        self,
        compiler: Any,
        connection: Any,
        function: str | None = None,
        template: str | None = None,
        arg_joiner: str | None = None,
        **extra_context: Any,
    ) -> tuple[str, tuple[Any, ...]]:
        """SQLite (Django picks `as_postgresql` on PostgreSQL)."""
        tags_sql, name_sql, params = self._compiled(compiler)
        # Compiled SQL of a column and a parameter placeholder; the name is a parameter.
        sql = f"(SELECT j.value FROM json_each({tags_sql}) AS j WHERE j.key = {name_sql})"  # noqa: S608
        return sql, params

    def as_postgresql(
        self, compiler: Any, connection: Any, **extra_context: Any
    ) -> tuple[str, tuple[Any, ...]]:
        tags_sql, name_sql, params = self._compiled(compiler)
        return f"({tags_sql} ->> ({name_sql})::text)", params

    def _compiled(self, compiler: Any) -> tuple[str, str, tuple[Any, ...]]:
        tags_sql, tags_params = compiler.compile(self.source_expressions[0])
        name_sql, name_params = compiler.compile(self.source_expressions[1])
        return tags_sql, name_sql, (*tags_params, *name_params)


def with_tag(qs: QuerySet[UsageEvent], tag: tuple[str, str] | None) -> QuerySet[UsageEvent]:
    """Events whose tag `name` is `value`: those whose tag set is one of the sets that say so
    (a few sets matched once, then an integer compared per event)."""
    if tag is None:
        return qs
    # Any tenant's sets: an event only refers to a set of its own tenant, and `qs` is scoped.
    sets = (
        TagSet.objects.unscoped()
        .alias(tag_filter=TagValue(tag[0], source="tags"))
        .filter(tag_filter=tag[1])
    )
    return qs.filter(tag_set_id__in=sets.values("pk"))


def event_aggregates() -> dict[str, Any]:
    """Event-level aggregates named as the rollup columns, for the session and tag views (and
    the PostgreSQL event store's `event_sums`)."""
    return {
        "calls": Count("pk"),
        "errors": Count("pk", filter=Q(is_error=True)),
        "cache_hits": Count("pk", filter=Q(cache_hit=True)),
        "unpriced_calls": Count("pk", filter=Q(cost_source=CostSource.UNPRICED)),
        "input_tokens": Coalesce(Sum("input_tokens"), 0),
        "output_tokens": Coalesce(Sum("output_tokens"), 0),
        "cached_input_tokens": Coalesce(Sum("cached_input_tokens"), 0),
        "cache_write_tokens": Coalesce(Sum("cache_write_tokens"), 0),
        "reasoning_tokens": Coalesce(Sum("reasoning_tokens"), 0),
        "cost_nanos": Coalesce(Sum("cost_nanos"), 0),
        "latency_ms_sum": Coalesce(Sum("latency_ms"), 0),
        "latency_count": Count("latency_ms"),
    }


# --- raw events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventPage:
    events: list[UsageEvent]
    next_cursor: str | None


def encode_cursor(event: UsageEvent) -> str:
    raw = f"{event.occurred_at.astimezone(UTC).isoformat()}|{event.pk}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, pk = raw.split("|")
        parsed, number = datetime.fromisoformat(moment), int(pk)
        if timezone.is_naive(parsed) or not EARLIEST <= parsed < LATEST or not 0 < number < 2**63:
            raise ValueError(raw)
        return parsed, number
    except (ValueError, UnicodeDecodeError):
        raise DomainError(
            "The cursor is not valid; use next_cursor from a previous page.", field="cursor"
        ) from None


def usage_events(
    *,
    tenant: Tenant,
    time_range: TimeRange | None,
    filters: UsageFilters | None = None,
    session_id: str | None = None,
    status: str | None = None,
    cost_source: str | None = None,
) -> QuerySet[UsageEvent]:
    """A tenant's raw events, newest first, with their dimension names joined."""
    filters = filters or UsageFilters()
    qs = UsageEvent.objects.for_tenant(tenant)
    if time_range is not None:
        qs = qs.filter(occurred_at__gte=time_range.start, occurred_at__lt=time_range.end)
    for name in FILTER_FIELDS:
        value = getattr(filters, name)
        if value is not None:
            qs = qs.filter(**{f"{name}__value": value})
    qs = with_tag(qs, filters.tag)
    if session_id is not None:
        qs = qs.filter(session__value=session_id)
    if status is not None:
        if status not in ("success", "error"):
            raise DomainError("status must be success or error.", field="status")
        qs = qs.filter(is_error=status == "error")
    if cost_source is not None:
        labels = {label: value for value, label in CostSource.choices}
        if cost_source not in labels:
            raise DomainError(
                "cost_source must be computed, caller or unpriced.", field="cost_source"
            )
        qs = qs.filter(cost_source=labels[cost_source])
    return qs.select_related(
        "provider", "model", "operation", "end_user", "session", "tag_set"
    ).order_by("-occurred_at", "-pk")


def usage_event_page(*, events: QuerySet[UsageEvent], cursor: str | None, limit: int) -> EventPage:
    if cursor:
        moment, pk = decode_cursor(cursor)
        events = events.filter(Q(occurred_at__lt=moment) | Q(occurred_at=moment, pk__lt=pk))
    rows = list(events[: limit + 1])
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return EventPage(events=rows[:limit], next_cursor=next_cursor)


def iter_usage_events(*, events: QuerySet[UsageEvent], chunk: int = 2000) -> Iterator[UsageEvent]:
    """Every event of the queryset, in keyset-paged chunks (for exports)."""
    cursor = None
    while True:
        page = usage_event_page(events=events, cursor=cursor, limit=chunk)
        yield from page.events
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
