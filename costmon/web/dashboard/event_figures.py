"""The overview's figures that the rollups cannot answer (a tag filter, an end user with a
tag), summed by the configured event store (`usage.eventstore`: PostgreSQL or ClickHouse); and,
with a store that keeps the sums by end user itself, those about end users (`users_in_store`),
asked of it as the hourly rollups would answer them (`usage.user_sums`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any

from costmon.core.models import Tenant
from costmon.core.periods import TimeRange
from costmon.web.dashboard.families import family_ids
from usage.event_queries import UsageFilters
from usage.event_sums import add_sums, event_groups, tag_sets
from usage.eventstore.base import EventSums
from usage.user_sums import kept_by_store, user_sums


def event_sums(
    tenant: Tenant,
    tr: TimeRange,
    filters: UsageFilters,
    *,
    by: Sequence[str] = (),
    bucket: str | None = None,
    families: bool = False,
) -> list[EventSums]:
    """The matching events summed by the event store per `by` and `bucket`; a model family
    filter groups by model too and keeps the family's (a few names) before summing again.
    Without a tag (filter or grouping), as the hourly rollups sum them (`usage.user_sums`)."""
    if filters.tag is None and "tag_set" not in by:
        groups_of: Any = partial(user_sums, tenant, tr.start, tr.end, tz=tr.tz)
    else:
        groups_of = partial(event_groups, tenant=tenant, time_range=tr)
    if not (families and filters.model is not None):
        return list(groups_of(filters=filters, by=by, bucket=bucket))
    ids = set(family_ids(tenant, filters.model))
    groups = groups_of(filters=replace(filters, model=None), by=(*by, "model"), bucket=bucket)
    merged: dict[tuple[Any, ...], dict[str, int]] = {}
    for g in groups:
        if g.key[-1] in ids:
            add_sums(merged.setdefault((g.key[:-1], g.bucket), {}), g.sums)
    return [EventSums(key=key, bucket=b, sums=sums) for (key, b), sums in merged.items()]


def users_in_store(filters: UsageFilters, by_end_user: bool = False) -> bool:
    """Whether figures are summed here rather than from PostgreSQL's rollups: a tag filter, or
    end users (a filter, or `by_end_user`) with a store that keeps their sums."""
    if filters.tag is not None:
        return True
    return (by_end_user or filters.end_user is not None) and kept_by_store()


def tag_event_sums(
    tenant: Tenant,
    tr: TimeRange,
    filters: UsageFilters,
    name: str,
    families: bool,
    bucket: str | None = None,
) -> dict[tuple[datetime | None, str], dict[str, int]]:
    """The events carrying tag `name` summed per (bucket, value) by the event store: per tag
    set, each set then read under its value of `name` (sets without it left out)."""
    groups = event_sums(tenant, tr, filters, by=("tag_set",), bucket=bucket, families=families)
    sets = tag_sets(tenant, [g.key[0] for g in groups])
    out: dict[tuple[datetime | None, str], dict[str, int]] = {}
    for g in groups:
        value = sets.get(g.key[0] or 0, {}).get(name)
        if value is not None:
            add_sums(out.setdefault((g.bucket, value), {}), g.sums)
    return out
