"""Budget periods: the calendar windows of `costmon.core.periods` with the counter hashes
whose sum is a window's spend. Pure functions."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo

from costmon.core.periods import calendar_bounds, local_midnight


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


def budget_window(*, period: str, rolling_days: int | None, now: datetime, tz: tzinfo) -> Window:
    return _window(period, rolling_days, now.astimezone(tz).date(), tz)


# A window depends only on the local day: every check of a day shares one (checks are hot).
@functools.lru_cache(maxsize=1024)
def _window(period: str, rolling_days: int | None, today: date, tz: tzinfo) -> Window:
    first, after = calendar_bounds(period, today, rolling_days=rolling_days)
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
    return Window(
        start=local_midnight(first, tz), end=local_midnight(after, tz), days=days, buckets=buckets
    )


def day_bucket(day: date) -> str:
    return f"d:{day:%Y%m%d}"


def week_bucket(day: date) -> str:
    return f"w:{day - timedelta(days=day.weekday()):%Y%m%d}"


def month_bucket(day: date) -> str:
    return f"m:{day:%Y%m}"


def buckets_of_day(day: date) -> tuple[str, str, str]:
    """Every hash an event of this local day adds to."""
    return day_bucket(day), week_bucket(day), month_bucket(day)
