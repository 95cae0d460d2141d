"""Budget periods as calendar windows in the tenant's time zone. Pure functions."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo


@dataclass(frozen=True)
class Window:
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive: when the budget resets
    days: tuple[date, ...]  # the tenant's local days from start up to today
    buckets: tuple[str, ...]  # the counter hashes whose sum is the window's spend

    @functools.cached_property
    def key(self) -> str:
        """Names this period instance (reservations live under it)."""
        return self.days[0].strftime("%Y%m%d")


def _midnight(day: date, tz: tzinfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)


def budget_window(*, period: str, rolling_days: int | None, now: datetime, tz: tzinfo) -> Window:
    return _window(period, rolling_days, now.astimezone(tz).date(), tz)


# A window depends only on the local day: every check of a day shares one (checks are hot).
@functools.lru_cache(maxsize=1024)
def _window(period: str, rolling_days: int | None, today: date, tz: tzinfo) -> Window:
    if period == "day":
        first, after = today, today + timedelta(days=1)
    elif period == "week":
        first = today - timedelta(days=today.weekday())
        after = first + timedelta(days=7)
    elif period == "month":
        first = today.replace(day=1)
        after = (
            first.replace(year=first.year + 1, month=1)
            if first.month == 12
            else first.replace(month=first.month + 1)
        )
    elif period == "rolling":
        span = rolling_days or 1
        first, after = today - timedelta(days=span - 1), today + timedelta(days=1)
    else:
        raise ValueError(f"unknown period {period!r}")
    days = tuple(first + timedelta(days=i) for i in range((today - first).days + 1))
    # Calendar periods have a hash of their own (one read); a rolling window sums its days.
    if period == "day":
        buckets: tuple[str, ...] = (day_bucket(today),)
    elif period == "week":
        buckets = (week_bucket(today),)
    elif period == "month":
        buckets = (month_bucket(today),)
    else:
        buckets = tuple(day_bucket(d) for d in days)
    return Window(start=_midnight(first, tz), end=_midnight(after, tz), days=days, buckets=buckets)


def day_bucket(day: date) -> str:
    return f"d:{day:%Y%m%d}"


def week_bucket(day: date) -> str:
    return f"w:{day - timedelta(days=day.weekday()):%Y%m%d}"


def month_bucket(day: date) -> str:
    return f"m:{day:%Y%m}"


def buckets_of_day(day: date) -> tuple[str, str, str]:
    """Every hash an event of this local day adds to."""
    return day_bucket(day), week_bucket(day), month_bucket(day)


def elapsed_fraction(window: Window, now: datetime) -> float:
    total = (window.end - window.start).total_seconds()
    return min(1.0, max(0.0, (now - window.start).total_seconds() / total))
