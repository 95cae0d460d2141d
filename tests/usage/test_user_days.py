"""The daily sums by end user (`EndUserDailyRollup`) stay equal to the hourly rollups summed
per UTC day through every path that writes usage, and the overview's end users table and
top-users series read from them exactly what the hourly rollups give, at any zone's edges."""

from __future__ import annotations

import importlib
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.db import connection, transaction
from django.db.models import Sum
from django.db.models.functions import TruncDay

from costmon.core.periods import TimeRange, local_midnight
from costmon.core.tenancy import tenant_context, unscoped
from tests.helpers import event, post_usage
from usage.bulk import usage_bulk_load
from usage.demo import demo_events
from usage.maintenance import usage_events_delete, usage_reprice, usage_tenant_reset
from usage.models import EndUserDailyRollup, HourlyRollup, ModelPrice, UsageEvent
from usage.rollups import ROLLUP_SUMS, day_of
from usage.user_days import end_user_day_costs, end_user_sums

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
NOW = "2026-11-21T12:00:00Z"
Rows = dict[tuple[Any, ...], tuple[int, ...]]


@pytest.fixture(autouse=True)
def _frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


def daily_rows(tenant) -> Rows:
    with unscoped():
        rows = EndUserDailyRollup.objects.for_tenant(tenant).values_list(
            "day", "end_user_id", *ROLLUP_SUMS
        )
        return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def hourly_by_day(tenant) -> Rows:
    folded: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * len(ROLLUP_SUMS))
    with unscoped():
        rows = list(
            HourlyRollup.objects.for_tenant(tenant).values_list("hour", "end_user_id", *ROLLUP_SUMS)
        )
    for hour, end_user_id, *values in rows:
        acc = folded[(day_of(hour), end_user_id)]
        for i, v in enumerate(values):
            acc[i] += v
    return {k: tuple(v) for k, v in folded.items()}


def assert_equal(tenant) -> Rows:
    rows = daily_rows(tenant)
    assert rows == hourly_by_day(tenant)
    return rows


CALLS, COST = ROLLUP_SUMS.index("calls"), ROLLUP_SUMS.index("cost_nanos")


def across_midnight(count: int = 24, prefix: str = "e") -> list[dict[str, Any]]:
    """Events on both sides of 2026-11-20's UTC midnight, three end users."""
    return [
        event(
            event_id=f"{prefix}{i}",
            occurred_at=f"2026-11-{19 + i % 2}T{23 if i % 2 == 0 else 0:02d}:{i:02d}:00Z",
            end_user=f"u{i % 3}",
            provider="anthropic" if i % 4 < 2 else "openai",
            model="claude-haiku-4-5" if i % 4 < 2 else "gpt-4o",
            latency_ms=100 + i,
        )
        for i in range(count)
    ]


def test_ingest_single_batch_resent_and_late_events_keep_the_days_equal(
    ingest_client, outsider_client, acme, outsider
):
    assert post_usage(ingest_client, across_midnight()).status_code == 201
    assert post_usage(ingest_client, across_midnight()).status_code == 201  # resent: once
    assert post_usage(ingest_client, event(event_id="single", end_user="u0")).status_code == 201
    late = event(event_id="late", occurred_at="2026-10-01T05:00:00Z", end_user="u1")
    assert post_usage(ingest_client, late).status_code == 201
    assert post_usage(outsider_client, event(event_id="g1", end_user="ceo")).status_code == 201
    rows = assert_equal(acme)
    days = {day for day, _ in rows}
    assert days == {
        datetime(2026, 10, 1, tzinfo=UTC),
        datetime(2026, 11, 19, tzinfo=UTC),
        datetime(2026, 11, 20, tzinfo=UTC),
    }
    assert sum(r[CALLS] for r in rows.values()) == 26
    # 14 haiku calls at $0.00135 (12 of the batch, the single and the late one), 12 gpt-4o at
    # $0.002925.
    assert sum(r[COST] for r in rows.values()) == 14 * 1_350_000 + 12 * 2_925_000
    assert sum(r[ROLLUP_SUMS.index("latency_count")] for r in rows.values()) == 24
    # The outsider's rows are its own; acme's are not among them.
    assert [r[CALLS] for r in assert_equal(outsider).values()] == [1]


def test_repricing_and_deletes_sum_the_days_again(ingest_client, outsider_client, acme, outsider):
    assert post_usage(ingest_client, across_midnight()).status_code == 201
    assert post_usage(outsider_client, event(event_id="g1", end_user="ceo")).status_code == 201
    outsider_before = daily_rows(outsider)
    with unscoped():
        haiku = ModelPrice.objects.unscoped().get(model="claude-haiku-4-5")
        haiku.output_per_mtok = Decimal(4)
        haiku.save()
    # Re-prices the hour before midnight only: that day is summed again from all its hours.
    report = usage_reprice(
        tenant=acme,
        start=datetime(2026, 11, 19, 23, tzinfo=UTC),
        end=datetime(2026, 11, 20, tzinfo=UTC),
    )
    assert report.changed == 6
    rows = assert_equal(acme)
    assert sum(r[COST] for r in rows.values()) == 6 * 1_170_000 + 6 * 1_350_000 + 12 * 2_925_000
    # Deleting every event of 2026-11-19 leaves no row of that day.
    with unscoped():
        day_19 = UsageEvent.objects.filter(tenant=acme, occurred_at__lt="2026-11-20T00:00:00Z")
        assert usage_events_delete(events=day_19) == 12
    rows = assert_equal(acme)
    assert {day for day, _ in rows} == {datetime(2026, 11, 20, tzinfo=UTC)}
    assert sum(r[CALLS] for r in rows.values()) == 12
    assert daily_rows(outsider) == outsider_before


def test_a_bulk_load_fills_the_days_and_a_reset_empties_that_tenants_only(
    ingest_client, acme, outsider
):
    events = list(demo_events(count=600, days=3, end=datetime(2026, 11, 21, tzinfo=UTC), users=20))
    assert usage_bulk_load(tenant=acme, events=events, chunk=250).inserted == 600
    before = assert_equal(acme)
    assert sum(r[CALLS] for r in before.values()) == 600
    assert usage_bulk_load(tenant=acme, events=events, chunk=250).inserted == 0
    assert assert_equal(acme) == before
    assert daily_rows(outsider) == {}
    assert usage_bulk_load(tenant=outsider, events=events[:10]).inserted == 10
    usage_tenant_reset(tenant=acme)
    assert daily_rows(acme) == {}
    assert sum(r[CALLS] for r in assert_equal(outsider).values()) == 10


def test_the_migration_backfill_sums_the_hourly_rollups(
    ingest_client, outsider_client, acme, outsider
):
    module = importlib.import_module("usage.migrations.0018_end_user_daily_rollup")
    assert post_usage(ingest_client, across_midnight()).status_code == 201
    assert post_usage(outsider_client, event(event_id="g1")).status_code == 201
    expected = (daily_rows(acme), daily_rows(outsider))
    with unscoped(), transaction.atomic():
        EndUserDailyRollup.objects.unscoped().all().delete()
        with connection.cursor() as cursor:
            cursor.execute(module.backfill_sql(connection.vendor))
    assert (daily_rows(acme), daily_rows(outsider)) == expected


# --- reads: the daily rows and the edges' hours give what the hourly rows give ---------------


def hourly_sums(tenant, start: datetime, end: datetime) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(lambda: [0] * len(ROLLUP_SUMS))
    with unscoped():
        rows = HourlyRollup.objects.for_tenant(tenant).filter(hour__gte=start, hour__lt=end)
        for end_user_id, *values in rows.values_list("end_user_id", *ROLLUP_SUMS):
            for i, v in enumerate(values):
                out[end_user_id][i] += v
    return dict(out)


def hourly_day_costs(tenant, tr: TimeRange, ids: list[int]) -> dict[Any, list[int]]:
    with unscoped():
        rows = (
            HourlyRollup.objects.for_tenant(tenant)
            .filter(hour__gte=tr.start, hour__lt=tr.end, end_user_id__in=ids)
            .annotate(bucket=TruncDay("hour", tzinfo=tr.tz))
            .values_list("bucket", "end_user_id")
            .annotate(cost=Sum("cost_nanos"))
            .order_by()
        )
        return {(bucket, pk): [int(cost)] for bucket, pk, cost in rows}


@pytest.mark.parametrize(
    "zone", ["UTC", "Asia/Kolkata", "America/New_York", "Europe/London", "Pacific/Chatham"]
)
def test_end_user_sums_match_the_hourly_rollups_at_every_zones_edges(
    ingest_client, outsider_client, acme, outsider, zone
):
    # Every three hours over six days around New York's change of offset (2026-11-01).
    events = [
        event(
            event_id=f"t{i}",
            occurred_at=(datetime(2026, 10, 29, 1, 30, tzinfo=UTC) + timedelta(hours=3 * i))
            .isoformat()
            .replace("+00:00", "Z"),
            end_user=f"u{i % 4}",
            output_tokens=100 + i,
        )
        for i in range(48)
    ]
    assert post_usage(ingest_client, events).status_code == 201
    assert post_usage(outsider_client, event(event_id="g1", occurred_at="2026-10-31T12:00:00Z"))
    tz = ZoneInfo(zone)
    with unscoped():
        ids = sorted(
            set(HourlyRollup.objects.for_tenant(acme).values_list("end_user_id", flat=True))
        )
    ranges = [
        (local_midnight(date(2026, 10, 29), tz), local_midnight(date(2026, 11, 4), tz)),
        (local_midnight(date(2026, 10, 30), tz), local_midnight(date(2026, 11, 2), tz)),
        (local_midnight(date(2026, 11, 1), tz), local_midnight(date(2026, 11, 2), tz)),
        (datetime(2026, 10, 30, 7, tzinfo=UTC), datetime(2026, 11, 1, 22, tzinfo=UTC)),
        (datetime(2026, 10, 31, 3, tzinfo=UTC), datetime(2026, 10, 31, 9, tzinfo=UTC)),
    ]
    aligned = zone in ("UTC", "Europe/London")  # at UTC's offset all those days
    for start, end in ranges:
        with tenant_context(acme):
            found = end_user_sums(acme, start, end, ROLLUP_SUMS)
            tr = TimeRange(start=start, end=end, period="custom", tz=tz)
            costs = end_user_day_costs(acme, tr, ids)
        assert found == hourly_sums(acme, start, end), (zone, start, end)
        midnights = start == local_midnight(start.astimezone(tz).date(), tz)
        if aligned and midnights and end - start >= timedelta(days=1):
            assert costs == hourly_day_costs(acme, tr, ids), (zone, start, end)
        elif not aligned and midnights:
            assert costs is None, (zone, start, end)  # read from the hourly rows instead
        elif costs is not None:
            assert costs == hourly_day_costs(acme, tr, ids), (zone, start, end)
    wide = (datetime(2026, 10, 28, tzinfo=UTC), datetime(2026, 11, 6, 5, tzinfo=UTC))
    with tenant_context(acme):
        total = end_user_sums(acme, *wide, ("calls",))
    assert sum(v[0] for v in total.values()) == 48
    # The outsider's end user is not among acme's, nor acme's in the outsider's sums.
    with tenant_context(outsider):
        theirs = end_user_sums(outsider, *wide, ("calls",))
    assert list(theirs.values()) == [[1]]
    assert not set(theirs) & set(ids)


def test_the_metrics_apis_end_user_ranking_reads_the_days_and_gives_the_hourly_figures(
    ingest_client, outsider_client, acme, outsider, settings
):
    """The metrics API by end user, its past days' sums computed from the daily rows, equals
    the same ranking summed from the hourly rows, in a zone whose days are not UTC's."""
    from django.test.utils import CaptureQueriesContext

    from usage.selectors import usage_metrics

    assert post_usage(ingest_client, across_midnight()).status_code == 201
    assert post_usage(outsider_client, event(event_id="g1", end_user="ceo")).status_code == 201
    ranges = [
        TimeRange(
            start=local_midnight(date(2026, 11, 1), tz),
            end=local_midnight(date(2026, 11, 22), tz),
            period="custom",
            tz=tz,
        )
        for tz in (ZoneInfo("UTC"), ZoneInfo("Asia/Kolkata"))
    ]
    for tr in ranges:
        with tenant_context(acme):
            plain = usage_metrics(tenant=acme, time_range=tr, group_by="end_user")
            with CaptureQueriesContext(connection) as queries:
                kept = usage_metrics(tenant=acme, time_range=tr, group_by="end_user", keep=True)
        assert kept.breakdown == plain.breakdown, tr.tz
        assert [row["key"] for row in kept.breakdown] == ["u0", "u1", "u2"]
        assert sum(row["calls"] for row in kept.breakdown) == 24
        assert any("usage_enduserdailyrollup" in q["sql"] for q in queries.captured_queries)
    with tenant_context(outsider):
        theirs = usage_metrics(tenant=outsider, time_range=ranges[0], group_by="end_user")
    assert [(row["key"], row["calls"]) for row in theirs.breakdown] == [("ceo", 1)]
