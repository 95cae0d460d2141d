"""The hour-of-week baseline: exact medians, MADs and bands, and on five generated weeks (in
America/New_York, across the end of daylight saving time on 1 November 2026) a normal pattern
that flags nothing, an injected spike that flags exactly its hour, and an outsider whose usage
changes nothing."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.test import Client

from costmon.core import tenancy
from costmon.core.models import Tenant
from costmon.core.money import format_money
from costmon.core.periods import TimeRange
from costmon.web.dashboard import charts
from costmon.web.dashboard.anomalies import hourly_band
from tests.weekly import NANOS_PER_TOKEN, record, weekly_pattern
from usage.anomalies import (
    HIGH,
    LOW,
    anomaly_band,
    baseline_of,
    hourly_totals,
    median,
    same_hour_weeks_before,
)
from usage.selectors import UsageFilters

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
TZ = "America/New_York"
NY = ZoneInfo(TZ)
FIRST_MONDAY = date(2026, 10, 12)
# Week 5, the one judged: Monday 9 to Sunday 15 November, New York time (EST, UTC-5).
WEEK5_START = datetime(2026, 11, 9, 5, tzinfo=UTC)
WEEK5_END = datetime(2026, 11, 16, 5, tzinfo=UTC)
SPIKE = datetime(2026, 11, 11, 19, tzinfo=UTC)  # Wednesday 14:00 in New York
DROP = datetime(2026, 11, 12, 15, tzinfo=UTC)  # Thursday 10:00 in New York
NIGHT = datetime(2026, 11, 10, 7, tzinfo=UTC)  # Tuesday 02:00: 1.8x usual, inside the band


@pytest.fixture(autouse=True)
def _frozen_clock() -> Any:
    with time_machine.travel("2026-11-16T12:00:00Z", tick=False):
        yield


def test_median_and_mad_are_exact():
    assert median([3, 1, 2]) == 2
    assert median([100, 120, 90, 110]) == 105
    history = [100_000_000, 120_000_000, 90_000_000, 110_000_000]
    b = baseline_of(history)
    # median 105M; deviations 5M, 15M, 15M, 5M: MAD 10M; 2 x 1.4826 x 10M = 29.652M < 105M,
    # so the band is [105M / 2, 2 x 105M].
    assert (b.median, b.mad, b.lower, b.upper, b.weeks) == (
        105_000_000,
        10_000_000,
        52_500_000,
        210_000_000,
        4,
    )


def test_a_noisy_history_widens_the_band_by_its_mad():
    # median 55; deviations 45, 45, 35, 35: MAD 40; 2 x 1.4826 x 40 = 118.608.
    b = baseline_of([10, 100, 20, 90])
    assert (b.median, b.mad, b.upper, b.lower) == (55, 40, 174, 0)  # 55 + 118.608 half-up
    assert baseline_of([10, 100, 20, 90], sensitivity=Decimal("1.5")).upper == 144  # 55 + 88.956
    # A floor keeps a silent hour (median 0) from flagging a cent.
    assert baseline_of([0, 0, 0], floor=50).upper == 50


def test_the_same_hour_of_the_week_follows_the_wall_clock_across_daylight_saving():
    # Monday 9 November 09:00 EST is 14:00 UTC; a week before, Monday 2 November 09:00 EST is also
    # 14:00 UTC; two weeks before, Monday 26 October 09:00 EDT is 13:00 UTC.
    monday_nine = datetime(2026, 11, 9, 14, tzinfo=UTC)
    assert same_hour_weeks_before(monday_nine, NY, 3) == [
        datetime(2026, 11, 2, 14, tzinfo=UTC),
        datetime(2026, 10, 26, 13, tzinfo=UTC),
        datetime(2026, 10, 19, 13, tzinfo=UTC),
    ]


@pytest.fixture
def weeks(acme: Tenant, outsider: Tenant) -> dict[datetime, int]:
    with tenancy.unscoped():
        acme.timezone = TZ
        acme.save(update_fields=["timezone"])
        pattern = weekly_pattern(tz=TZ, first_monday=FIRST_MONDAY, weeks=5)
        record(acme, pattern)
        # globex: a huge spike in acme's quietest hour of week 5, and nothing else.
        record(outsider, {datetime(2026, 11, 15, 8, tzinfo=UTC): 5_000_000}, prefix="g")
    return pattern


def band(tenant: Tenant, **options: Any) -> list[Any]:
    with tenancy.tenant_context(tenant):
        return anomaly_band(tenant=tenant, start=WEEK5_START, end=WEEK5_END, **options)


def test_a_normal_weekly_pattern_flags_nothing(weeks, acme):
    points = band(acme)
    assert len(points) == 168
    assert all(p.baseline is not None and p.baseline.weeks == 4 for p in points)
    assert [p.hour for p in points if p.flag] == []


def test_a_spike_is_high_a_missing_busy_hour_low_and_a_busy_night_inside(acme, outsider):
    with tenancy.unscoped():
        acme.timezone = TZ
        acme.save(update_fields=["timezone"])
        pattern = weekly_pattern(tz=TZ, first_monday=FIRST_MONDAY, weeks=5)
        pattern[SPIKE] = 500_000
        pattern[NIGHT] = 18_000
        pattern[DROP] = 0
        record(acme, pattern)
    points = {p.hour: p for p in band(acme)}
    assert {hour: p.flag for hour, p in points.items() if p.flag} == {SPIKE: HIGH, DROP: LOW}
    spike = points[SPIKE]
    history = sorted(pattern[h] * NANOS_PER_TOKEN for h in same_hour_weeks_before(SPIKE, NY, 4))
    assert spike.value == 500_000_000
    assert spike.baseline.median == (history[1] + history[2]) / 2
    assert spike.baseline.upper == spike.baseline.median * 2
    # 18,000 tokens at 02:00 is 1.8x the usual 10,000: inside the band.
    assert points[NIGHT].flag == "" and points[NIGHT].value == 18_000_000


def test_too_little_history_flags_nothing(acme, outsider):
    with tenancy.unscoped():
        acme.timezone = TZ
        acme.save(update_fields=["timezone"])
        # Only weeks 4 and 5: week 5's hours have one week of history, too little.
        pattern = weekly_pattern(tz=TZ, first_monday=FIRST_MONDAY + timedelta(weeks=3), weeks=2)
        pattern[SPIKE] = 5_000_000
        record(acme, pattern)
    points = band(acme)
    assert all(p.baseline is None and p.flag == "" for p in points)


def test_the_outsider_has_no_baseline_from_acmes_usage(weeks, outsider):
    points = band(outsider)
    # globex's only hour is its first: no history, no band; acme's weeks are not globex's.
    assert [p.value for p in points if p.value] == [5_000_000_000]
    assert all(p.baseline is None for p in points)


def test_hourly_totals_can_count_tokens_and_filter(weeks, acme):
    with tenancy.tenant_context(acme):
        cost = hourly_totals(tenant=acme, start=SPIKE, end=SPIKE + timedelta(hours=1))
        tokens = hourly_totals(
            tenant=acme, start=SPIKE, end=SPIKE + timedelta(hours=1), metric="tokens"
        )
        nobody = hourly_totals(
            tenant=acme,
            start=SPIKE,
            end=SPIKE + timedelta(hours=1),
            filters=UsageFilters(end_user="someone-else"),
        )
    assert cost == {SPIKE: weeks[SPIKE] * NANOS_PER_TOKEN}
    assert tokens == {SPIKE: weeks[SPIKE]}
    assert nobody == {}


def test_a_tag_filter_sums_the_tagged_events_per_hour_in_the_event_store(store, acme, outsider):
    search = {"team": "search"}
    after = SPIKE + timedelta(hours=1)
    with tenancy.unscoped():
        record(acme, {SPIKE: 500, after: 700}, prefix="s", tags=search)
        record(acme, {SPIKE: 9_000}, prefix="o", tags={"team": "ops"})
        record(acme, {after: 8_000}, prefix="n")
        record(outsider, {SPIKE: 4_000}, prefix="g", tags=search)

    def totals(tenant: Tenant, **options: Any) -> dict[datetime, int]:
        with tenancy.tenant_context(tenant):
            return hourly_totals(
                tenant=tenant, start=SPIKE, end=SPIKE + timedelta(hours=2), **options
            )

    tagged = UsageFilters(tag=("team", "search"))
    assert totals(acme, filters=tagged) == {
        SPIKE: 500 * NANOS_PER_TOKEN,
        after: 700 * NANOS_PER_TOKEN,
    }
    assert totals(acme, filters=tagged, metric="tokens") == {SPIKE: 500, after: 700}
    assert totals(acme, filters=UsageFilters(end_user="u1", tag=("team", "search"))) == {
        SPIKE: 500 * NANOS_PER_TOKEN,
        after: 700 * NANOS_PER_TOKEN,
    }
    assert totals(acme, filters=UsageFilters(end_user="u2", tag=("team", "search"))) == {}
    assert totals(outsider, filters=tagged) == {SPIKE: 4_000 * NANOS_PER_TOKEN}


# --- the dashboard's hourly chart --------------------------------------------------------------


@pytest.fixture
def spiked(acme: Tenant, outsider: Tenant) -> None:
    with tenancy.unscoped():
        acme.timezone = TZ
        acme.save(update_fields=["timezone"])
        pattern = weekly_pattern(tz=TZ, first_monday=FIRST_MONDAY, weeks=5)
        pattern[SPIKE] = 500_000
        record(acme, pattern)


def test_the_hourly_band_rows_are_in_the_tenants_time(spiked, acme):
    tr = TimeRange(SPIKE - timedelta(hours=2), SPIKE + timedelta(hours=2), "custom", NY)
    with tenancy.tenant_context(acme):
        rows = hourly_band(tenant=acme, time_range=tr, filters=UsageFilters())
    assert [(r["bucket"].hour, r["flag"]) for r in rows] == [
        (12, ""),
        (13, ""),
        (14, "high"),
        (15, ""),
    ]
    assert rows[2]["value"] == 500_000_000 and rows[2]["upper"] == 194_000_000


def test_the_chart_draws_the_band_and_rings_the_hours_outside_it():
    hours = [datetime(2026, 11, 11, h, tzinfo=NY) for h in (13, 14, 15)]
    rows = [
        {"bucket": hours[0], "value": 90, "lower": 50, "upper": 200, "flag": ""},
        {"bucket": hours[1], "value": 500, "lower": 50, "upper": 200, "flag": "high"},
        {"bucket": hours[2], "value": 0, "lower": None, "upper": None, "flag": ""},
    ]
    cells = [
        {"bucket": h, "key": "anthropic", "cost_nanos": r["value"]}
        for h, r in zip(hours, rows, strict=True)
    ]
    fig = charts.add_anomaly_band(charts.spend_by_day(cells, buckets=hours, interval="hour"), rows)
    low, band, outside = fig.data[-3:]
    assert band.fill == "tonexty" and band.name == "Usual range"
    assert list(low.y) == [5e-08, 5e-08, None]  # axis values (display only): 50 nano-dollars
    assert list(band.y) == [2e-07, 2e-07, None]
    assert [str(x) for x in outside.x] == ["2026-11-11 14:00:00"]
    assert list(outside.customdata) == [f"{format_money(500)}, above usual"]
    # No history at all: the chart stays as it was.
    plain = charts.spend_by_day(cells, buckets=hours, interval="hour")
    assert len(charts.add_anomaly_band(plain, [rows[2]]).data) == 1


def test_the_overview_shows_the_band_on_the_hourly_chart(spiked, owner):
    client = Client()
    client.force_login(owner)
    with time_machine.travel("2026-11-12T00:30:00Z", tick=False):
        page = client.get("/t/acme/", {"period": "48h"}).content.decode()
        daily = client.get("/t/acme/", {"period": "30d"}).content.decode()
    assert "Usual range" in page and "Outside the usual range" in page
    assert "Usual range" not in daily  # a day is not an hour of the week
