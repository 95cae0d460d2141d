"""Periods: the one home of calendar windows in a tenant's time zone, of the ranges people and
the API ask for, and of projecting spend to a period's end.

Calendar periods are wall-clock periods of the tenant's zone (a day is a calendar day across
daylight-saving changes; a week starts on Monday); stored times are UTC.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from costmon.core.exceptions import DomainError
from costmon.core.inputs import impossible_date_reason
from costmon.core.models import Tenant

# Ranges are read between these: no event can be older (ingest refuses them), and dates near
# year 9999 cannot have a day added.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
CALENDAR_PERIODS = ("day", "week", "month")
# The dashboard's presets: the calendar day and month, and the last N hours or days.
RECENT_PERIODS = ("today", "48h", "7d", "30d", "month")
MAX_RANGE_DAYS = 800


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime  # exclusive
    period: str  # day, week, month, a dashboard preset, or custom
    tz: zoneinfo.ZoneInfo

    def previous(self) -> TimeRange:
        """The equal period just before: the previous calendar day, week or month, or the
        same length of time before a custom range."""
        tz = self.tz
        if self.period in ("day", "today", "week", "month"):
            first = self.start.astimezone(tz).date()
            before = first - timedelta(days=1)
            period = "day" if self.period == "today" else self.period
            first_before, _ = calendar_bounds(period, before)
            return replace(
                self, start=local_midnight(first_before, tz), end=self.start, period=self.period
            )
        return replace(self, start=self.start - (self.end - self.start), end=self.start)


def tenant_zone(tenant: Tenant) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(tenant.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def local_midnight(day: date, tz: tzinfo) -> datetime:
    """The start of a local calendar day, in UTC."""
    return datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)


def calendar_bounds(
    period: str, today: date, *, rolling_days: int | None = None
) -> tuple[date, date]:
    """(first day, the day after the last) of the calendar day, week (from Monday), month or
    rolling window of `rolling_days` ending today that holds `today`."""
    if period == "day":
        return today, today + timedelta(days=1)
    if period == "week":
        first = today - timedelta(days=today.weekday())
        return first, first + timedelta(days=7)
    if period == "month":
        first = today.replace(day=1)
        after = (
            first.replace(year=first.year + 1, month=1)
            if first.month == 12
            else first.replace(month=first.month + 1)
        )
        return first, after
    if period == "rolling":
        span = rolling_days or 1
        return today - timedelta(days=span - 1), today + timedelta(days=1)
    raise ValueError(f"unknown period {period!r}")


def period_range(*, tenant: Tenant, period: str, now: datetime | None = None) -> TimeRange:
    """The current calendar day, week or month in the tenant's time zone."""
    if period not in CALENDAR_PERIODS:
        raise DomainError(
            f"Unknown period {period!r}; use day, week or month (or start and end).", field="period"
        )
    tz = tenant_zone(tenant)
    first, after = calendar_bounds(period, (now or timezone.now()).astimezone(tz).date())
    return TimeRange(local_midnight(first, tz), local_midnight(after, tz), period, tz)


def recent_range(*, tenant: Tenant, period: str, now: datetime | None = None) -> TimeRange:
    """A dashboard preset: `today` and `month` (calendar), `48h` (whole hours up to the current
    one), `7d` and `30d` (whole local days, today included)."""
    now = now or timezone.now()
    tz = tenant_zone(tenant)
    if period == "today":
        return replace(period_range(tenant=tenant, period="day", now=now), period=period)
    if period == "month":
        return period_range(tenant=tenant, period="month", now=now)
    if period == "48h":
        end = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        return TimeRange(end - timedelta(hours=48), end, period, tz)
    if period in ("7d", "30d"):
        today = now.astimezone(tz).date()
        first = today - timedelta(days=int(period[:-1]) - 1)
        return TimeRange(
            local_midnight(first, tz), local_midnight(today + timedelta(days=1), tz), period, tz
        )
    raise DomainError(
        f"Unknown period {period!r}; use {', '.join(RECENT_PERIODS)}.", field="period"
    )


def is_date_only(value: str) -> bool:
    return len(value.strip()) == 10 and parse_date(value.strip()) is not None


def parse_moment(value: str, *, tz: tzinfo, name: str) -> datetime:
    """A date (midnight in the tenant's zone) or an ISO 8601 date-time (naive: tenant's zone)."""
    value = value.strip()
    problem = ""
    try:
        parsed = (
            datetime.combine(parse_date(value), time(), tzinfo=tz)  # type: ignore[arg-type]
            if is_date_only(value)
            else parse_datetime(value)
        )
    except ValueError as exc:  # well-formed but impossible: 2026-02-30, second 60, +25:00
        parsed, problem = None, f" ({value} is not one: {impossible_date_reason(exc)})"
    if parsed is None:
        raise DomainError(
            f"{name} must be a date (2026-11-01) or an ISO 8601 date-time{problem}.", field=name
        )
    if not EARLIEST.year <= parsed.year < LATEST.year:
        raise DomainError(
            f"{name} must be between {EARLIEST:%Y-%m-%d} and {LATEST.year - 1}-12-31.", field=name
        )
    if timezone.is_naive(parsed):
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(UTC)


def custom_range(*, tenant: Tenant, start: str, end: str | None) -> TimeRange:
    """start and end as people write them: a date as end includes that whole local day."""
    tz = tenant_zone(tenant)
    start_at = parse_moment(start, tz=tz, name="start")
    if end:
        end_at = parse_moment(end, tz=tz, name="end")
        if is_date_only(end):
            end_at = local_midnight(end_at.astimezone(tz).date() + timedelta(days=1), tz)
    else:
        end_at = timezone.now()
    if end_at <= start_at:
        raise DomainError("end must be after start.", field="end")
    if end_at - start_at > timedelta(days=MAX_RANGE_DAYS):
        raise DomainError(f"A range may span at most {MAX_RANGE_DAYS} days.", field="end")
    return TimeRange(start_at, end_at, "custom", tz)


def project(spent_nanos: int, *, start: datetime, end: datetime, now: datetime) -> int:
    """Spend so far carried on at the same pace to `end`, in integer arithmetic (exact to the
    microsecond of elapsed time; never a float)."""
    step = timedelta(microseconds=1)
    elapsed = (min(max(now, start), end) - start) // step
    if elapsed <= 0:
        return spent_nanos
    return spent_nanos * ((end - start) // step) // elapsed


def elapsed_share(*, start: datetime, end: datetime, now: datetime) -> tuple[int, int]:
    """(elapsed, total) microseconds of [start, end) at `now`, for exact comparisons."""
    step = timedelta(microseconds=1)
    return (min(max(now, start), end) - start) // step, (end - start) // step
