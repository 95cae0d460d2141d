"""The overview's figures that the rollups cannot answer (a tag filter, an end user with a
tag), summed by the configured event store (`usage.eventstore`: PostgreSQL or ClickHouse)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from costmon.core.models import Tenant
from costmon.core.periods import TimeRange
from costmon.web.dashboard.families import family_ids
from usage.event_queries import UsageFilters
from usage.event_sums import add_sums, event_groups, tag_sets
from usage.eventstore.base import EventSums


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
    filter groups by model too and keeps the family's (a few names) before summing again."""
    if not (families and filters.model is not None):
        return event_groups(tenant=tenant, time_range=tr, filters=filters, by=by, bucket=bucket)
    ids = set(family_ids(tenant, filters.model))
    groups = event_groups(
        tenant=tenant,
        time_range=tr,
        filters=replace(filters, model=None),
        by=(*by, "model"),
        bucket=bucket,
    )
    merged: dict[tuple[Any, ...], dict[str, int]] = {}
    for g in groups:
        if g.key[-1] in ids:
            add_sums(merged.setdefault((g.key[:-1], g.bucket), {}), g.sums)
    return [EventSums(key=key, bucket=b, sums=sums) for (key, b), sums in merged.items()]


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
