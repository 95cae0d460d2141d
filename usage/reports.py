"""Cost reports: totals and breakdowns for a period, as a table, CSV or JSON.

Built from the selectors (rollups); used by `manage.py cost_report` and the daily report email.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.utils import timezone

from costmon.core.models import Tenant
from costmon.core.money import format_money, format_usd
from costmon.core.periods import TimeRange
from costmon.core.tenancy import tenant_context
from usage.api import totals_json
from usage.selectors import usage_metrics

FORMATS = ("table", "csv", "json")
TOP_END_USERS = 10
# (group_by, title, column heading); spend by day comes from the time series.
BREAKDOWNS = (
    ("provider", "By provider", "Provider"),
    ("model", "By model", "Model"),
    ("operation", "By operation", "Operation"),
    ("end_user", f"Top {TOP_END_USERS} end users", "End user"),
)
CSV_COLUMNS = (
    "section",
    "tenant",
    "start",
    "end",
    "key",
    "cost_usd",
    "share",
    "calls",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_hits",
    "cache_hit_rate",
    "errors",
    "unpriced_calls",
    "avg_cost_usd",
)


@dataclass
class TenantReport:
    tenant: Tenant
    range: TimeRange
    totals: dict[str, int]
    days: list[dict[str, Any]]  # {"bucket", "cost_nanos", "calls"}, days begun by now
    breakdowns: dict[str, list[dict[str, Any]]]  # group_by -> rows with "key" and the sums


def share(part: int, whole: int) -> Decimal | None:
    """part / whole to four places (0.3358 is 33.58%); None when there is no whole."""
    if not whole:
        return None
    return (Decimal(part) / Decimal(whole)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def build_report(*, tenant: Tenant, time_range: TimeRange) -> TenantReport:
    """One tenant's figures, every one read through `usage_metrics` (the rollups)."""
    with tenant_context(tenant):
        overall = usage_metrics(tenant=tenant, time_range=time_range, interval="day")
        breakdowns = {
            group_by: usage_metrics(
                tenant=tenant,
                time_range=time_range,
                group_by=group_by,
                interval="day",
                limit=TOP_END_USERS if group_by == "end_user" else 1000,
            ).breakdown
            for group_by, _, _ in BREAKDOWNS
        }
    now = timezone.now()
    days = [s for s in overall.series if s["bucket"] <= now]  # not the rest of this month
    return TenantReport(tenant, time_range, overall.totals, days, breakdowns)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _share_json(part: int, whole: int) -> float | None:
    value = share(part, whole)
    return float(value) if value is not None else None


def tenant_json(report: TenantReport) -> dict[str, Any]:
    """The shapes of the metrics API (`totals_json`), plus each row's share of the cost."""
    tr, total_cost = report.range, report.totals["cost_nanos"]
    document: dict[str, Any] = {
        "tenant": report.tenant.slug,
        "name": report.tenant.name,
        "start": _iso(tr.start),
        "end": _iso(tr.end),
        "period": tr.period,
        "time_zone": str(tr.tz),
        "total": totals_json(report.totals),
        "by_day": [
            {
                "day": s["bucket"].date().isoformat(),
                "cost_usd": format_usd(s["cost_nanos"]),
                "share": _share_json(s["cost_nanos"], total_cost),
                "calls": s["calls"],
            }
            for s in report.days
        ],
    }
    for group_by, _, _ in BREAKDOWNS:
        name = "top_end_users" if group_by == "end_user" else f"by_{group_by}"
        document[name] = [
            {
                "key": row["key"],
                **totals_json(row),
                "share": _share_json(row["cost_nanos"], total_cost),
            }
            for row in report.breakdowns[group_by]
        ]
    return document


def json_document(reports: list[TenantReport]) -> dict[str, Any]:
    return {"generated_at": _iso(timezone.now()), "tenants": [tenant_json(r) for r in reports]}


# --- csv ------------------------------------------------------------------------------------


def write_csv(reports: list[TenantReport], out: Any) -> None:
    """One table for every tenant; `section` says which breakdown a row belongs to."""
    writer = csv.DictWriter(_Lines(out), fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for report in reports:
        tr, total_cost = report.range, report.totals["cost_nanos"]
        base = {"tenant": report.tenant.slug, "start": _iso(tr.start), "end": _iso(tr.end)}
        writer.writerow({**base, "section": "total", "key": "", **_csv_sums(report.totals)})
        for s in report.days:
            writer.writerow(
                {
                    **base,
                    "section": "day",
                    "key": s["bucket"].date().isoformat(),
                    "cost_usd": format_usd(s["cost_nanos"]),
                    "share": _share_csv(s["cost_nanos"], total_cost),
                    "calls": s["calls"],
                }
            )
        for group_by, _, _ in BREAKDOWNS:
            for row in report.breakdowns[group_by]:
                writer.writerow(
                    {
                        **base,
                        "section": group_by,
                        "key": row["key"],
                        **_csv_sums(row),
                        "share": _share_csv(row["cost_nanos"], total_cost),
                    }
                )


def _csv_sums(sums: dict[str, Any]) -> dict[str, Any]:
    t = totals_json(sums)
    return {
        **{
            k: t[k]
            for k in (
                "cost_usd",
                "calls",
                "input_tokens",
                "output_tokens",
                "cached_input_tokens",
                "cache_hits",
                "errors",
                "unpriced_calls",
            )
        },
        "cache_hit_rate": _share_csv(t["cache_hits"], t["calls"]),
        "avg_cost_usd": t["avg_cost_usd"] or "",
    }


def _share_csv(part: int, whole: int) -> str:
    value = share(part, whole)
    return str(value) if value is not None else ""


class _Lines:
    """The csv writer's file: each finished line goes to the command's stdout as it is."""

    def __init__(self, out: Any) -> None:
        self.out = out

    def write(self, text: str) -> None:
        self.out.write(text, ending="")


# --- table ----------------------------------------------------------------------------------


def _percent(part: int, whole: int) -> str:
    value = share(part, whole)
    if value is None:
        return "-"
    return f"{(value * 100).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)}%"


def align_money(values: list[str]) -> list[str]:
    """Pad amounts so that their decimal points line up; the figures stay exact."""
    parts = [v.partition(".") for v in values]
    whole = max((len(p[0]) for p in parts), default=0)
    fraction = max((len(p[1] + p[2]) for p in parts), default=0)
    return [p[0].rjust(whole) + (p[1] + p[2]).ljust(fraction) for p in parts]


def table(headers: list[str], rows: list[list[str]], *, money: int) -> list[str]:
    """Aligned columns: the first (a name) to the left, numbers to the right, amounts on the
    decimal point (`money` is the amounts' column)."""
    columns = [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in headers]
    columns[money] = align_money(columns[money])
    widths = [max([len(h), *map(len, col)]) for h, col in zip(headers, columns, strict=True)]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        padded = [first.ljust(widths[0])]
        padded += [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        return ("  " + "  ".join(padded)).rstrip()

    return [line(headers), *(line([col[r] for col in columns]) for r in range(len(rows)))]


def describe_range(tr: TimeRange) -> str:
    start, end = tr.start.astimezone(tr.tz), tr.end.astimezone(tr.tz)
    if start.time() == time() and end.time() == time():
        last = end.date() - timedelta(days=1)
        days = str(start.date()) if last == start.date() else f"{start.date()} to {last}"
        return f"{days} ({tr.tz})"
    return f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} ({tr.tz}, end excluded)"


def render_tenant(report: TenantReport, *, exact: bool = False) -> list[str]:
    """The report as text lines. Money by the one display rule (cents from $1, three
    significant digits below); `exact` writes every amount to the nano-dollar (the
    `cost_report` command, whose CSV and JSON are exact too)."""
    totals, tenant = report.totals, report.tenant
    total_cost, calls = totals["cost_nanos"], totals["calls"]
    period = "" if report.range.period == "custom" else f"this {report.range.period}, "
    lines = [f"{tenant.slug} ({tenant.name}): {period}{describe_range(report.range)}", ""]
    summary = [
        ("Cost", format_money(total_cost, exact=exact)),
        ("Calls", f"{calls:,}"),
        ("Input tokens", f"{totals['input_tokens']:,}"),
        ("Output tokens", f"{totals['output_tokens']:,}"),
        ("Cache hit rate", _percent(totals["cache_hits"], calls)),
        ("Errors", f"{totals['errors']:,}"),
        ("Unpriced calls", f"{totals['unpriced_calls']:,}"),
        ("Avg cost per call", format_money(total_cost // calls, exact=exact) if calls else "-"),
    ]
    lines += [f"  {name:<18} {value}" for name, value in summary]

    lines += ["", "By day"]
    lines += table(
        ["Day", "Cost", "Share", "Calls"],
        [
            [
                s["bucket"].date().isoformat(),
                format_money(s["cost_nanos"], exact=exact),
                _percent(s["cost_nanos"], total_cost),
                f"{s['calls']:,}",
            ]
            for s in report.days
        ],
        money=1,
    )
    for group_by, title, heading in BREAKDOWNS:
        rows = report.breakdowns[group_by]
        lines += ["", title]
        if not rows:
            lines.append("  (no usage)")
            continue
        lines += table(
            [heading, "Cost", "Share", "Calls", "Input tokens", "Output tokens", "Errors"],
            [
                [
                    row["key"] or "(none)",
                    format_money(row["cost_nanos"], exact=exact),
                    _percent(row["cost_nanos"], total_cost),
                    f"{row['calls']:,}",
                    f"{row['input_tokens']:,}",
                    f"{row['output_tokens']:,}",
                    f"{row['errors']:,}",
                ]
                for row in rows
            ],
            money=1,
        )
    return lines


def render_table(reports: list[TenantReport], *, exact: bool = False) -> str:
    return "\n\n\n".join("\n".join(render_tenant(r, exact=exact)) for r in reports)
