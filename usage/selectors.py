"""Reads of usage data. Aggregates come from the hourly rollups, never from raw events, except
for what rollups do not carry: sessions, and tags together with an end user or tag filter,
which read the events in range (tags alone read the tag rollups)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from typing import Any

from django.db.models import Count, F, Func, Q, QuerySet, Sum, TextField, Value
from django.db.models.functions import Coalesce, TruncDay, TruncHour
from django.utils import timezone

from costmon.core.exceptions import DomainError
from costmon.core.models import Tenant
from costmon.core.periods import (
    EARLIEST,
    LATEST,
    TimeRange,
    tenant_zone,
)
from usage.catalog import load_catalog
from usage.kept_metrics import kept_ranking, kept_series, kept_totals
from usage.models import (
    CostSource,
    Dimension,
    HourlyRollup,
    ModelHourlyRollup,
    PriceChangeHold,
    PriceSync,
    Rollup,
    TagHourlyRollup,
    TagSet,
    UsageEvent,
)
from usage.pricing import Price
from usage.rollups import ROLLUP_SUMS

ROLLUP_DIMENSIONS = ("provider", "model", "operation", "end_user")
_KINDS = {
    "provider": Dimension.Kind.PROVIDER,
    "model": Dimension.Kind.MODEL,
    "operation": Dimension.Kind.OPERATION,
    "end_user": Dimension.Kind.END_USER,
}
EVENT_DIMENSIONS = ("session_id",)
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


@dataclass
class Metrics:
    range: TimeRange
    totals: dict[str, int]
    breakdown: list[dict[str, Any]] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)
    group_by: str | None = None
    interval: str = "day"


def rollups_of(tenant: Tenant | int, *, by_end_user: bool = False) -> QuerySet[Any]:
    """The tenant's rollups to aggregate: by model (a few rows per hour) unless the question is
    about end users or API keys, which only the full hourly rollups carry."""
    model: type[Rollup] = HourlyRollup if by_end_user else ModelHourlyRollup
    return model.objects.for_tenant(tenant)  # type: ignore[attr-defined,no-any-return]


def _filtered_rollups(
    tenant: Tenant, tr: TimeRange, filters: UsageFilters, *, by_end_user: bool = False
) -> QuerySet[Any]:
    qs = rollups_of(tenant, by_end_user=by_end_user or filters.end_user is not None).filter(
        hour__gte=tr.start, hour__lt=tr.end
    )
    for name in FILTER_FIELDS:
        value = getattr(filters, name)
        if value is not None:
            qs = qs.filter(named(tenant, name, value))
    return qs


def named(tenant: Tenant, dimension: str, value: str) -> Q:
    """Rollup rows whose provider, model, operation or end user is `value`, by its dictionary
    id: one end user's rows are then found through the (tenant, end user, hour) index instead
    of among every user's rows in the range."""
    ids = Dimension.objects.for_tenant(tenant).filter(kind=_KINDS[dimension], value=value)
    return Q(**{f"{dimension}_id__in": ids.values("pk")})


def _filtered_events(tenant: Tenant, tr: TimeRange, filters: UsageFilters) -> QuerySet[UsageEvent]:
    qs = UsageEvent.objects.for_tenant(tenant).filter(
        occurred_at__gte=tr.start, occurred_at__lt=tr.end
    )
    for name in FILTER_FIELDS:
        value = getattr(filters, name)
        if value is not None:
            qs = qs.filter(**{f"{name}__value": value})
    return with_tag(qs, filters.tag)


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


# The dashboard's pages import it by this name (they are changed on another branch).
_event_sums = event_aggregates


def _rollup_sums() -> dict[str, Any]:
    return {name: Coalesce(Sum(name), 0) for name in ROLLUP_SUMS}


def usage_metrics(
    *,
    tenant: Tenant,
    time_range: TimeRange,
    filters: UsageFilters | None = None,
    group_by: str | None = None,
    interval: str | None = None,
    limit: int = 100,
    keep: bool = False,
) -> Metrics:
    """Totals, a breakdown by one dimension and a time series for a tenant's usage.

    `keep`: the sums of the days before today come from the shared cache when kept there
    (`usage.settled`, as the dashboard's), exactly the same figures; for the metrics API,
    whose callers ask again and again. Sums from events (a tag filter) are never kept."""
    filters = filters or UsageFilters()
    tr = time_range
    interval = interval or ("hour" if tr.end - tr.start <= timedelta(days=2) else "day")
    if interval not in ("hour", "day"):
        raise DomainError("interval must be hour or day.", field="interval")
    tag_group = group_by[4:] if group_by and group_by.startswith("tag:") else None
    if group_by and not tag_group and group_by not in ROLLUP_DIMENSIONS + EVENT_DIMENSIONS:
        raise DomainError(
            f"Unknown group_by {group_by!r}; use one of provider, model, operation, end_user, "
            "session_id or tag:<name>.",
            field="group_by",
        )
    if tag_group == "":
        raise DomainError("Name the tag: group_by=tag:<name>.", field="group_by")

    # Tags live on events only; a tag filter therefore reads events for everything, from
    # whichever store keeps them.
    if filters.tag is not None:
        return _metrics_from_events(
            tenant, tr, filters, group_by=group_by, interval=interval, limit=limit
        )
    base, sums = _filtered_rollups(tenant, tr, filters), _rollup_sums()

    kept = keep
    model_rows_of = partial(_filtered_rollups, tenant, filters=filters)
    if kept:
        totals = kept_totals(tenant=tenant, time_range=tr, what=filters, rows_of=model_rows_of)
    else:
        totals = base.aggregate(**sums)
    metrics = Metrics(range=tr, totals=totals, group_by=group_by, interval=interval)

    if group_by:
        if group_by in ROLLUP_DIMENSIONS and kept:
            rows = kept_ranking(
                tenant=tenant,
                time_range=tr,
                what=filters,
                rows_of=partial(model_rows_of, by_end_user=group_by == "end_user"),
                dimension=group_by,
                limit=limit,
            )
        elif group_by in ROLLUP_DIMENSIONS:
            grouped = (
                _filtered_rollups(tenant, tr, filters, by_end_user=True)
                if group_by == "end_user"
                else base
            )
            rows = ranked_by_dimension(tenant, grouped, group_by, sums, limit=limit)
        elif tag_group and filters.end_user is None:
            rows = _tag_breakdown(tenant, tr, filters, tag_group, totals)
        else:
            rows = _event_breakdown(tenant, tr, filters, group_by)
        metrics.breakdown = _ranked(rows, limit)

    buckets: dict[Any, Any]
    if kept:
        buckets = kept_series(
            tenant=tenant, time_range=tr, what=filters, rows_of=model_rows_of, interval=interval
        )
    else:
        trunc = TruncHour if interval == "hour" else TruncDay
        buckets = {
            row["bucket"]: row
            for row in base.annotate(bucket=trunc("hour", tzinfo=tr.tz))
            .values("bucket")
            .annotate(cost_nanos=sums["cost_nanos"], calls=sums["calls"])
        }
    metrics.series = _series(tr, interval, buckets)
    return metrics


def _series(tr: TimeRange, interval: str, buckets: dict[Any, Any]) -> list[dict[str, Any]]:
    return [
        {
            "bucket": b,
            "cost_nanos": buckets[b]["cost_nanos"] if b in buckets else 0,
            "calls": buckets[b]["calls"] if b in buckets else 0,
        }
        for b in _bucket_starts(tr, interval)
    ]


def _ranked(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The breakdown's rows, the most expensive first; no name reads as ""."""
    breakdown = [{**r, "key": r["key"] if r["key"] is not None else ""} for r in rows]
    breakdown.sort(key=lambda r: (-r["cost_nanos"], -r["calls"], r["key"]))
    return breakdown[:limit]


def _metrics_from_events(
    tenant: Tenant,
    tr: TimeRange,
    filters: UsageFilters,
    *,
    group_by: str | None,
    interval: str,
    limit: int,
) -> Metrics:
    """`usage_metrics` summed from the events, in whichever store keeps them."""
    from usage.event_sums import event_groups, event_totals  # the store imports this module

    metrics = Metrics(
        range=tr,
        totals=event_totals(tenant=tenant, time_range=tr, filters=filters),
        group_by=group_by,
        interval=interval,
    )
    if group_by:
        metrics.breakdown = _ranked(_event_breakdown(tenant, tr, filters, group_by), limit)
    groups = event_groups(tenant=tenant, time_range=tr, filters=filters, bucket=interval)
    metrics.series = _series(tr, interval, {g.bucket: g.sums for g in groups})
    return metrics


def _event_breakdown(
    tenant: Tenant, tr: TimeRange, filters: UsageFilters, group_by: str
) -> list[dict[str, Any]]:
    """The events' sums per value of `group_by` (a dimension, session_id or tag:<name>), each
    named as `key` (None: the events have none), summed by the event store."""
    from usage.event_sums import add_sums, dimension_names, event_groups, tag_sets

    tag = group_by[4:] if group_by.startswith("tag:") else None
    by = "tag_set" if tag else "session" if group_by == "session_id" else group_by
    groups = event_groups(tenant=tenant, time_range=tr, filters=filters, by=(by,))
    ids = [g.key[0] for g in groups]
    if tag:
        sets = tag_sets(tenant, ids)
        names: dict[int | None, str | None] = {i: sets.get(i or 0, {}).get(tag) for i in ids}
    else:
        found = dimension_names(tenant, ids)
        names = {i: found.get(i or 0) for i in ids}
    rows: dict[str | None, dict[str, Any]] = {}
    for g in groups:
        key = names[g.key[0]]
        add_sums(rows.setdefault(key, {"key": key}), g.sums)
    return list(rows.values())


def _tag_breakdown(
    tenant: Tenant, tr: TimeRange, filters: UsageFilters, name: str, totals: dict[str, Any]
) -> list[dict[str, Any]]:
    """The sums per value of tag `name` from the tag rollups, and the calls without the tag
    (the totals less the tagged calls') under key None, as the events would group them."""
    qs = TagHourlyRollup.objects.for_tenant(tenant).filter(
        tag_name=name, hour__gte=tr.start, hour__lt=tr.end
    )
    for dimension in ("provider", "model", "operation"):
        value = getattr(filters, dimension)
        if value is not None:
            qs = qs.filter(named(tenant, dimension, value))
    found: Any = qs.values(key=F("tag_value")).annotate(**_rollup_sums())
    rows = [{"key": r["key"], **{k: int(r[k]) for k in ROLLUP_SUMS}} for r in found]
    rest = {k: int(totals[k]) - sum(r[k] for r in rows) for k in ROLLUP_SUMS}
    if rest["calls"]:
        rows.append({**rest, "key": None})
    return rows


def ranked_by_dimension(
    tenant: Tenant, rows: QuerySet[Any], dimension: str, sums: dict[str, Any], *, limit: int
) -> list[dict[str, Any]]:
    """`rows` (rollups) summed per provider, model, operation or end user, the most expensive
    `limit` first, each with its name as `key`.

    Grouped by the dictionary id, and only the rows kept are named afterwards: grouping a
    month of per-user rollups by id takes a third of the time of grouping by the joined name.
    """
    column = f"{dimension}_id"
    top = list(
        rows.values(column).annotate(**sums).order_by("-cost_nanos", "-calls", column)[:limit]
    )
    names = dict(
        Dimension.objects.for_tenant(tenant)
        .filter(pk__in=[r[column] for r in top])
        .values_list("pk", "value")
    )
    return [{"key": names.get(r.pop(column), ""), **r} for r in top]


def _bucket_starts(tr: TimeRange, interval: str) -> list[datetime]:
    local = tr.start.astimezone(tr.tz)
    if interval == "hour":
        current = local.replace(minute=0, second=0, microsecond=0)
        out = []
        while current < tr.end:
            out.append(current)
            current = (current.astimezone(UTC) + timedelta(hours=1)).astimezone(tr.tz)
        return out
    day = local.date()
    out = []
    while (moment := datetime.combine(day, time(), tzinfo=tr.tz)) < tr.end:
        out.append(moment)
        day += timedelta(days=1)
    return out


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


def unpriced_event_count(*, tenant: Tenant, time_range: TimeRange | None = None) -> int:
    qs = rollups_of(tenant)
    if time_range is not None:
        qs = qs.filter(hour__gte=time_range.start, hour__lt=time_range.end)
    return int(qs.aggregate(n=Coalesce(Sum("unpriced_calls"), 0))["n"])


def today(tenant: Tenant) -> date:
    return timezone.now().astimezone(tenant_zone(tenant)).date()


def price_syncs_since(*, tenant: Tenant, since: datetime) -> list[PriceSync]:
    """Loads since `since` that added or changed prices the tenant is charged: the global
    catalog's and the tenant's own, oldest first."""
    return list(
        PriceSync.objects.filter(
            Q(tenant__isnull=True) | Q(tenant=tenant),
            started_at__gte=since,
            status=PriceSync.Status.APPLIED,
        )
        .filter(Q(added__gt=0) | Q(changed__gt=0))
        .order_by("started_at")
    )


def models_used(*, tenant: Tenant, since: datetime) -> set[tuple[str, str]]:
    """(provider, model) names the tenant's events used since `since` (from rollups)."""
    return set(
        rollups_of(tenant)
        .filter(hour__gte=since)
        .values_list("provider__value", "model__value")
        .distinct()
    )


def held_syncs(*, tenant: Tenant) -> set[int]:
    """Syncs whose price changes wait for staff approval before they apply to the tenant."""
    return set(
        PriceChangeHold.objects.for_tenant(tenant)
        .filter(status=PriceChangeHold.Status.PENDING)
        .values_list("sync_id", flat=True)
    )


@dataclass(frozen=True)
class NameResolution:
    provider: str
    model: str
    calls: int
    unpriced_calls: int
    rule: str  # how the name finds its price today (usage.price_lookup.Resolution.rule), or ""
    catalog_name: str
    price: Price | None


def name_resolutions(*, tenant: Tenant, days: int = 30) -> list[NameResolution]:
    """Every (provider, model) the tenant's calls named in the last `days`, busiest first, with
    the catalog row it resolves to now and the rule that got it there."""
    now = timezone.now()
    catalog = load_catalog(tenant.pk)
    rows = (
        rollups_of(tenant)
        .filter(hour__gte=now - timedelta(days=days))
        .values("provider__value", "model__value")
        .annotate(calls=Sum("calls"), unpriced=Sum("unpriced_calls"))
        .order_by("-calls")
    )
    found = []
    for row in rows:
        provider, model = row["provider__value"], row["model__value"]
        resolution = catalog.resolve(provider, model, now)
        found.append(
            NameResolution(
                provider=provider,
                model=model,
                calls=row["calls"],
                unpriced_calls=row["unpriced"],
                rule=resolution.rule if resolution else "",
                catalog_name=resolution.name if resolution else "",
                price=resolution.price if resolution else None,
            )
        )
    return found
