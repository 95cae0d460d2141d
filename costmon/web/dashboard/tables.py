"""Dashboard tables: what each page lists, as HTML cells and as CSV (`?export=<name>`).

Rows hold raw values (money in nano-dollars); a column's kind says how to show it: the one money
rule on the page (the exact amount in a tooltip), the exact decimal in the CSV.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from django.http import HttpResponse

from budgets.selectors import BudgetView
from costmon.core.models import Tenant
from costmon.core.money import format_money, format_usd, money_title
from costmon.web.dashboard.charts import NO_NAME
from costmon.web.dashboard.pages import BurnDown
from usage.links import shown

DASH = "\u2013"  # shown for a figure that does not exist (no calls, no end)


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    kind: str = "text"  # text, money, int, percent


@dataclass
class Table:
    name: str
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]]
    links: list[str | None] = field(default_factory=list)  # for each row's first cell
    empty: str = "Nothing in this period."
    export_url: str = ""

    def html_rows(self) -> list[list[dict[str, Any]]]:
        out = []
        for i, row in enumerate(self.rows):
            link = self.links[i] if i < len(self.links) else None
            cells = [
                {
                    "text": _html_cell(col, row.get(col.key)),
                    "href": link if n == 0 else None,
                    "kind": col.kind,
                    # Money is shown by the one rule; its exact amount is the tooltip.
                    "title": money_title(int(row[col.key]))
                    if col.kind == "money" and row.get(col.key) is not None
                    else "",
                }
                for n, col in enumerate(self.columns)
            ]
            out.append(cells)
        return out

    def csv(self) -> str:
        buffer = io.StringIO()
        # RFC 4180 line ends: the writer then quotes a name holding a carriage return too.
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow([f"{c.key}_usd" if c.kind == "money" else c.key for c in self.columns])
        for row in self.rows:
            writer.writerow([_csv_cell(col, row.get(col.key)) for col in self.columns])
        return buffer.getvalue()


def _html_cell(col: Column, value: Any) -> str:
    if value is None:
        return DASH
    if col.kind == "money":
        return format_money(int(value))
    if col.kind == "int":
        return f"{int(value):,}"
    if col.kind == "percent":
        return f"{value}%"
    return shown(str(value)) if value != "" else NO_NAME


def _csv_cell(col: Column, value: Any) -> str:
    if value is None:
        return ""
    if col.kind == "money":
        return format_usd(int(value))
    return str(value)


def csv_response(tenant: Tenant, table: Table) -> HttpResponse:
    response = HttpResponse(table.csv(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{tenant.slug}-{table.name}.csv"'
    return response


def breakdown_table(
    name: str,
    title: str,
    label: str,
    rows: list[dict[str, Any]],
    link: Callable[[str], str | None] | None = None,
) -> Table:
    shaped = [
        {
            "name": r["key"],
            "cost": r["cost_nanos"],
            "calls": r["calls"],
            "avg_cost": r["cost_nanos"] // r["calls"] if r["calls"] else None,
            "errors": r["errors"],
            "cache_hits": r["cache_hits"],
        }
        for r in rows
    ]
    return Table(
        name=name,
        title=title,
        columns=[
            Column("name", label),
            Column("cost", "Spend", "money"),
            Column("calls", "Calls", "int"),
            Column("avg_cost", "Avg per call", "money"),
            Column("errors", "Errors", "int"),
            Column("cache_hits", "Cache hits", "int"),
        ],
        rows=shaped,
        links=[link(r["key"]) if link and r["key"] else None for r in rows],
    )


def budgets_table(views: Sequence[BudgetView], link: Callable[[int], str]) -> Table:
    rows = []
    for v in views:
        spec, state = v.state.spec, v.state
        scope = v.budget.get_scope_display()
        if spec.value:
            scope = f"{scope}: {spec.value}"
        if state.end_user:
            scope = f"{scope} (top: {state.end_user})"
        rows.append(
            {
                "name": v.budget.name,
                "scope": scope,
                "period": v.budget.get_period_display(),
                "spent": state.spent,
                "limit": spec.limit_nanos,
                "percent": state.percent,
                "status": state.status,
                "projected": v.projected_nanos,
            }
        )
    return Table(
        name="budgets",
        title="Budgets",
        columns=[
            Column("name", "Budget"),
            Column("scope", "Scope"),
            Column("period", "Period"),
            Column("spent", "Spent", "money"),
            Column("limit", "Limit", "money"),
            Column("percent", "Used", "percent"),
            Column("status", "Status"),
            Column("projected", "Projected", "money"),
        ],
        rows=rows,
        links=[link(v.budget.pk) for v in views],
        empty="No budgets yet: staff add them in the admin (Budgets), or POST /api/v1/budgets/.",
    )


def alerts_table(alerts: Sequence[Any], tz: tzinfo) -> Table:
    return Table(
        name="alerts",
        title="Recent alerts",
        columns=[
            Column("first_seen", "First seen"),
            Column("severity", "Severity"),
            Column("status", "Status"),
            Column("title", "Alert"),
            Column("figure", "Figure"),
        ],
        rows=[
            {
                "first_seen": f"{a.first_seen_at.astimezone(tz):%Y-%m-%d %H:%M}",
                "severity": a.severity,
                "status": a.status,
                "title": a.title,
                "figure": a.figure,
            }
            for a in alerts
        ],
        links=[a.link or None for a in alerts],
        empty="No alerts. Staff set alert rules and channels in the admin.",
    )


def budget_days_table(burn: BurnDown, limit_nanos: int) -> Table:
    cumulative, rows = 0, []
    for day, spent in zip(burn.days, burn.daily_nanos, strict=True):
        cumulative += spent
        rows.append(
            {
                "day": day.isoformat(),
                "spent": spent,
                "cumulative": cumulative,
                "remaining": limit_nanos - cumulative,
            }
        )
    return Table(
        name="days",
        title="Spend per day",
        columns=[
            Column("day", "Day"),
            Column("spent", "Spent", "money"),
            Column("cumulative", "Cumulative", "money"),
            Column("remaining", "Remaining", "money"),
        ],
        rows=rows,
    )
