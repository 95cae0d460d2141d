"""Sums by end user and API key when the event store keeps them itself
(`EventStore.keeps_user_rollups`: PostgreSQL then keeps only the rollups without end user and
key), asked of the store (`EventStore.event_sums`) as the full hourly rollups would answer them.

The hourly rollups hold whole UTC hours: a range takes the hours that start in it, and a bucket
(an hour or a day of a time zone) takes each hour by the moment it starts, so a zone whose
offset is not whole hours (Asia/Kolkata) sees each UTC hour on one local day. `user_sums` gives
exactly those figures: the range rounded up to whole UTC hours, the store asked per UTC hour and
the hours placed here, unless every offset of the range is whole hours (most zones), when the
store's own hours and days of the zone are the same buckets.

With the PostgreSQL store the callers keep reading `HourlyRollup` and `EndUserDailyRollup`
(tuned paths, unchanged); `kept_by_store` says which applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.db.models import Sum

from costmon.core.models import Tenant
from costmon.core.periods import TimeRange
from usage.event_queries import UsageFilters
from usage.event_sums import add_sums, dimension_names, event_groups
from usage.eventstore.base import EventSums, no_sums
from usage.eventstore.current import event_store
from usage.models import HourlyRollup

HOUR = timedelta(hours=1)
UTC_ZONE = ZoneInfo("UTC")


def kept_by_store() -> bool:
    """Whether sums by end user or API key are asked of the event store (not `HourlyRollup`)."""
    return event_store().keeps_user_rollups


def hour_ceiling(moment: datetime) -> datetime:
    """The first UTC hour starting at or after `moment` (the first rollup hour a range holds)."""
    at = moment.astimezone(UTC)
    floor = at.replace(minute=0, second=0, microsecond=0)
    return floor if floor == at else floor + HOUR


def whole_hour_offsets(tz: ZoneInfo | None, start: datetime, end: datetime) -> bool:
    """Whether the zone's offset is whole hours throughout [start, end): checked twice a day
    over a month, weekly over longer spans (no zone keeps a part-hour offset for less than
    months, as Lord Howe's summer half hour)."""
    if tz is None or end <= start or getattr(tz, "key", None) == "UTC":
        return True
    step = timedelta(hours=12) if end - start <= timedelta(days=31) else timedelta(days=7)
    moment = start
    while True:
        offset = moment.astimezone(tz).utcoffset()
        if offset is not None and offset % HOUR:
            return False
        if moment >= end:
            return True
        moment = min(end, moment + step)


def _placed(hour: datetime, bucket: str, tz: ZoneInfo) -> datetime:
    """The bucket of the zone a UTC hour falls in by its start (as TruncHour/TruncDay of the
    rollup's hour)."""
    local = hour.astimezone(tz)
    if bucket == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    return datetime.combine(local.date(), time(), tzinfo=tz)


def user_sums(
    tenant: Tenant,
    start: datetime,
    end: datetime,
    *,
    by: Sequence[str] = ("end_user",),
    filters: UsageFilters | None = None,
    bucket: str | None = None,
    tz: ZoneInfo | None = None,
) -> list[EventSums]:
    """The sums of the tenant's hours starting in [start, end), matching `filters`, per value
    of `by` (`GROUP_COLUMNS`) and per `bucket` ("hour" or "day" of `tz`), from the event
    store: what the full hourly rollups would give. Groups without calls are absent."""
    zone = tz or UTC_ZONE
    first, last = hour_ceiling(start), hour_ceiling(end)
    if last <= first:
        return []
    same_buckets = bucket is None or whole_hour_offsets(zone, first, last)
    tr = TimeRange(first, last, "custom", zone if same_buckets else UTC_ZONE)
    groups = event_groups(
        tenant=tenant,
        time_range=tr,
        filters=filters,
        by=by,
        bucket=bucket if same_buckets else "hour",
    )
    if same_buckets or bucket is None:
        return groups
    merged: dict[tuple[tuple[int | None, ...], datetime], dict[str, int]] = {}
    for g in groups:
        assert g.bucket is not None
        add_sums(merged.setdefault((g.key, _placed(g.bucket, bucket, zone)), no_sums()), g.sums)
    return [EventSums(key=key, bucket=at, sums=sums) for (key, at), sums in merged.items()]


def user_totals(
    tenant: Tenant, start: datetime, end: datetime, filters: UsageFilters | None = None
) -> dict[str, int]:
    """The sums of the matching hours starting in [start, end) (zeros when none)."""
    groups = user_sums(tenant, start, end, by=(), filters=filters)
    return groups[0].sums if groups else no_sums()


def key_cost(tenant: Tenant, start: datetime, end: datetime, api_key_id: int | None) -> int:
    """The spend through one API key in the hours starting in [start, end)."""
    if api_key_id is None:
        return 0
    groups = user_sums(tenant, start, end, by=("api_key",))
    return sum(g.sums["cost_nanos"] for g in groups if g.key[0] == api_key_id)


def named_user_costs(tenant: Tenant, start: datetime, end: datetime) -> list[tuple[str, int]]:
    """(name, spend) of each named end user in the hours starting in [start, end), from
    whichever source keeps the sums by end user."""
    if not kept_by_store():
        return [
            (str(name), int(cost))
            for name, cost in HourlyRollup.objects.for_tenant(tenant)
            .filter(hour__gte=start, hour__lt=end)
            .exclude(end_user__value="")
            .values_list("end_user__value")
            .annotate(cost=Sum("cost_nanos"))
        ]
    groups = user_sums(tenant, start, end)
    names = dimension_names(tenant, (g.key[0] for g in groups))
    return [
        (names[pk], g.sums["cost_nanos"])
        for g in groups
        if (pk := g.key[0]) is not None and names.get(pk)
    ]
