"""Reads for the dashboard pages. Every figure comes from the rollups (the small by-model ones
unless end users matter: `usage.selectors.rollups_of`), aggregated in the database; only a tag
filter (tags live on events alone) sums the events in range, in whichever store keeps them
(`usage.event_sums`), as the metrics selectors do.

Figures from rollups are summed through `settled.summed`: the part of the range before today is
kept in the shared cache, so a view sums only today's rows (the same sums, added exactly).
Figures are therefore summed by dictionary id and named afterwards.

`families=True` (the pages' default) counts a model's dated snapshots under its family name
(`gpt-4o-2024-08-06` under `gpt-4o`): in breakdowns and series by model, and in a model filter.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from django.db.models import F, QuerySet
from django.db.models.functions import TruncDay, TruncHour

from costmon.core.models import Tenant
from costmon.core.periods import TimeRange
from costmon.web.dashboard.event_figures import event_sums, tag_event_sums, users_in_store
from costmon.web.dashboard.families import family_ids, family_of
from usage import settled
from usage.event_sums import add_sums
from usage.kept_metrics import int_rows
from usage.models import Dimension, TagHourlyRollup
from usage.rollups import ROLLUP_SUMS
from usage.selectors import (
    ROLLUP_DIMENSIONS,
    UsageFilters,
    _bucket_starts,
    _filtered_rollups,
    _rollup_sums,
    named,
    rollups_of,
)
from usage.settled import Sums
from usage.user_days import end_user_day_costs, end_user_sums

MAX_MODEL_NAMES = 1000  # model names summed before merging them into families
BREAKDOWN_SUMS = ("calls", "errors", "cache_hits", "cost_nanos")  # what a breakdown row shows


@dataclass(frozen=True)
class _Source:
    rows: QuerySet[Any]
    sums: dict[str, Any]
    time_field: str


def _source(
    tenant: Tenant,
    tr: TimeRange,
    filters: UsageFilters,
    *,
    by_end_user: bool = False,
    families: bool = False,
) -> _Source:
    """The rollups to sum (no tag filter: `event_figures.event_sums` answers those)."""
    family = None
    if families and filters.model is not None:
        family, filters = filters.model, replace(filters, model=None)
    rows = _filtered_rollups(tenant, tr, filters, by_end_user=by_end_user)
    if family is not None:
        rows = rows.filter(model_id__in=family_ids(tenant, family))
    return _Source(rows, _rollup_sums(), "hour")


def _summed(
    tenant: Tenant,
    tr: TimeRange,
    filters: UsageFilters,
    what: tuple[Any, ...],
    compute: Callable[[TimeRange], Sums],
    *,
    keep: bool = True,
) -> Sums:
    """`compute(tr)`, the days before today kept (`settled.summed`) unless the sums come from
    events (a tag filter): raw events are purged after the retention period, rollups are not."""
    if filters.tag is not None or not keep:
        return compute(tr)
    return settled.summed(tenant, tr, (*what, filters), compute)


def _names(tenant: Tenant, ids: Iterable[int]) -> dict[int, str]:
    return dict(
        Dimension.objects.for_tenant(tenant).filter(pk__in=list(ids)).values_list("pk", "value")
    )


def usage_totals(
    *, tenant: Tenant, time_range: TimeRange, filters: UsageFilters, families: bool = False
) -> dict[str, int]:
    def compute(tr: TimeRange) -> Sums:
        if users_in_store(filters):
            total: dict[str, int] = dict.fromkeys(ROLLUP_SUMS, 0)
            for g in event_sums(tenant, tr, filters, families=families):
                add_sums(total, g.sums)
            return {(): [total[name] for name in ROLLUP_SUMS]}
        src = _source(tenant, tr, filters, families=families)
        found = src.rows.aggregate(**src.sums)
        return {(): [int(found[name]) for name in ROLLUP_SUMS]}

    sums = _summed(tenant, time_range, filters, ("totals", families), compute)[()]
    return dict(zip(ROLLUP_SUMS, sums, strict=True))


def has_usage(*, tenant: Tenant) -> bool:
    """Whether the tenant ever reported anything (else the pages show how to start)."""
    return rollups_of(tenant).exists()


def chart_interval(time_range: TimeRange) -> str:
    """Hourly bars up to two days (today, the last 48 hours), daily beyond."""
    return "hour" if time_range.end - time_range.start <= timedelta(hours=49) else "day"


MAX_SERIES = 10  # a stacked chart shows the ten biggest; the rest is one series, "others"
OTHERS = "\x00others"  # the key of that series: no stored name holds a NUL


def spend_series(
    *,
    tenant: Tenant,
    time_range: TimeRange,
    filters: UsageFilters,
    group_by: str,
    families: bool = False,
    top: Sequence[str] | None = None,
) -> tuple[list[datetime], list[dict[str, Any]], str]:
    """Spend per bucket and per provider, model, operation, end user or tag value: (every
    bucket of the range, the non-empty {bucket, key, cost_nanos} cells, the interval). The
    `MAX_SERIES` biggest keys keep their own cells, the rest is summed as `OTHERS`.

    `top`: the end users already known to spend most (the page's table), so the series reads
    only their rows, and the others are the bucket's total less theirs."""
    interval = chart_interval(time_range)
    buckets = _bucket_starts(time_range, interval)
    if group_by.startswith(TAG_PREFIX) and len(group_by) > len(TAG_PREFIX):
        name = group_by[len(TAG_PREFIX) :]
        cells = _tag_series(tenant, time_range, filters, name, interval, families)
        return buckets, _fold(cells), interval
    if group_by not in ROLLUP_DIMENSIONS:
        raise ValueError(f"cannot group the series by {group_by!r}")
    narrowed = group_by == "end_user" and top is not None
    only: tuple[int, ...] | None = None
    if narrowed:
        only = tuple(
            sorted(
                Dimension.objects.for_tenant(tenant)
                .filter(kind=Dimension.Kind.END_USER, value__in=list(top or ())[:MAX_SERIES])
                .values_list("pk", flat=True)
            )
        )
    column = f"{group_by}_id"
    trunc = TruncHour if interval == "hour" else TruncDay

    def compute(tr: TimeRange) -> Sums:
        if users_in_store(filters, group_by == "end_user"):
            groups = event_sums(
                tenant, tr, filters, by=(group_by,), bucket=interval, families=families
            )
            return {
                (g.bucket, g.key[0]): [g.sums["cost_nanos"]]
                for g in groups
                if only is None or g.key[0] in only
            }
        if only is not None and interval == "day" and filters == UsageFilters():
            # The top end users' whole days from the daily sums, where local days are UTC's.
            daily = end_user_day_costs(tenant, tr, only)
            if daily is not None:
                return daily
        src = _source(tenant, tr, filters, by_end_user=group_by == "end_user", families=families)
        rows = src.rows if only is None else src.rows.filter(end_user_id__in=only)
        found = (
            rows.annotate(bucket=trunc(src.time_field, tzinfo=time_range.tz))
            .values_list("bucket", column)
            .annotate(cost_nanos=src.sums["cost_nanos"])
            .order_by()
        )
        return {(bucket, pk): [int(cost)] for bucket, pk, cost in found}

    what = ("series", group_by, interval, families, only)
    sums = _summed(tenant, time_range, filters, what, compute)
    names = _names(tenant, {pk for _, pk in sums})
    cells = [
        {"bucket": bucket, "key": names.get(pk, ""), "cost_nanos": cost}
        for (bucket, pk), (cost,) in sorted(
            sums.items(), key=lambda item: (item[0][0], names.get(item[0][1], ""))
        )
    ]
    if families and group_by == "model":
        merged: dict[tuple[datetime, str], int] = {}
        for c in cells:
            key = (c["bucket"], family_of(c["key"]))
            merged[key] = merged.get(key, 0) + c["cost_nanos"]
        cells = [{"bucket": b, "key": k, "cost_nanos": v} for (b, k), v in merged.items()]
    if narrowed:
        _, totals = spend_per_bucket(
            tenant=tenant,
            time_range=time_range,
            filters=filters,
            interval=interval,
            families=families,
        )
        cells.extend(_rest(cells, buckets, totals, OTHERS))
        return buckets, cells, interval
    return buckets, _fold(cells), interval


def _rest(
    cells: list[dict[str, Any]], buckets: Sequence[datetime], totals: Sequence[int], key: str
) -> list[dict[str, Any]]:
    """Cells `key` holding what `cells` leave of each bucket's total."""
    per_bucket: dict[datetime, int] = {}
    for c in cells:
        per_bucket[c["bucket"]] = per_bucket.get(c["bucket"], 0) + c["cost_nanos"]
    return [
        {"bucket": bucket, "key": key, "cost_nanos": rest}
        for bucket, total in zip(buckets, totals, strict=True)
        if (rest := total - per_bucket.get(bucket, 0))
    ]


def _fold(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `MAX_SERIES` biggest keys' cells, and the others' summed per bucket as `OTHERS`
    (calls without the tag, key "", always stay apart)."""
    spend: dict[str, int] = {}
    for c in cells:
        spend[c["key"]] = spend.get(c["key"], 0) + c["cost_nanos"]
    ranked = sorted((k for k in spend if k), key=lambda k: (-spend[k], k))
    if len(ranked) <= MAX_SERIES:
        return cells
    keep = {"", *ranked[:MAX_SERIES]}
    out = [c for c in cells if c["key"] in keep]
    others: dict[datetime, int] = {}
    for c in cells:
        if c["key"] not in keep:
            others[c["bucket"]] = others.get(c["bucket"], 0) + c["cost_nanos"]
    out.extend({"bucket": b, "key": OTHERS, "cost_nanos": v} for b, v in others.items())
    return out


TAG_PREFIX = "tag:"


@dataclass(frozen=True)
class _Tagged:
    rows: QuerySet[Any]  # tag rollups
    time_field: str
    sums: dict[str, Any]
    value: Any  # the tag's value, as an expression


def _tagged(
    tenant: Tenant, tr: TimeRange, filters: UsageFilters, name: str, families: bool
) -> _Tagged:
    """The calls carrying tag `name`, from the tag rollups (no end user or tag filter, which
    those rows do not carry: `event_figures.tag_event_sums` answers those)."""
    rows: QuerySet[Any] = TagHourlyRollup.objects.for_tenant(tenant).filter(
        tag_name=name, hour__gte=tr.start, hour__lt=tr.end
    )
    for dimension in ("provider", "operation", "model"):
        value = getattr(filters, dimension)
        if value is None:
            continue
        if dimension == "model" and families:
            rows = rows.filter(model_id__in=family_ids(tenant, value))
        else:
            rows = rows.filter(named(tenant, dimension, value))
    return _Tagged(rows, "hour", _rollup_sums(), F("tag_value"))


def _tag_rollups(filters: UsageFilters) -> bool:
    """Whether `_tagged` reads the tag rollups (kept sums) rather than events."""
    return filters.end_user is None and filters.tag is None


def _tag_series(
    tenant: Tenant,
    tr: TimeRange,
    filters: UsageFilters,
    name: str,
    interval: str,
    families: bool,
) -> list[dict[str, Any]]:
    """{bucket, key, cost_nanos} per value of tag `name`, and the calls without that tag as
    key ""."""
    trunc = TruncHour if interval == "hour" else TruncDay

    def compute(part: TimeRange) -> Sums:
        if not _tag_rollups(filters):
            found = tag_event_sums(tenant, part, filters, name, families, bucket=interval)
            return {key: [sums["cost_nanos"]] for key, sums in found.items()}
        src = _tagged(tenant, part, filters, name, families)
        tagged = (
            src.rows.annotate(bucket=trunc(src.time_field, tzinfo=tr.tz))
            .values_list("bucket", src.value)
            .annotate(cost_nanos=src.sums["cost_nanos"])
            .order_by()
        )
        return {(bucket, key): [int(cost)] for bucket, key, cost in tagged}

    what = ("tag series", name, interval, families)
    sums = _summed(tenant, tr, filters, what, compute, keep=_tag_rollups(filters))
    cells = [
        {"bucket": bucket, "key": key, "cost_nanos": cost}
        for (bucket, key), (cost,) in sorted(sums.items())
    ]
    # Whatever the tagged calls leave of each bucket's total is spend without the tag.
    buckets, totals = spend_per_bucket(
        tenant=tenant, time_range=tr, filters=filters, interval=interval, families=families
    )
    return cells + _rest(cells, buckets, totals, "")


def tag_breakdown(
    *,
    tenant: Tenant,
    time_range: TimeRange,
    filters: UsageFilters,
    name: str,
    limit: int = 10,
    families: bool = False,
) -> list[dict[str, Any]]:
    """The values of tag `name` that cost most, as rows of every sum, and a row with key ""
    for the calls without the tag (the period's totals less the tagged calls')."""

    def compute(tr: TimeRange) -> Sums:
        if not _tag_rollups(filters):
            found_sums = tag_event_sums(tenant, tr, filters, name, families)
            return {key: [sums[n] for n in ROLLUP_SUMS] for (_, key), sums in found_sums.items()}
        src = _tagged(tenant, tr, filters, name, families)
        found = (
            src.rows.values_list(src.value)
            .annotate(**{n: src.sums[n] for n in ROLLUP_SUMS})
            .order_by()
        )
        return {key: [int(v) for v in values] for key, *values in found}

    what = ("tag breakdown", name, families)
    keep = _tag_rollups(filters)
    sums = _summed(tenant, time_range, filters, what, compute, keep=keep)
    calls, cost = ROLLUP_SUMS.index("calls"), ROLLUP_SUMS.index("cost_nanos")
    rows = [
        {"key": key, **dict(zip(ROLLUP_SUMS, values, strict=True))}
        for key, values in heapq.nsmallest(
            limit, sums.items(), key=lambda item: (-item[1][cost], -item[1][calls], item[0])
        )
    ]
    tagged = [sum(column) for column in zip(*sums.values(), strict=True)] or [0] * len(ROLLUP_SUMS)
    total = usage_totals(tenant=tenant, time_range=time_range, filters=filters, families=families)
    rest = {k: int(total[k]) - tagged[i] for i, k in enumerate(ROLLUP_SUMS)}
    if rest["calls"] or rest["cost_nanos"]:
        rows.append({**rest, "key": ""})
    return sorted(rows, key=lambda r: (-r["cost_nanos"], -r["calls"], r["key"]))


def spend_per_bucket(
    *,
    tenant: Tenant,
    time_range: TimeRange,
    filters: UsageFilters,
    interval: str,
    families: bool = False,
) -> tuple[list[datetime], list[int]]:
    """Total spend in each hour or day of the range, empty ones included (the previous
    period's line on the spend chart)."""
    trunc = TruncHour if interval == "hour" else TruncDay

    def compute(tr: TimeRange) -> Sums:
        if users_in_store(filters):
            groups = event_sums(tenant, tr, filters, bucket=interval, families=families)
            return {g.bucket: [g.sums["cost_nanos"]] for g in groups}
        src = _source(tenant, tr, filters, families=families)
        found = (
            src.rows.annotate(bucket=trunc(src.time_field, tzinfo=time_range.tz))
            .values_list("bucket")
            .annotate(cost_nanos=src.sums["cost_nanos"])
            .order_by()
        )
        return {bucket: [int(cost)] for bucket, cost in found}

    found = _summed(tenant, time_range, filters, ("per bucket", interval, families), compute)
    buckets = _bucket_starts(time_range, interval)
    return buckets, [found[b][0] if b in found else 0 for b in buckets]


def breakdown(
    *,
    tenant: Tenant,
    time_range: TimeRange,
    filters: UsageFilters,
    dimension: str,
    limit: int = 10,
    families: bool = False,
) -> list[dict[str, Any]]:
    """The most expensive providers, models, operations or end users, each row the
    `BREAKDOWN_SUMS` (by model family: every model summed, a tenant uses tens of names, then
    merged). Every key's sums are read (a few thousand end users at most), then ranked."""
    if dimension not in ROLLUP_DIMENSIONS:
        raise ValueError(f"cannot break down by {dimension!r}")
    merge = families and dimension == "model"
    wanted = MAX_MODEL_NAMES if merge else limit
    column = f"{dimension}_id"

    def compute(tr: TimeRange) -> Sums:
        if users_in_store(filters, dimension == "end_user"):
            groups = event_sums(tenant, tr, filters, by=(dimension,), families=families)
            return {g.key[0]: [g.sums[name] for name in BREAKDOWN_SUMS] for g in groups}
        if dimension == "end_user" and filters == UsageFilters():
            # Whole days from the daily sums by end user, a third of the hourly rows.
            return end_user_sums(tenant, tr.start, tr.end, BREAKDOWN_SUMS)
        src = _source(tenant, tr, filters, by_end_user=dimension == "end_user", families=families)
        found = int_rows(
            src.rows.values_list(column)
            .annotate(**{name: src.sums[name] for name in BREAKDOWN_SUMS})
            .order_by()
        )
        return {pk: list(values) for pk, *values in found}

    sums = _summed(tenant, time_range, filters, ("breakdown", dimension, families), compute)
    calls, cost = BREAKDOWN_SUMS.index("calls"), BREAKDOWN_SUMS.index("cost_nanos")
    # As the database would rank them: most spend, then most calls, then the id.
    top = heapq.nsmallest(
        wanted, sums.items(), key=lambda item: (-item[1][cost], -item[1][calls], item[0])
    )
    names = _names(tenant, [pk for pk, _ in top])
    rows: list[dict[str, Any]] = [
        {"key": names.get(pk, ""), **dict(zip(BREAKDOWN_SUMS, values, strict=True))}
        for pk, values in top
    ]
    if merge:
        merged: dict[str, dict[str, Any]] = {}
        for r in rows:
            family = family_of(r["key"])
            if family in merged:
                acc = merged[family]
                for name, value in r.items():
                    if name != "key":
                        acc[name] = int(acc[name]) + int(value)
            else:
                merged[family] = {**r, "key": family}
        rows = list(merged.values())
    return sorted(rows, key=lambda r: (-r["cost_nanos"], -r["calls"], r["key"]))[:limit]


def spend_heatmap(
    *, tenant: Tenant, time_range: TimeRange, filters: UsageFilters, families: bool = False
) -> list[list[int]]:
    """Spend by weekday (Monday first) x hour of day in the tenant's time zone (summed per hour
    in the database, placed in the week here)."""
    tz = time_range.tz

    def compute(tr: TimeRange) -> Sums:
        if users_in_store(filters):
            # Summed per local hour by the store, then placed (Sunday = 1, as ExtractWeekDay).
            cells: Sums = {}
            for g in event_sums(tenant, tr, filters, bucket="hour", families=families):
                assert g.bucket is not None
                local = g.bucket.astimezone(tz)
                key = (local.isoweekday() % 7 + 1, local.hour)
                cells[key] = [cells.get(key, [0])[0] + g.sums["cost_nanos"]]
            return cells
        # Summed per UTC hour by the database, then placed here: a zone conversion per hour
        # of the range instead of two per rollup row (a fifth of a cold overview's time).
        src = _source(tenant, tr, filters, families=families)
        cells = {}
        hours = src.rows.values_list(src.time_field).annotate(cost=src.sums["cost_nanos"])
        for hour, cost in hours.order_by():
            local = hour.astimezone(tz)
            key = (local.isoweekday() % 7 + 1, local.hour)  # Sunday = 1, as ExtractWeekDay
            cells[key] = [cells.get(key, [0])[0] + int(cost)]
        return cells

    matrix = [[0] * 24 for _ in range(7)]
    for (wd, h), (cost,) in _summed(
        tenant, time_range, filters, ("heatmap", families), compute
    ).items():
        # ExtractWeekDay counts from Sunday = 1; the chart starts its week on Monday.
        matrix[(wd + 5) % 7][h] += cost
    return matrix
