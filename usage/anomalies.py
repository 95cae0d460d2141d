"""Anomalies: each hour's spend (or tokens) against a baseline learned from the same hour of the
week in the last weeks, robust to the odd spike in the history (median and MAD, not the mean).

For an hour t the history is the same wall-clock hour of the tenant's zone 1, 2, .. `weeks` weeks
earlier (so "Monday 09:00" stays Monday 09:00 across a daylight-saving change), counting only
weeks since the tenant's first usage (an hour with no rollup row then counts as 0). With m the
median of the history and MAD the median of |v - m|, and k the sensitivity (the spike rule's
multiplier, 2 by default):

    upper = max(k x m, m + k x 1.4826 x MAD, floor)
    lower = max(0, min(m / k, m - k x 1.4826 x MAD))

rounded half-up to whole nano-dollars (tokens). 1.4826 x MAD estimates a standard deviation of
normal noise; `k x m` keeps a perfectly regular history (MAD 0) from flagging every small change,
and `floor` (a minimum volume) keeps quiet hours quiet. An hour above `upper` is high, below
`lower` low. Sums come from the hourly rollups (events only for a tag filter, as elsewhere);
the arithmetic is integer and Decimal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db.models import Min, Sum
from django.db.models.functions import Coalesce

from costmon.core.models import Tenant
from costmon.core.periods import tenant_zone
from usage.event_sums import event_groups, time_range
from usage.selectors import FILTER_FIELDS, UsageFilters, named, rollups_of
from usage.user_sums import kept_by_store, user_sums

DEFAULT_WEEKS = 4
MIN_WEEKS = 2  # fewer weeks of history than this: no baseline, nothing is flagged
MAX_WEEKS = 8
DEFAULT_SENSITIVITY = Decimal(2)
MAD_SCALE = Decimal("1.4826")
METRICS = ("cost", "tokens")
HIGH, LOW = "high", "low"
_HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Baseline:
    median: Decimal
    mad: Decimal
    weeks: int  # how many weeks of history it was learned from
    lower: int
    upper: int

    @property
    def usual(self) -> int:
        """The median as a whole number (half-up), for people."""
        return _whole(self.median)


@dataclass(frozen=True)
class BandPoint:
    hour: datetime  # the hour's start, UTC
    value: int  # nano-dollars, or tokens
    baseline: Baseline | None  # None: too little history

    @property
    def flag(self) -> str:
        """ "high", "low", or "" (inside the band, or no baseline)."""
        if self.baseline is None:
            return ""
        if self.value > self.baseline.upper:
            return HIGH
        if self.value < self.baseline.lower:
            return LOW
        return ""


def median(values: Sequence[int | Decimal]) -> Decimal:
    """The exact median (the mean of the middle two for an even count)."""
    if not values:
        raise ValueError("the median of nothing")
    ordered = sorted(Decimal(v) for v in values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def _whole(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def baseline_of(
    history: Sequence[int], *, sensitivity: Decimal = DEFAULT_SENSITIVITY, floor: int = 0
) -> Baseline:
    """The band around the history's median (see the module's docstring)."""
    if sensitivity <= 1:
        raise ValueError("the sensitivity must be above 1")
    m = median(history)
    mad = median([abs(v - m) for v in history])
    spread = sensitivity * MAD_SCALE * mad
    upper = max(sensitivity * m, m + spread, Decimal(floor))
    lower = max(Decimal(0), min(m / sensitivity, m - spread))
    return Baseline(median=m, mad=mad, weeks=len(history), lower=_whole(lower), upper=_whole(upper))


def same_hour_weeks_before(hour: datetime, tz: tzinfo, weeks: int) -> list[datetime]:
    """The same wall-clock hour of the week 1..`weeks` weeks before `hour`, in UTC."""
    local = hour.astimezone(tz)
    return [(local - timedelta(weeks=i)).astimezone(UTC) for i in range(1, weeks + 1)]


def _hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hourly_totals(
    *,
    tenant: Tenant,
    start: datetime,
    end: datetime,
    filters: UsageFilters | None = None,
    metric: str = "cost",
) -> dict[datetime, int]:
    """Spend (nano-dollars) or tokens (input + output) per UTC hour in [start, end), summed in
    the database; hours without usage are absent."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    filters = filters or UsageFilters()
    if filters.tag is not None or (filters.end_user is not None and kept_by_store()):
        # Tags are on the events only: summed per UTC hour by the event store; so are end
        # users with a store that keeps their sums (`usage.user_sums`).
        groups = (
            event_groups(
                tenant=tenant, time_range=time_range(start, end), filters=filters, bucket="hour"
            )
            if filters.tag is not None
            else user_sums(tenant, start, end, filters=filters, bucket="hour")
        )
        return {
            g.bucket.astimezone(UTC): (
                g.sums["cost_nanos"]
                if metric == "cost"
                else g.sums["input_tokens"] + g.sums["output_tokens"]
            )
            for g in groups
            if g.bucket is not None
        }
    rows = rollups_of(tenant, by_end_user=filters.end_user is not None).filter(
        hour__gte=start, hour__lt=end
    )
    for name in FILTER_FIELDS:
        if (value := getattr(filters, name)) is not None:
            rows = rows.filter(named(tenant, name, value))
    sums = (
        {"a": Coalesce(Sum("cost_nanos"), 0)}
        if metric == "cost"
        else {"a": Coalesce(Sum("input_tokens"), 0), "b": Coalesce(Sum("output_tokens"), 0)}
    )
    grouped: Any = rows.values("hour").annotate(**sums).order_by()
    return {r["hour"].astimezone(UTC): int(r["a"]) + int(r.get("b", 0)) for r in grouped}


def first_usage_hour(*, tenant: Tenant) -> datetime | None:
    """The hour of the tenant's first rollup row: weeks before it are not history."""
    first = rollups_of(tenant).aggregate(first=Min("hour"))["first"]
    return _hour_floor(first) if first is not None else None


def anomaly_band(
    *,
    tenant: Tenant,
    start: datetime,
    end: datetime,
    filters: UsageFilters | None = None,
    metric: str = "cost",
    weeks: int = DEFAULT_WEEKS,
    sensitivity: Decimal = DEFAULT_SENSITIVITY,
    floor: int = 0,
) -> list[BandPoint]:
    """Every hour from `start` (rounded down to the hour) to `end`, with its value and band."""
    if not 1 <= weeks <= MAX_WEEKS:
        raise ValueError(f"weeks must be 1 to {MAX_WEEKS}")
    tz = tenant_zone(tenant)
    hours = []
    current = _hour_floor(start)
    while current < end:
        hours.append(current)
        current += _HOUR
    if not hours:
        return []
    # Wall-clock weeks back can be an hour longer across a daylight-saving change.
    read_from = hours[0] - timedelta(weeks=weeks, hours=2)
    values = hourly_totals(
        tenant=tenant, start=read_from, end=hours[-1] + _HOUR, filters=filters, metric=metric
    )
    first = first_usage_hour(tenant=tenant)
    points = []
    for hour in hours:
        history = [
            values.get(before, 0)
            for before in same_hour_weeks_before(hour, tz, weeks)
            if first is not None and before >= first
        ]
        baseline = (
            baseline_of(history, sensitivity=sensitivity, floor=floor)
            if len(history) >= min(MIN_WEEKS, weeks)
            else None
        )
        points.append(BandPoint(hour=hour, value=values.get(hour, 0), baseline=baseline))
    return points
