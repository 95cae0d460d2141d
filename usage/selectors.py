"""Reads of usage data. Aggregates come from the hourly rollups, never from raw events, except
for what rollups do not carry: sessions, and tags together with an end user or tag filter,
which read the events in range (tags alone read the tag rollups)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from typing import Any

from django.db.models import F, Q, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDay, TruncHour
from django.utils import timezone

from costmon.core.exceptions import DomainError
from costmon.core.models import Tenant
from costmon.core.periods import (
    TimeRange,
    tenant_zone,
)
from usage.catalog import load_catalog
from usage.event_queries import FILTER_FIELDS as FILTER_FIELDS
from usage.event_queries import EventPage as EventPage
from usage.event_queries import TagValue as TagValue
from usage.event_queries import UsageFilters as UsageFilters
from usage.event_queries import with_tag
from usage.event_sums import add_sums, dimension_names, event_groups, event_totals, tag_sets
from usage.eventstore.base import EventSums, no_sums
from usage.kept_metrics import kept_ranking, kept_series, kept_totals
from usage.models import (
    Dimension,
    HourlyRollup,
    ModelHourlyRollup,
    PriceChangeHold,
    PriceSync,
    Rollup,
    TagHourlyRollup,
    UsageEvent,
)
from usage.pricing import Price
from usage.rollups import ROLLUP_SUMS
from usage.user_days import end_user_sums
from usage.user_sums import kept_by_store, user_sums

ROLLUP_DIMENSIONS = ("provider", "model", "operation", "end_user")
_KINDS = {
    "provider": Dimension.Kind.PROVIDER,
    "model": Dimension.Kind.MODEL,
    "operation": Dimension.Kind.OPERATION,
    "end_user": Dimension.Kind.END_USER,
}
EVENT_DIMENSIONS = ("session_id",)


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
    users_in_store = kept_by_store()
    if users_in_store and filters.end_user is not None:
        return _metrics_of_users(
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
        if group_by == "end_user" and users_in_store:  # the rest from the by-model rollups
            rows = _ranked_in_store(tenant, tr, filters, group_by, limit)
        elif group_by in ROLLUP_DIMENSIONS and kept:
            rows = kept_ranking(
                tenant=tenant,
                time_range=tr,
                what=filters,
                rows_of=partial(model_rows_of, by_end_user=group_by == "end_user"),
                dimension=group_by,
                limit=limit,
                # Whole days from the daily sums by end user, a third of the hourly rows.
                sums_of=(
                    partial(_end_user_sums, tenant)
                    if group_by == "end_user" and filters == UsageFilters()
                    else None
                ),
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


def _end_user_sums(tenant: Tenant, part: TimeRange) -> dict[int, list[int]]:
    return end_user_sums(tenant, part.start, part.end, ROLLUP_SUMS)


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


def _metrics_of_users(
    tenant: Tenant,
    tr: TimeRange,
    filters: UsageFilters,
    *,
    group_by: str | None,
    interval: str,
    limit: int,
) -> Metrics:
    """`usage_metrics` about end users from an event store that keeps their sums
    (`usage.user_sums`): the figures of the full hourly rollups, ranked as
    `ranked_by_dimension` ranks them."""
    dimension = group_by if group_by in ROLLUP_DIMENSIONS else None
    groups = user_sums(
        tenant, tr.start, tr.end, by=(dimension,) if dimension else (), filters=filters
    )
    totals = no_sums()
    for g in groups:
        add_sums(totals, g.sums)
    metrics = Metrics(range=tr, totals=totals, group_by=group_by, interval=interval)
    if dimension:
        metrics.breakdown = _ranked(_named_top(tenant, groups, limit), limit)
    elif group_by:
        metrics.breakdown = _ranked(_event_breakdown(tenant, tr, filters, group_by), limit)
    series = user_sums(tenant, tr.start, tr.end, filters=filters, by=(), bucket=interval, tz=tr.tz)
    metrics.series = _series(tr, interval, {g.bucket: g.sums for g in series})
    return metrics


def _ranked_in_store(
    tenant: Tenant, tr: TimeRange, filters: UsageFilters, dimension: str, limit: int
) -> list[dict[str, Any]]:
    """`ranked_by_dimension`'s rows from an event store that keeps the sums by end user."""
    return _named_top(
        tenant, user_sums(tenant, tr.start, tr.end, by=(dimension,), filters=filters), limit
    )


def _named_top(tenant: Tenant, groups: list[EventSums], limit: int) -> list[dict[str, Any]]:
    """The `limit` groups (by one id) that spend most, then call most, then by id, named."""
    groups.sort(key=lambda g: (-g.sums["cost_nanos"], -g.sums["calls"], g.key[0] or 0))
    names = dimension_names(tenant, [g.key[0] for g in groups[:limit]])
    return [{"key": names.get(g.key[0] or 0, ""), **g.sums} for g in groups[:limit]]


def _event_breakdown(
    tenant: Tenant, tr: TimeRange, filters: UsageFilters, group_by: str
) -> list[dict[str, Any]]:
    """The events' sums per value of `group_by` (a dimension, session_id or tag:<name>), each
    named as `key` (None: the events have none), summed by the event store."""
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
