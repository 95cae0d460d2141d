"""The hourly rollups the ClickHouse store keeps itself (`usage.eventstore.chrollups`): exact
after ingest, resends, buffered events, rewrites, resets, retention, the migration and the
rebuild command; and `event_sums` answers the same from them as from the raw events. (Bulk
loads, concurrent resends and the rebalance check them too: `assert_store_rollups_exact` in
test_bulk_store, test_ingest_api and test_clickhouse_rebalance.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError

from costmon.core.periods import TimeRange
from costmon.core.tenancy import tenant_context, unscoped
from tests.clickhouse import assert_store_rollups_exact, store_rollups
from tests.helpers import event, post_usage, stored_events
from tests.usage.test_clickhouse_store import client_of
from usage.event_queries import UsageFilters
from usage.eventstore import chrollups, clickhouse, current
from usage.eventstore.base import event_query
from usage.eventstore.clickhouse import ClickHouseStore
from usage.maintenance import usage_events_delete, usage_reprice, usage_tenant_reset
from usage.models import HourlyRollup, ModelPrice
from usage.tasks import apply_retention

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.usefixtures("prices"),
    pytest.mark.clickhouse,
    pytest.mark.parametrize("store", ["ch", "ch2"], indirect=True),
]
HAIKU = 1_350_000  # 450 in x $1 + 180 out x $5 per million tokens
COST_AT = chrollups.ROLLUP_SUMS.index("cost_nanos")
CALLS_AT = chrollups.ROLLUP_SUMS.index("calls")


@pytest.fixture(autouse=True)
def _frozen_clock():
    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        yield


def spend(prefix: str, count: int, month: int = 11) -> list[dict[str, Any]]:
    """Events over days, hours, end users and models; each costs exactly (haiku or caller)."""
    return [
        event(
            event_id=f"{prefix}{i}",
            occurred_at=f"2026-{month:02d}-{1 + i % 19:02d}T{(5 * i) % 24:02d}:{i % 60:02d}:"
            f"{i % 60:02d}.{i:06d}Z",
            end_user=f"u{i % 4}",
            input_tokens=450,
            output_tokens=180,
            **({"cost_usd": f"0.00{i:04d}"} if i % 5 == 0 else {}),
        )
        for i in range(count)
    ]


def expected_cost(prefix_count: int) -> int:
    return sum(i * 1_000 if i % 5 == 0 else HAIKU for i in range(prefix_count))


def totals(tenant) -> tuple[int, int]:
    """(calls, cost in nano-dollars) of the store's rollups of the tenant."""
    held = store_rollups(tenant).values()
    return sum(v[CALLS_AT] for v in held), sum(v[COST_AT] for v in held)


def test_ingest_resends_single_events_and_a_second_key_are_counted_once(store, acme, outsider):
    first, second = client_of(acme), client_of(acme)  # two API keys: a rollup dimension
    assert post_usage(first, spend("a", 30)).status_code == 201
    assert post_usage(first, spend("a", 30)).status_code == 201  # a resend: nothing new
    assert post_usage(second, event(event_id="single")).status_code == 201
    assert post_usage(client_of(outsider), spend("o", 7)).status_code == 201
    assert totals(acme) == (31, expected_cost(30) + HAIKU)
    assert len({key[-1] for key in store_rollups(acme)}) == 2  # by API key
    assert totals(outsider) == (7, expected_cost(7))
    assert_store_rollups_exact(acme)
    assert_store_rollups_exact(outsider)


def test_buffered_events_and_their_sums_are_read_and_counted_once(store, acme, settings):
    settings.COSTMON_CLICKHOUSE_BUFFER = True
    current.forget()
    buffered = current.event_store()
    assert isinstance(buffered, ClickHouseStore) and buffered.buffered
    client = client_of(acme)
    for i in range(3):
        post_usage(client, event(event_id=f"b{i}", end_user=f"u{i}"))
    post_usage(client, event(event_id="b0"))  # a resend
    index = buffered.shard_of(acme.pk)
    waiting = buffered.connections.execute(
        index, f"SELECT count() FROM {chrollups.ROLLUPS_BUFFER} WHERE tenant_id = {acme.pk}"
    )
    assert waiting[0][0] == 3  # the sums wait in the rollups' buffer with their events
    tr = TimeRange(
        datetime(2026, 11, 20, tzinfo=UTC),
        datetime(2026, 11, 21, tzinfo=UTC),
        "day",
        ZoneInfo("UTC"),
    )
    (sums,) = buffered.event_sums(acme, event_query(time_range=tr))
    assert (sums.sums["calls"], sums.sums["cost_nanos"]) == (3, 3 * HAIKU)
    assert totals(acme) == (3, 3 * HAIKU)
    assert_store_rollups_exact(acme)


def test_rewrites_add_exact_differences(store, acme, outsider):
    post_usage(client_of(acme), spend("a", 20))
    post_usage(client_of(outsider), spend("o", 5))
    with unscoped():
        gone = [e for e in stored_events(acme) if e.event_id in ("a1", "a2")]
        assert usage_events_delete(tenant=acme, keys=[(e.event_id, e.occurred_at) for e in gone])
    assert totals(acme) == (18, expected_cost(20) - 2 * HAIKU)
    assert_store_rollups_exact(acme)
    with unscoped():
        haiku = ModelPrice.objects.unscoped().get(model="claude-haiku-4-5")
        haiku.output_per_mtok = 4  # 180,000 nano-dollars less per event
        haiku.save()
        start = datetime(2026, 11, 1, tzinfo=UTC)
        report = usage_reprice(tenant=acme, start=start, end=start + timedelta(days=30))
    assert report.changed == 14  # the haiku-priced ones still there (caller prices stay)
    assert totals(acme) == (18, expected_cost(20) - 2 * HAIKU - 14 * 180_000)
    assert_store_rollups_exact(acme)
    assert totals(outsider) == (5, expected_cost(5))


def test_a_reset_removes_the_tenants_rollups_only(store, acme, outsider):
    post_usage(client_of(acme), spend("a", 9))
    post_usage(client_of(outsider), spend("o", 4))
    usage_tenant_reset(tenant=acme)
    assert store_rollups(acme) == {}
    assert totals(outsider) == (4, expected_cost(4))


def test_retention_drops_event_months_and_keeps_their_sums(store, acme, outsider, settings):
    settings.COSTMON_RETENTION_DAYS = 30
    post_usage(client_of(acme), spend("old", 12, month=9) + spend("new", 6))
    post_usage(client_of(outsider), spend("theirs", 3, month=9))
    september = TimeRange(
        datetime(2026, 9, 1, tzinfo=UTC),
        datetime(2026, 10, 1, tzinfo=UTC),
        "month",
        ZoneInfo("UTC"),
    )
    query = event_query(time_range=september, filters=UsageFilters())
    before = store.event_sums(acme, query, by=("end_user",), bucket="day")
    assert apply_retention() == 15
    with tenant_context(acme):
        assert {e.event_id[:3] for e in stored_events(acme)} == {"new"}
    after = store.event_sums(acme, query, by=("end_user",), bucket="day")
    assert ordered(after) == ordered(before) and len(before) > 4
    assert sum(s.sums["cost_nanos"] for s in before) == expected_cost(12)
    assert totals(acme) == (18, expected_cost(12) + expected_cost(6))
    assert totals(outsider) == (3, expected_cost(3))
    # The rebuild keeps a month without events as it is.
    out = StringIO()
    call_command("clickhouse_rollups_rebuild", "--tenant", "acme", stdout=out)
    assert "1 months rebuilt, 1 kept (no events), 0 keys changed." in out.getvalue()
    assert totals(acme) == (18, expected_cost(12) + expected_cost(6))


def test_the_rebuild_repairs_sums_lost_after_their_events(store, acme, outsider, monkeypatch):
    client = client_of(acme)
    post_usage(client, spend("a", 10))
    post_usage(client_of(outsider), spend("o", 4))
    real = chrollups.rollups_insert

    def refused(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("ClickHouse went away after the events")

    monkeypatch.setattr(chrollups, "rollups_insert", refused)
    with pytest.raises(RuntimeError):
        post_usage(client, event(event_id="late", occurred_at="2026-10-03T10:00:00Z"))
    monkeypatch.setattr(chrollups, "rollups_insert", real)
    assert post_usage(client, event(event_id="late", occurred_at="2026-10-03T10:00:00Z")).json()[
        "events"
    ][0]["duplicate"]  # held: the retry adds nothing, so the sums stay missing
    assert totals(acme) == (10, expected_cost(10))
    # And a row of sums no event has (as a buffer lost with its events would leave).
    index = store.shard_of(acme.pk)
    key = next(iter(store_rollups(acme)))
    chrollups.rollups_insert(store.connections, index, {key: [1] * len(chrollups.ROLLUP_SUMS)})
    out = StringIO()
    call_command(
        "clickhouse_rollups_rebuild",
        "--tenant",
        "acme",
        "--since",
        "2026-10-01",
        "--until",
        "2026-12-01T00:00:00Z",
        stdout=out,
    )
    assert "acme 2026-10: 1 months rebuilt" in out.getvalue()  # progress per month
    assert "2 months rebuilt, 0 kept (no events), 2 keys changed." in out.getvalue()
    assert totals(acme) == (11, expected_cost(10) + HAIKU)
    assert_store_rollups_exact(acme)
    assert totals(outsider) == (4, expected_cost(4))
    out = StringIO()
    call_command("clickhouse_rollups_rebuild", stdout=out)
    assert "0 keys changed." in out.getvalue()
    for bad in (["--since", "soon"], ["--since", "2026-11-02", "--until", "2026-11-01"]):
        with pytest.raises(CommandError, match="--since"):
            call_command("clickhouse_rollups_rebuild", *bad)
    with pytest.raises(CommandError, match="No tenant"):
        call_command("clickhouse_rollups_rebuild", "--tenant", "nobody")


def ordered(found: list[Any]) -> list[Any]:
    return sorted(found, key=lambda s: (tuple(v or 0 for v in s.key), s.bucket or 0))


ZONES = ("UTC", "America/New_York", "Asia/Kolkata")


@pytest.mark.parametrize("zone", ZONES)
def test_event_sums_are_the_same_from_the_rollups_and_from_the_events(
    store, acme, outsider, zone, monkeypatch
):
    edges = [
        event(event_id=f"edge{i}", occurred_at=at, end_user="u1")
        for i, at in enumerate(
            (
                "2026-10-02T05:10:00Z",  # the first range's first hour, before its start
                "2026-10-02T05:30:00Z",  # in it, after the start
                "2026-11-19T12:20:00Z",  # its last hour, before the end
                "2026-11-19T12:50:00Z",  # after the end
            )
        )
    ]
    payload = spend("a", 60, month=10) + spend("b", 60) + edges
    assert post_usage(client_of(acme), payload).status_code == 201
    post_usage(client_of(outsider), spend("o", 9))
    tz = ZoneInfo(zone)
    ranges = [
        TimeRange(
            datetime(2026, 10, 1, tzinfo=tz), datetime(2026, 11, 21, tzinfo=tz), "custom", tz
        ),
        TimeRange(
            datetime(2026, 11, 3, 5, tzinfo=UTC),
            datetime(2026, 11, 9, 17, tzinfo=UTC),
            "custom",
            tz,
        ),
        # Parts of hours at both ends (a range ending now): those parts from the events.
        TimeRange(
            datetime(2026, 10, 2, 5, 17, 3, 123456, tzinfo=UTC),
            datetime(2026, 11, 19, 12, 34, 56, 789, tzinfo=UTC),
            "custom",
            tz,
        ),
        None,
    ]
    from_rollups = []
    real = clickhouse.rollup_event_sums
    depth = [0]

    def counted(*args: Any) -> Any:
        depth[0] += 1  # the ends of a range are asked of `event_sums` again: not counted
        try:
            found = real(*args)
        finally:
            depth[0] -= 1
        if not depth[0]:
            from_rollups.append(found is not None)
        return found

    cases = []
    for tr in ranges:
        for by in ((), ("end_user",), ("model", "api_key"), ("provider", "operation")):
            for bucket in (None, "hour", "day") if tr is not None else (None,):
                for filters in (UsageFilters(), UsageFilters(end_user="u1")):
                    cases.append((event_query(time_range=tr, filters=filters), by, bucket))
    monkeypatch.setattr(clickhouse, "rollup_event_sums", counted)
    with tenant_context(acme):
        answers = [store.event_sums(acme, q, by=by, bucket=b) for q, by, b in cases]
        monkeypatch.setattr(clickhouse, "rollup_event_sums", lambda *args: None)
        raw = [store.event_sums(acme, q, by=by, bucket=b) for q, by, b in cases]
        total = store.event_sums(acme, cases[-2][0])
        edged = event_query(time_range=ranges[2])
        parts = chrollups.rollup_event_sums(store, acme, edged, ("end_user",), None)
        assert parts is not None  # the whole hours from the rollups, the ends from the events
        assert ordered(parts) == ordered(store.event_sums(acme, edged, by=("end_user",)))
    sent = [datetime.fromisoformat(e["occurred_at"]) for e in payload]
    within = sum(ranges[2].start <= at < ranges[2].end for at in sent)
    assert sum(p.sums["calls"] for p in parts) == within
    assert [ordered(a) for a in answers] == [ordered(r) for r in raw]  # groups in any order
    assert all(answers)  # every case has events
    assert total[0].sums["cost_nanos"] == expected_cost(60) * 2 + 4 * HAIKU
    # UTC and New York (whole-hour offsets): every case from the rollups; Kolkata (+5:30): only
    # what needs no local hour or day.
    if zone == "Asia/Kolkata":
        assert not all(from_rollups) and any(from_rollups)
    else:
        assert all(from_rollups)
    # What the rollups lack goes to the events.
    for query in (
        event_query(time_range=None, status="error"),
        event_query(time_range=None, filters=UsageFilters(tag=("team", "x"))),
    ):
        assert not chrollups.answerable(query, (), None)
    assert not chrollups.answerable(event_query(time_range=None), ("session",), None)


def test_the_migration_fills_the_rollups_from_postgresql_and_adds_nothing_twice(
    store, acme, outsider, settings
):
    clickhouse_url = settings.COSTMON_EVENT_STORE_URL
    settings.COSTMON_EVENT_STORE_URL = ""  # PostgreSQL first
    current.forget()
    settings.COSTMON_RETENTION_DAYS = 30
    post_usage(client_of(acme), spend("old", 8, month=9) + spend("new", 5))
    post_usage(client_of(outsider), spend("o", 3))
    assert apply_retention() == 8  # September's events are gone, its rollups stay
    with unscoped():
        in_postgresql = sum(
            HourlyRollup.objects.for_tenant(acme).values_list("cost_nanos", flat=True)
        )
    assert in_postgresql == expected_cost(8) + expected_cost(5)
    settings.COSTMON_EVENT_STORE_URL = clickhouse_url
    current.forget()
    for _ in range(2):
        out = StringIO()
        call_command("events_migrate", "--to", "clickhouse", stdout=out)
        assert totals(acme) == (13, in_postgresql)
        assert {k[1].month for k in store_rollups(acme)} == {9, 11}
        assert totals(outsider) == (3, expected_cost(3))
    assert "The store's rollups: 0 keys changed." in out.getvalue()  # the second run
    assert_store_rollups_exact(outsider)
