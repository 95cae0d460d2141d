"""Sums per end user over a range, read from the daily rollups by end user for the whole UTC
days inside it and from the hourly rollups for the hours at its edges (a range starts and ends
at the tenant's local midnights, or at any hour): exactly the sums one query over the hourly
rollups gives, from about a third of the rows. Only without filters: the daily rows carry no
provider, model, operation or API key. With an event store that keeps the sums by end user
itself (`usage.user_sums`), both are asked of it instead."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import BigIntegerField, QuerySet, Sum
from django.db.models.functions import Cast, Coalesce, TruncDay

from costmon.core.models import Tenant
from costmon.core.periods import TimeRange, local_midnight
from usage.kept_metrics import int_rows
from usage.models import EndUserDailyRollup, HourlyRollup
from usage.rollups import day_of
from usage.user_sums import kept_by_store, user_sums

DAY = timedelta(days=1)


def whole_days(start: datetime, end: datetime) -> tuple[datetime, datetime] | None:
    """(first, end) UTC midnights of the whole UTC days in [start, end), or None."""
    first = day_of(start)
    if first < start:
        first += DAY
    last = day_of(end)
    return (first, last) if first < last else None


def end_user_sums(
    tenant: Tenant, start: datetime, end: datetime, names: tuple[str, ...]
) -> dict[int, list[int]]:
    """The sums `names` per end user id of the tenant's usage in [start, end)."""
    if kept_by_store():
        return {
            g.key[0]: [g.sums[name] for name in names]  # type: ignore[misc]
            for g in user_sums(tenant, start, end)
        }
    # As bigint: PostgreSQL sums bigints as numeric, which reads back as a Decimal per value.
    sums: dict[str, Any] = {name: Cast(Coalesce(Sum(name), 0), BigIntegerField()) for name in names}
    days = whole_days(start.astimezone(UTC), end.astimezone(UTC))
    parts: list[QuerySet[Any]] = []
    if days is None:
        parts.append(HourlyRollup.objects.for_tenant(tenant).filter(hour__gte=start, hour__lt=end))
    else:
        parts.append(
            EndUserDailyRollup.objects.for_tenant(tenant).filter(day__gte=days[0], day__lt=days[1])
        )
        for edge_start, edge_end in ((start, days[0]), (days[1], end)):
            if edge_start < edge_end:
                parts.append(
                    HourlyRollup.objects.for_tenant(tenant).filter(
                        hour__gte=edge_start, hour__lt=edge_end
                    )
                )
    found: dict[int, list[int]] = {}
    for rows in parts:
        for pk, *values in int_rows(rows.values_list("end_user_id").annotate(**sums).order_by()):
            acc = found.get(pk)
            if acc is None:
                found[pk] = values
            else:
                for i, v in enumerate(values):
                    acc[i] += v
    return found


def end_user_day_costs(
    tenant: Tenant, tr: TimeRange, ids: Sequence[int]
) -> dict[tuple[datetime, int], list[int]] | None:
    """Spend per local day (of `tr.tz`) and end user among `ids` in `tr`, keyed as `TruncDay`
    keys the hourly rows; None unless every whole UTC day of the range is a local day too (UTC
    and zones at UTC's offset throughout): elsewhere a local day holds parts of two."""
    if kept_by_store():
        wanted = set(ids)
        return {
            (g.bucket, g.key[0]): [g.sums["cost_nanos"]]  # type: ignore[misc]
            for g in user_sums(tenant, tr.start, tr.end, bucket="day", tz=tr.tz)
            if g.key[0] in wanted
        }
    days = whole_days(tr.start.astimezone(UTC), tr.end.astimezone(UTC))
    if days is None:
        return None
    day = days[0]
    while day <= days[1]:
        if local_midnight(day.astimezone(tr.tz).date(), tr.tz) != day:
            return None
        day += DAY
    found: dict[tuple[datetime, int], list[int]] = {}
    daily = (
        EndUserDailyRollup.objects.for_tenant(tenant)
        .filter(day__gte=days[0], day__lt=days[1], end_user_id__in=ids)
        .values_list("day", "end_user_id")
        .annotate(cost=Coalesce(Sum("cost_nanos"), 0))
        .order_by()
    )
    for day, pk, cost in daily:
        found[(day.astimezone(tr.tz), pk)] = [int(cost)]
    for start, end in ((tr.start, days[0]), (days[1], tr.end)):
        if start < end:
            hourly = (
                HourlyRollup.objects.for_tenant(tenant)
                .filter(hour__gte=start, hour__lt=end, end_user_id__in=ids)
                .annotate(bucket=TruncDay("hour", tzinfo=tr.tz))
                .values_list("bucket", "end_user_id")
                .annotate(cost=Coalesce(Sum("cost_nanos"), 0))
                .order_by()
            )
            for bucket, pk, cost in hourly:
                acc = found.setdefault((bucket, pk), [0])
                acc[0] += int(cost)
    return found
