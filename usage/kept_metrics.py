"""The metrics API's rollup sums, the days before today kept in the shared cache
(`usage.settled`, as the dashboard keeps its own): the same figures, exactly, summed once.

Each read takes `rows_of`, the filtered rollups of a part of the range, and `what`, everything
besides the range the sums depend on (the filters), which names the kept sums."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connections
from django.db.models import QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDay, TruncHour

from costmon.core.models import Tenant
from costmon.core.periods import TimeRange
from usage import settled
from usage.models import Dimension
from usage.rollups import ROLLUP_SUMS

RowsOf = Callable[[TimeRange], QuerySet[Any]]


def _sums() -> dict[str, Any]:
    return {name: Coalesce(Sum(name), 0) for name in ROLLUP_SUMS}


def int_rows(rows: QuerySet[Any]) -> list[tuple[int, ...]]:
    """The rows of a `values_list` of integers (ids and sums), read without Django's converters,
    which call a function per value: for a range's thousands of end users, each with a dozen
    sums, they took longer than the query. Only for integers: they convert dates on SQLite."""
    try:
        sql, params = rows.query.sql_with_params()
    except EmptyResultSet:  # a filter no row can match (an empty `__in`), as Django reads it
        return []
    with connections[rows.db].cursor() as cursor:
        cursor.execute(sql, params)
        return [tuple(map(int, row)) for row in cursor.fetchall()]


def kept_totals(
    *, tenant: Tenant, time_range: TimeRange, what: Any, rows_of: RowsOf
) -> dict[str, int]:
    def compute(part: TimeRange) -> settled.Sums:
        found = rows_of(part).aggregate(**_sums())
        return {(): [int(found[name]) for name in ROLLUP_SUMS]}

    sums = settled.summed(tenant, time_range, ("metrics totals", what), compute)[()]
    return dict(zip(ROLLUP_SUMS, sums, strict=True))


def kept_ranking(
    *,
    tenant: Tenant,
    time_range: TimeRange,
    what: Any,
    rows_of: RowsOf,
    dimension: str,
    limit: int,
    sums_of: Callable[[TimeRange], settled.Sums] | None = None,
) -> list[dict[str, Any]]:
    """The rows `usage.selectors.ranked_by_dimension` gives (the same `limit` keys: most
    spend, then most calls, then the id), from every key's kept sums. `sums_of` computes a
    part's sums per key (`ROLLUP_SUMS` in order) where a cheaper source than `rows_of` has them
    (the daily sums by end user)."""
    column = f"{dimension}_id"

    def compute(part: TimeRange) -> settled.Sums:
        if sums_of is not None:
            return sums_of(part)
        found = int_rows(rows_of(part).values_list(column).annotate(**_sums()).order_by())
        return {pk: list(values) for pk, *values in found}

    sums = settled.summed(tenant, time_range, ("metrics by", dimension, what), compute)
    calls, cost = ROLLUP_SUMS.index("calls"), ROLLUP_SUMS.index("cost_nanos")
    top = heapq.nsmallest(
        limit, sums.items(), key=lambda item: (-item[1][cost], -item[1][calls], item[0])
    )
    names = dict(
        Dimension.objects.for_tenant(tenant)
        .filter(pk__in=[pk for pk, _ in top])
        .values_list("pk", "value")
    )
    return [
        {"key": names.get(pk, ""), **dict(zip(ROLLUP_SUMS, values, strict=True))}
        for pk, values in top
    ]


def kept_series(
    *, tenant: Tenant, time_range: TimeRange, what: Any, rows_of: RowsOf, interval: str
) -> dict[datetime, dict[str, int]]:
    """{bucket start: {cost_nanos, calls}} for the non-empty hours or days of the range."""
    trunc = TruncHour if interval == "hour" else TruncDay

    def compute(part: TimeRange) -> settled.Sums:
        found = (
            rows_of(part)
            .annotate(bucket=trunc("hour", tzinfo=time_range.tz))
            .values_list("bucket")
            .annotate(cost_nanos=Coalesce(Sum("cost_nanos"), 0), calls=Coalesce(Sum("calls"), 0))
            .order_by()
        )
        return {bucket: [int(cost), int(calls)] for bucket, cost, calls in found}

    sums = settled.summed(tenant, time_range, ("metrics series", interval, what), compute)
    return {b: {"cost_nanos": cost, "calls": calls} for b, (cost, calls) in sums.items()}
