"""Chargeback statements: what one end user, or everyone carrying one tag value (a customer, a
team), used in one calendar month of the tenant's time zone, by model, with the tenant's markup.

Read from the hourly rollups for an end user and from the events for a tag (tags live on events
only, as for the metrics API's tag filter), in whichever event store keeps them. Used by the dashboard's statement page and
`manage.py cost_report --statement`.

Rounding: money is integer nano-dollars. Each model line's markup is its cost x the markup
percentage / 100, rounded half-up to the nano-dollar; the statement's totals are the sums of its
lines, so every column adds up exactly.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db.models import F, Sum
from django.db.models.functions import Coalesce

from costmon.core.exceptions import DomainError
from costmon.core.models import Tenant
from costmon.core.money import format_money, format_usd
from costmon.core.periods import TimeRange, calendar_bounds, local_midnight, tenant_zone
from costmon.core.tenancy import tenant_context
from usage.event_sums import dimension_names, event_groups
from usage.models import HourlyRollup
from usage.reports import align_money, table
from usage.selectors import UsageFilters, named
from usage.user_sums import kept_by_store, user_sums

END_USER = "end_user"
SUMS = ("calls", "input_tokens", "output_tokens", "cached_input_tokens", "cost_nanos")
CSV_COLUMNS = (
    "tenant",
    "subject",
    "month",
    "provider",
    "model",
    "calls",
    "unpriced_calls",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cost_usd",
    "markup_percent",
    "markup_usd",
    "total_usd",
)
_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")
# As ingest accepts them: tag keys of 1 to 64 characters; values (end user ids) up to 255.
MAX_TAG_KEY, MAX_VALUE = 64, 255


@dataclass(frozen=True)
class Subject:
    """Whose usage a statement covers: an end user (`end_user=<id>`) or a tag value."""

    key: str  # "end_user" or a tag name
    value: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}"

    @property
    def is_end_user(self) -> bool:
        return self.key == END_USER


def parse_subject(text: str) -> Subject:
    """`end_user=<id>` or `<tag>=<value>` (e.g. `customer=acme-corp`)."""
    key, sep, value = text.strip().partition("=")
    key, value = key.strip(), value.strip()
    example = "Write it as end_user=<id> or <tag>=<value>, e.g. customer=acme-corp."
    if not sep or not key or not value:
        raise DomainError(f"Name whose statement: {text.strip()!r} is not key=value. {example}")
    if "\x00" in text:
        raise DomainError("The subject holds a NUL character (%00), which no name can hold.")
    if len(key) > MAX_TAG_KEY:
        raise DomainError(f"A tag name has at most {MAX_TAG_KEY} characters. {example}")
    if len(value) > MAX_VALUE:
        raise DomainError(f"The value after = has at most {MAX_VALUE} characters.")
    return Subject(key=key, value=value)


def parse_month(text: str) -> date:
    """A calendar month written YYYY-MM (2026-11), as its first day."""
    match = _MONTH.fullmatch(text.strip())
    if match is None or not 1 <= int(match[2]) <= 12 or not 2000 <= int(match[1]) < 2100:
        raise DomainError(
            f"{text.strip()!r} is not a month: write it as YYYY-MM, e.g. 2026-11.", field="month"
        )
    return date(int(match[1]), int(match[2]), 1)


def month_range(*, tenant: Tenant, first: date) -> TimeRange:
    """The calendar month that starts on `first`, in the tenant's time zone."""
    tz = tenant_zone(tenant)
    start, after = calendar_bounds("month", first)
    return TimeRange(local_midnight(start, tz), local_midnight(after, tz), "month", tz)


def markup_of(cost_nanos: int, percent: Decimal) -> int:
    """cost x percent / 100, rounded half-up to the nano-dollar."""
    exact = Decimal(cost_nanos) * percent / 100
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class StatementLine:
    provider: str
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cost_nanos: int
    markup_nanos: int
    unpriced_calls: int = 0  # calls with no price in the catalog: $0 here

    @property
    def total_nanos(self) -> int:
        return self.cost_nanos + self.markup_nanos


@dataclass(frozen=True)
class Statement:
    tenant: Tenant
    subject: Subject
    month: date  # its first day
    range: TimeRange
    markup_percent: Decimal
    lines: list[StatementLine]

    def total(self, name: str) -> int:
        """The sum of one column over the lines (`total_nanos` included)."""
        return sum(getattr(line, name) for line in self.lines)

    @property
    def month_label(self) -> str:
        return f"{self.month:%Y-%m}"

    @property
    def unpriced_warning(self) -> str:
        """What a reader must know when some calls had no price (they count as $0)."""
        unpriced = self.total("unpriced_calls")
        if not unpriced:
            return ""
        models = ", ".join(f"{x.provider}/{x.model}" for x in self.lines if x.unpriced_calls)
        return (
            f"{unpriced:,} call(s) had no price in the catalog and count as $0 ({models}): add "
            "their prices (admin, Model prices), re-price, and issue the statement again."
        )


def _grouped(tenant: Tenant, subject: Subject, tr: TimeRange) -> list[dict[str, Any]]:
    """The subject's sums per provider and model: an end user's from the hourly rollups, a
    tag's from the events (tags live on events only), in whichever store keeps them (an end
    user's too when the store keeps the sums by end user: `usage.user_sums`)."""
    if subject.is_end_user and kept_by_store():
        groups = user_sums(
            tenant,
            tr.start,
            tr.end,
            by=("provider", "model"),
            filters=UsageFilters(end_user=subject.value),
        )
    elif subject.is_end_user:
        rows = HourlyRollup.objects.for_tenant(tenant).filter(
            named(tenant, END_USER, subject.value), hour__gte=tr.start, hour__lt=tr.end
        )
        return [
            dict(r)
            for r in rows.values(provider_name=F("provider__value"), model_name=F("model__value"))
            .annotate(
                unpriced_calls=Coalesce(Sum("unpriced_calls"), 0),
                **{name: Coalesce(Sum(name), 0) for name in SUMS},
            )
            .order_by()
        ]
    else:
        groups = event_groups(
            tenant=tenant,
            time_range=tr,
            filters=UsageFilters(tag=(subject.key, subject.value)),
            by=("provider", "model"),
        )
    names = dimension_names(tenant, [i for g in groups for i in g.key])
    return [
        {"provider_name": names[g.key[0]], "model_name": names[g.key[1]], **g.sums}
        for g in groups
        if g.key[0] and g.key[1]
    ]


def statement_for(*, tenant: Tenant, subject: Subject, month: date) -> Statement:
    """The subject's usage in the month (by provider and model, the most expensive first)."""
    tr = month_range(tenant=tenant, first=month)
    with tenant_context(tenant):
        grouped = _grouped(tenant, subject, tr)
    grouped.sort(key=lambda r: (-int(r["cost_nanos"]), r["provider_name"], r["model_name"]))
    percent = tenant.statement_markup_percent or Decimal(0)
    lines = [
        StatementLine(
            provider=r["provider_name"],
            model=r["model_name"],
            **{name: int(r[name]) for name in SUMS},
            markup_nanos=markup_of(int(r["cost_nanos"]), percent),
            unpriced_calls=int(r["unpriced_calls"]),
        )
        for r in grouped
    ]
    return Statement(tenant, subject, month, tr, percent, lines)


# --- output: table, CSV, JSON ----------------------------------------------------------------


def percent_label(percent: Decimal) -> str:
    """15.000 -> "15%", 12.500 -> "12.5%"."""
    text = format(percent.normalize(), "f")
    return f"{text}%"


def _line_csv(st: Statement, provider: str, model: str, sums: dict[str, int]) -> dict[str, Any]:
    return {
        "tenant": st.tenant.slug,
        "subject": str(st.subject),
        "month": st.month_label,
        "provider": provider,
        "model": model,
        "calls": sums["calls"],
        "unpriced_calls": sums["unpriced_calls"],
        "input_tokens": sums["input_tokens"],
        "output_tokens": sums["output_tokens"],
        "cached_input_tokens": sums["cached_input_tokens"],
        "cost_usd": format_usd(sums["cost_nanos"]),
        "markup_percent": format(st.markup_percent.normalize(), "f"),
        "markup_usd": format_usd(sums["markup_nanos"]),
        "total_usd": format_usd(sums["total_nanos"]),
    }


_LINE_SUMS = (*SUMS, "unpriced_calls", "markup_nanos", "total_nanos")


def write_csv(statements: list[Statement], out: Any, *, line_end: str = "\r\n") -> None:
    """One row per model line, then a `total` row per statement; amounts exact (USD)."""
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator=line_end)
    writer.writeheader()
    for st in statements:
        for line in st.lines:
            sums = {name: getattr(line, name) for name in _LINE_SUMS}
            writer.writerow(_line_csv(st, line.provider, line.model, sums))
        totals = {name: st.total(name) for name in _LINE_SUMS}
        writer.writerow(_line_csv(st, "total", "", totals))


def statement_json(st: Statement) -> dict[str, Any]:
    def amounts(source: Any) -> dict[str, Any]:
        get = source if callable(source) else lambda name: getattr(source, name)
        return {
            "calls": get("calls"),
            "unpriced_calls": get("unpriced_calls"),
            "input_tokens": get("input_tokens"),
            "output_tokens": get("output_tokens"),
            "cached_input_tokens": get("cached_input_tokens"),
            "cost_usd": format_usd(get("cost_nanos")),
            "markup_usd": format_usd(get("markup_nanos")),
            "total_usd": format_usd(get("total_nanos")),
        }

    return {
        "tenant": st.tenant.slug,
        "subject": str(st.subject),
        "month": st.month_label,
        "time_zone": str(st.range.tz),
        "markup_percent": format(st.markup_percent.normalize(), "f"),
        "lines": [
            {"provider": line.provider, "model": line.model, **amounts(line)} for line in st.lines
        ],
        "total": amounts(st.total),
    }


def render_text(st: Statement) -> str:
    """The statement as aligned text, amounts exact (for the command's table format)."""
    tenant = st.tenant
    header = [
        f"Statement for {st.subject}: {tenant.slug} ({tenant.name}), {st.month:%B %Y} ({st.range.tz})",
        f"  Markup {percent_label(st.markup_percent)}",
        "",
    ]
    if not st.lines:
        return "\n".join([*header, "  (no usage)"])
    if st.unpriced_warning:
        header[-1:] = [f"  Warning: {st.unpriced_warning}", ""]
    rows = [
        [
            f"{line.provider}/{line.model}",
            format_money(line.cost_nanos, exact=True),
            f"{line.calls:,}",
            f"{line.input_tokens:,}",
            f"{line.output_tokens:,}",
            f"{line.cached_input_tokens:,}",
            format_money(line.markup_nanos, exact=True),
            format_money(line.total_nanos, exact=True),
        ]
        for line in st.lines
    ]
    rows.append(
        [
            "Total",
            format_money(st.total("cost_nanos"), exact=True),
            f"{st.total('calls'):,}",
            f"{st.total('input_tokens'):,}",
            f"{st.total('output_tokens'):,}",
            f"{st.total('cached_input_tokens'):,}",
            format_money(st.total("markup_nanos"), exact=True),
            format_money(st.total("total_nanos"), exact=True),
        ]
    )
    for column in (6, 7):  # the table aligns the cost column; these two likewise
        for row, text in zip(rows, align_money([r[column] for r in rows]), strict=True):
            row[column] = text
    headings = ["Model", "Cost", "Calls", "Input", "Output", "Cached input", "Markup", "Total"]
    return "\n".join([*header, *table(headings, rows, money=1)])
