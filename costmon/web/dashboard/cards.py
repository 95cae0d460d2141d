"""The overview's cards: each figure by the one money rule, with its change against the
period before."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.utils import timezone

from budgets.emergency_stop import emergency_stop_active
from budgets.models import Budget, EmergencyStop
from costmon.core.models import Tenant
from costmon.core.money import format_money, money_title, usd_to_nanos
from costmon.core.periods import TimeRange, period_range, project
from costmon.web.dashboard import pages as dashboard
from costmon.web.dashboard.query import PageQuery
from costmon.web.dashboard.tables import (
    DASH,
)
from usage.selectors import UsageFilters

OUTLOOK_ON_TRACK = "on track"
OUTLOOK_AT_RISK = "at risk"
OUTLOOK_OVER = "over"


@dataclass(frozen=True)
class Cards:
    today_nanos: int
    month_nanos: int
    projected_nanos: int
    budget: Budget | None  # the tenant's monthly budget, when there is one and no filter
    budget_limit_nanos: int | None
    outlook: str | None  # on track, at risk, over
    period_nanos: int
    calls: int
    errors: int
    cache_hits: int
    unpriced_calls: int
    emergency_stop: EmergencyStop | None
    # The same figures for the periods they are compared with (`comparison_range`).
    previous_today_nanos: int = 0  # yesterday up to this time of day
    previous_month_nanos: int = 0  # the same days of last month
    last_month_nanos: int = 0  # the whole of last month, against the projection
    previous: dict[str, int] | None = None  # the selected period's comparison totals

    @property
    def avg_cost_nanos(self) -> int | None:
        return self.period_nanos // self.calls if self.calls else None

    @property
    def cache_hit_percent(self) -> Decimal | None:
        if not self.calls:
            return None
        return (Decimal(self.cache_hits) * 100 / self.calls).quantize(Decimal("0.1"))


def comparison_range(time_range: TimeRange, now: datetime) -> TimeRange:
    """What a period is compared with: a calendar day or month still running (today, this
    month) against the same stretch of the one before (yesterday to this time, the same days
    of last month, in wall-clock time and never past its end); any other range against the
    equal length of time just before it."""
    previous = time_range.previous()
    if time_range.period not in ("today", "day", "month", "week") or now >= time_range.end:
        return previous
    tz = time_range.tz

    def wall(moment: datetime) -> datetime:
        return moment.astimezone(tz).replace(tzinfo=None)

    elapsed = wall(max(now, time_range.start)) - wall(time_range.start)
    end = (wall(previous.start) + elapsed).replace(tzinfo=tz).astimezone(UTC)
    return replace(previous, end=min(end, previous.end))


def monthly_tenant_budget(*, tenant: Tenant) -> Budget | None:
    """The strictest active monthly budget on the whole tenant."""
    return (
        Budget.objects.for_tenant(tenant)
        .filter(scope=Budget.Scope.TENANT, period=Budget.Period.MONTH, is_active=True)
        .order_by("limit_usd", "pk")
        .first()
    )


def dashboard_cards(
    *,
    tenant: Tenant,
    time_range: TimeRange,
    filters: UsageFilters,
    now: datetime | None = None,
    families: bool = False,
) -> Cards:
    """Spend today and this month (with the filters), the month-end projection against the
    tenant's monthly budget (only unfiltered: a budget covers the whole tenant), and the
    selected period's calls, cache hits and unpriced events."""
    now = now or timezone.now()
    day = period_range(tenant=tenant, period="day", now=now)
    month = period_range(tenant=tenant, period="month", now=now)

    def totals(tr: TimeRange) -> dict[str, int]:
        return dashboard.usage_totals(
            tenant=tenant, time_range=tr, filters=filters, families=families
        )

    today_nanos = totals(day)["cost_nanos"]
    month_nanos = totals(month)["cost_nanos"]
    projected = project(month_nanos, start=month.start, end=month.end, now=now)
    period = totals(time_range)
    previous = totals(comparison_range(time_range, now))
    budget = monthly_tenant_budget(tenant=tenant) if filters.is_empty() else None
    limit = usd_to_nanos(budget.limit_usd) if budget is not None else None
    outlook = None
    if limit is not None:
        if month_nanos >= limit:
            outlook = OUTLOOK_OVER
        elif projected > limit:
            outlook = OUTLOOK_AT_RISK
        else:
            outlook = OUTLOOK_ON_TRACK
    return Cards(
        today_nanos=today_nanos,
        month_nanos=month_nanos,
        projected_nanos=projected,
        budget=budget,
        budget_limit_nanos=limit,
        outlook=outlook,
        period_nanos=period["cost_nanos"],
        calls=period["calls"],
        errors=period["errors"],
        cache_hits=period["cache_hits"],
        unpriced_calls=period["unpriced_calls"],
        emergency_stop=emergency_stop_active(tenant=tenant),
        previous_today_nanos=totals(comparison_range(day, now))["cost_nanos"],
        previous_month_nanos=totals(comparison_range(month, now))["cost_nanos"],
        last_month_nanos=totals(month.previous())["cost_nanos"],
        previous=previous,
    )


def money_figure(nanos: int) -> dict[str, str]:
    """A card's figure by the one money rule, the exact amount in its tooltip."""
    return {"value": format_money(nanos), "title": money_title(nanos)}


COMPARED_WITH = {
    "today": "same time yesterday",
    "month": "same days last month",
    "48h": "previous 48 hours",
    "7d": "previous 7 days",
    "30d": "previous 30 days",
}


def _compared_with(q: PageQuery) -> str:
    if q.period in COMPARED_WITH:
        return COMPARED_WITH[q.period]
    span = q.time_range.end - q.time_range.start
    if span % timedelta(days=1):
        hours = span // timedelta(hours=1)
        return f"previous {hours} hour{'s' if hours != 1 else ''}"
    days = span.days
    return f"previous {days} day{'s' if days != 1 else ''}"


def _change(
    current: int, previous: int, against: str, shown: Callable[[int], str]
) -> dict[str, str]:
    """ "+12% vs previous 30 days ($116.20)": the change in whole percent, half up, exactly."""
    then = f"vs {against} ({shown(previous)})"
    if current == previous:
        return {"change": f"no change {then}", "change_dir": ""}
    if previous == 0:
        return {"change": f"new {then}", "change_dir": "up"}
    percent = (Decimal(current - previous) * 100 / previous).quantize(
        Decimal(1), rounding=ROUND_HALF_UP
    )
    return {
        "change": f"{'+' if percent > 0 else ''}{percent}% {then}",
        "change_dir": "up" if current > previous else "down",
    }


def _rate_change(c: Cards, before: dict[str, int], against: str) -> dict[str, str]:
    """The cache hit rate's change in percentage points."""
    if not c.calls or not before["calls"]:
        return {}
    rate = Decimal(c.cache_hits) * 100 / c.calls
    then = Decimal(before["cache_hits"]) * 100 / before["calls"]
    points = (rate - then).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    shown = f"{then.quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)}%"
    if not points:
        return {"change": f"no change vs {against} ({shown})", "change_dir": ""}
    return {
        "change": f"{'+' if points > 0 else ''}{points} pts vs {against} ({shown})",
        "change_dir": "up" if points > 0 else "down",
    }


def _count(n: int) -> str:
    return f"{n:,}"


def overview_cards(c: Cards, q: PageQuery) -> list[dict[str, str]]:
    projection = "No monthly budget on the whole tenant."
    if c.budget_limit_nanos is not None and c.outlook is not None:
        projection = f"{c.outlook} against the {format_money(c.budget_limit_nanos)} monthly budget"
    elif not q.filters.is_empty():
        projection = "At the month-to-date pace, for these filters."
    before = c.previous or {}
    against = _compared_with(q)
    prev_avg = before["cost_nanos"] // before["calls"] if before.get("calls") else None

    def versus(current: int, key: str, shown: Callable[[int], str]) -> dict[str, str]:
        return _change(current, before[key], against, shown) if before else {}

    cards = [
        {
            "id": "today",
            "label": "Spend today",
            **money_figure(c.today_nanos),
            "note": "",
            **_change(c.today_nanos, c.previous_today_nanos, COMPARED_WITH["today"], format_money),
        },
        {
            "id": "month",
            "label": "Month to date",
            **money_figure(c.month_nanos),
            "note": "",
            **_change(c.month_nanos, c.previous_month_nanos, COMPARED_WITH["month"], format_money),
        },
        {
            "id": "projected",
            "label": "Projected month end",
            **money_figure(c.projected_nanos),
            "note": projection,
            "status": (c.outlook or "").replace(" ", "-"),
            **_change(c.projected_nanos, c.last_month_nanos, "last month", format_money),
        },
        {
            "id": "period",
            "label": f"Spend, {q.period_label.lower()}",
            **money_figure(c.period_nanos),
            "note": "",
            **versus(c.period_nanos, "cost_nanos", format_money),
        },
        {
            "id": "calls",
            "label": "Calls",
            "value": f"{c.calls:,}",
            "note": f"{c.errors:,} errors" if c.errors else "",
            **versus(c.calls, "calls", _count),
        },
        {
            "id": "avg",
            "label": "Average cost per call",
            **(money_figure(c.avg_cost_nanos) if c.avg_cost_nanos is not None else {"value": DASH}),
            "note": "",
            **(
                _change(c.avg_cost_nanos, prev_avg, against, format_money)
                if c.avg_cost_nanos is not None and prev_avg is not None
                else {}
            ),
        },
        {
            "id": "cache",
            "label": "Cache hit rate",
            "value": f"{c.cache_hit_percent}%" if c.cache_hit_percent is not None else DASH,
            "note": f"{c.cache_hits:,} of {c.calls:,} calls" if c.calls else "",
            **(_rate_change(c, before, against) if before else {}),
        },
        {
            "id": "unpriced",
            "label": "Unpriced events",
            "value": f"{c.unpriced_calls:,}",
            "note": "Add their prices in the admin (Model prices), then re-price."
            if c.unpriced_calls
            else "",
            "status": "at-risk" if c.unpriced_calls else "",
            **versus(c.unpriced_calls, "unpriced_calls", _count),
        },
    ]
    stop = c.emergency_stop
    cards.append(
        {
            "id": "stop",
            "label": "Emergency stop",
            "value": "ACTIVE" if stop else "off",
            "note": f"{stop.reason} (until {stop.expires_at:%Y-%m-%d %H:%M} UTC)" if stop else "",
            "status": "over" if stop else "",
        }
    )
    return cards
