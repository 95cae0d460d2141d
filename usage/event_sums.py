"""Sums over raw events, from whichever store keeps them (`usage.eventstore`): for what the
rollups cannot answer (tags with other filters, sessions, prompt hashes). Each returns figures
with names, read from PostgreSQL's dictionary and tag sets; the sums are made by the store."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from costmon.core.models import Tenant
from costmon.core.periods import LATEST, TimeRange
from usage.event_queries import UsageFilters
from usage.eventstore.base import EventSums, event_query, no_sums
from usage.eventstore.current import event_store
from usage.models import Dimension, TagSet

UTC_ZONE = ZoneInfo("UTC")


def time_range(start: datetime, end: datetime = LATEST, tz: ZoneInfo = UTC_ZONE) -> TimeRange:
    """[start, end) as a range of its own (no calendar period)."""
    return TimeRange(start, end, "custom", tz)


def event_groups(
    *,
    tenant: Tenant,
    time_range: TimeRange,
    filters: UsageFilters | None = None,
    by: Sequence[str] = (),
    bucket: str | None = None,
) -> list[EventSums]:
    """The tenant's events in the range summed per group (`EventStore.event_sums`)."""
    query = event_query(time_range=time_range, filters=filters)
    return event_store().event_sums(tenant, query, by=by, bucket=bucket)


def event_totals(
    *, tenant: Tenant, time_range: TimeRange, filters: UsageFilters | None = None
) -> dict[str, int]:
    """The rollup sums of the tenant's matching events in the range (zeros when none)."""
    groups = event_groups(tenant=tenant, time_range=time_range, filters=filters)
    return groups[0].sums if groups else no_sums()


def has_events(*, tenant: Tenant) -> bool:
    """Whether the event store keeps any event of the tenant (its newest, one row read)."""
    return bool(event_store().page(tenant, event_query(time_range=None), None, 1).events)


def dimension_names(tenant: Tenant, ids: Iterable[int | None]) -> dict[int, str]:
    """The names of dictionary ids (providers, models, end users, sessions...)."""
    wanted = {i for i in ids if i}
    if not wanted:
        return {}
    return dict(
        Dimension.objects.for_tenant(tenant).filter(pk__in=wanted).values_list("pk", "value")
    )


def tag_sets(tenant: Tenant, ids: Iterable[int | None]) -> dict[int, dict[str, str]]:
    """The tags of tag-set ids."""
    wanted = {i for i in ids if i}
    if not wanted:
        return {}
    return {
        pk: tags or {}
        for pk, tags in TagSet.objects.for_tenant(tenant)
        .filter(pk__in=wanted)
        .values_list("pk", "tags")
    }


def add_sums(into: dict[str, int], sums: dict[str, int]) -> None:
    for name, value in sums.items():
        into[name] = into.get(name, 0) + value
