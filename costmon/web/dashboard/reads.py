"""The reads of one overview or drill-down view, in one place: the page renders them and the
background warm-up (`costmon.web.dashboard.warmup`) makes them ahead of the first view, so both
ask for exactly the same kept sums (`usage.settled`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from costmon.core.models import Tenant
from costmon.web.dashboard import pages as dashboard
from costmon.web.dashboard.cards import Cards, dashboard_cards
from costmon.web.dashboard.query import TABLE_ROWS, PageQuery
from costmon.web.dashboard.tag_names import tag_names

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class TableReads:
    users: Rows
    operations: Rows
    models: Rows
    by_tag: Rows | None  # when stacked by a tag: that tag's values


@dataclass(frozen=True)
class ChartReads:
    cards: Cards
    buckets: list[datetime]
    cells: Rows
    interval: str
    heatmap: list[list[int]]
    tag_names: list[str]  # the tags the page offers to stack by


def table_reads(*, tenant: Tenant, q: PageQuery) -> TableReads:
    """The page's tables: top end users, operations and models (and the tag's values)."""
    tr, flt, families = q.time_range, q.filters, not q.split_snapshots

    def by(dimension: str) -> Rows:
        return dashboard.breakdown(
            tenant=tenant,
            time_range=tr,
            filters=flt,
            dimension=dimension,
            limit=TABLE_ROWS,
            families=families,
        )

    users, operations, models = by("end_user"), by("operation"), by("model")
    return TableReads(users, operations, models, tag_table(tenant=tenant, q=q))


def tag_table(*, tenant: Tenant, q: PageQuery) -> Rows | None:
    """When stacked by a tag, its values' table (the one table that depends on the stacking)."""
    if not q.group_by.startswith(dashboard.TAG_PREFIX):
        return None
    return dashboard.tag_breakdown(
        tenant=tenant,
        time_range=q.time_range,
        filters=q.filters,
        name=q.group_by[len(dashboard.TAG_PREFIX) :],
        limit=TABLE_ROWS,
        families=not q.split_snapshots,
    )


def stacked_series(
    *, tenant: Tenant, q: PageQuery, tables: TableReads
) -> tuple[list[datetime], Rows, str]:
    """The spend chart's buckets, cells and interval (the one chart that depends on the
    stacking)."""
    return dashboard.spend_series(
        tenant=tenant,
        time_range=q.time_range,
        filters=q.filters,
        group_by=q.group_by,
        families=not q.split_snapshots,
        # The end users table's top rows: the series need not rank every end user again.
        top=[r["key"] for r in tables.users] if q.group_by == "end_user" else None,
    )


def chart_reads(*, tenant: Tenant, q: PageQuery, tables: TableReads) -> ChartReads:
    """The page's cards, stacked spend chart, heat map and stacking choices."""
    tr, flt, families = q.time_range, q.filters, not q.split_snapshots
    cards = dashboard_cards(tenant=tenant, time_range=tr, filters=flt, now=q.now, families=families)
    buckets, cells, interval = stacked_series(tenant=tenant, q=q, tables=tables)
    heatmap = dashboard.spend_heatmap(tenant=tenant, time_range=tr, filters=flt, families=families)
    return ChartReads(
        cards=cards,
        buckets=buckets,
        cells=cells,
        interval=interval,
        heatmap=heatmap,
        tag_names=tag_names(tenant=tenant, time_range=tr),
    )
