from __future__ import annotations

from datetime import UTC, datetime

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from costmon.core import tenancy
from costmon.core.models import Tenant
from costmon.core.money import format_usd
from costmon.core.periods import period_range
from tests.helpers import event, post_usage
from usage.event_queries import event_aggregates
from usage.rollups import ROLLUP_SUMS
from usage.selectors import TagValue, UsageFilters, _filtered_events

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]

# Saturday 21 November 2026, 12:00 UTC
NOW = "2026-11-21T12:00:00Z"


@pytest.fixture(autouse=True)
def _frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def usage(ingest_client, outsider_client):
    batch = [
        # today: 2 haiku chats by u1 (one an error), 1 gpt-4o-mini summary by u2 (cache hit)
        event(
            event_id="t1",
            occurred_at="2026-11-21T09:10:00Z",
            end_user="u1",
            session_id="s1",
            tags={"team": "search"},
            latency_ms=200,
        ),
        event(
            event_id="t2",
            occurred_at="2026-11-21T11:30:00Z",
            end_user="u1",
            session_id="s1",
            status="error",
            tags={"team": "search"},
            latency_ms=400,
        ),
        event(
            event_id="t3",
            occurred_at="2026-11-21T10:00:00Z",
            provider="openai",
            model="gpt-4o-mini",
            operation="summarize",
            end_user="u2",
            input_tokens=1500,
            output_tokens=500,
            cache_hit=True,
        ),
        # earlier this week (Monday 16th) and this month (2nd), and last month
        event(
            event_id="w1",
            occurred_at="2026-11-16T08:00:00Z",
            provider="openai",
            model="gpt-4o-mini",
            operation="summarize",
            end_user="u2",
            input_tokens=1500,
            output_tokens=500,
            tags={"team": "ops"},
        ),
        event(
            event_id="m1",
            occurred_at="2026-11-02T08:00:00Z",
            provider="openai",
            model="text-embedding-3-large",
            operation="embed",
            end_user="u3",
            input_tokens=1000,
            output_tokens=0,
        ),
        event(event_id="old", occurred_at="2026-10-31T23:00:00Z", end_user="u1"),
        event(
            event_id="unpriced",
            occurred_at="2026-11-21T08:00:00Z",
            provider="newco",
            model="x-1",
            end_user="u3",
        ),
    ]
    assert post_usage(ingest_client, batch).status_code == 201
    # The outsider spends a lot, on the same names; none of it may show up in acme's figures.
    outsider = [
        event(
            event_id=f"o{i}",
            occurred_at="2026-11-21T09:00:00Z",
            end_user="u1",
            input_tokens=100_000,
            output_tokens=100_000,
        )
        for i in range(5)
    ]
    assert post_usage(outsider_client, outsider).status_code == 201


def metrics(client, query):
    response = client.get(f"/api/v1/metrics/?{query}")
    assert response.status_code == 200, response.content
    return response.json()


def test_day_totals_are_exact(read_client, usage):
    body = metrics(read_client, "period=day")
    assert (body["start"], body["end"]) == ("2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z")
    assert body["total"] == {
        "cost_usd": "0.0027",
        "calls": 4,
        "input_tokens": 450 * 3 + 1500,
        "output_tokens": 180 * 3 + 500,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cache_hits": 1,
        "cache_hit_rate": 0.25,
        "prompt_cache_rate": 0.0,
        "errors": 1,
        "error_rate": 0.25,
        "unpriced_calls": 1,
        "avg_cost_usd": "0.000675",
        "avg_latency_ms": 300,
    }


@pytest.mark.parametrize(
    ("period", "cost", "calls"),
    [("day", "0.0027", 4), ("week", "0.003225", 5), ("month", "0.003355", 6)],
)
def test_periods_are_calendar_periods(read_client, usage, period, cost, calls):
    total = metrics(read_client, f"period={period}")["total"]
    assert (total["cost_usd"], total["calls"]) == (cost, calls)


def test_a_custom_range_includes_its_end_date(read_client, usage):
    total = metrics(read_client, "start=2026-10-31&end=2026-11-02")["total"]
    assert (total["cost_usd"], total["calls"]) == ("0.00148", 2)


def test_periods_follow_the_tenants_time_zone(read_client, usage, acme):
    Tenant.objects.filter(pk=acme.pk).update(timezone="America/New_York")
    body = metrics(read_client, "period=month")
    # November in New York starts at 04:00 UTC on the 1st (EDT) and the event of 31 Oct 23:00 UTC
    # (19:00 in New York) belongs to October.
    assert body["start"] == "2026-11-01T04:00:00Z"
    assert body["end"] == "2026-12-01T05:00:00Z"
    assert body["total"]["calls"] == 6


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [
        (
            "model",
            [
                ("claude-haiku-4-5", "0.0027", 2),
                ("gpt-4o-mini", "0.000525", 2),
                ("text-embedding-3-large", "0.00013", 1),
                ("x-1", "0", 1),
            ],
        ),
        ("provider", [("anthropic", "0.0027", 2), ("openai", "0.000655", 3), ("newco", "0", 1)]),
        (
            "operation",
            [("chat", "0.0027", 3), ("summarize", "0.000525", 2), ("embed", "0.00013", 1)],
        ),
        ("end_user", [("u1", "0.0027", 2), ("u2", "0.000525", 2), ("u3", "0.00013", 2)]),
        ("session_id", [("s1", "0.0027", 2), ("", "0.000655", 4)]),
        ("tag:team", [("search", "0.0027", 2), ("ops", "0.000525", 1), ("", "0.00013", 3)]),
    ],
)
def test_breakdowns_by_each_dimension(read_client, usage, group_by, expected):
    body = metrics(read_client, f"period=month&group_by={group_by}")
    assert [(r["key"], r["cost_usd"], r["calls"]) for r in body["breakdown"]] == expected


def test_filters_narrow_totals_breakdown_and_series(read_client, usage):
    body = metrics(read_client, "period=month&provider=openai&group_by=end_user")
    assert body["total"]["cost_usd"] == "0.000655"
    assert [r["key"] for r in body["breakdown"]] == ["u2", "u3"]
    only = metrics(read_client, "period=month&end_user=u2&operation=summarize")["total"]
    assert (only["calls"], only["cost_usd"]) == (2, "0.000525")
    tagged = metrics(read_client, "period=month&tag=team:search")["total"]
    assert (tagged["calls"], tagged["cost_usd"]) == (2, "0.0027")
    assert metrics(read_client, "period=month&model=nope")["total"]["calls"] == 0


def test_metrics_that_read_events_sum_them_in_the_event_store(
    store, read_client, outsider_client, usage
):
    """Sessions, a tag filter, and tags with an end user filter are summed from the events by
    the store that keeps them; the outsider's events on the same names and tag count nowhere."""
    theirs = event(event_id="o-tag", occurred_at="2026-11-21T09:00:00Z", tags={"team": "search"})
    assert post_usage(outsider_client, [theirs | {"cost_usd": "9"}]).status_code == 201
    sessions = metrics(read_client, "period=month&group_by=session_id")["breakdown"]
    assert [(r["key"], r["cost_usd"], r["calls"]) for r in sessions] == [
        ("s1", "0.0027", 2),
        ("", "0.000655", 4),
    ]
    tagged = metrics(read_client, "period=month&tag=team:search&group_by=model")
    assert tagged["total"] == {
        "cost_usd": "0.0027",
        "calls": 2,
        "input_tokens": 900,
        "output_tokens": 360,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cache_hits": 0,
        "cache_hit_rate": 0.0,
        "prompt_cache_rate": 0.0,
        "errors": 1,
        "error_rate": 0.5,
        "unpriced_calls": 0,
        "avg_cost_usd": "0.00135",
        "avg_latency_ms": 300,
    }
    assert [(r["key"], r["cost_usd"], r["calls"]) for r in tagged["breakdown"]] == [
        ("claude-haiku-4-5", "0.0027", 2)
    ]
    assert len(tagged["series"]) == 30
    assert [(s["bucket"], s["cost_usd"], s["calls"]) for s in tagged["series"] if s["calls"]] == [
        ("2026-11-21T00:00:00+00:00", "0.0027", 2)
    ]
    hours = metrics(read_client, "period=day&tag=team:search")["series"]
    assert [(s["bucket"][11:13], s["calls"]) for s in hours if s["calls"]] == [("09", 1), ("11", 1)]
    by_tag = metrics(read_client, "period=month&end_user=u2&group_by=tag:team")["breakdown"]
    assert [(r["key"], r["cost_usd"], r["calls"]) for r in by_tag] == [
        ("ops", "0.000525", 1),
        ("", "0", 1),
    ]
    assert metrics(read_client, "period=month&tag=team:nobody")["total"]["calls"] == 0
    outsider = metrics(outsider_client, "period=month&tag=team:search&group_by=session_id")
    assert (outsider["total"]["calls"], outsider["total"]["cost_usd"]) == (1, "9")
    assert [(r["key"], r["cost_usd"]) for r in outsider["breakdown"]] == [("", "9")]


def test_the_series_has_every_bucket_including_empty_ones(read_client, usage):
    month = metrics(read_client, "period=month")["series"]
    assert len(month) == 30
    assert month[0] == {"bucket": "2026-11-01T00:00:00+00:00", "cost_usd": "0", "calls": 0}
    assert month[1] == {"bucket": "2026-11-02T00:00:00+00:00", "cost_usd": "0.00013", "calls": 1}
    assert month[20]["cost_usd"] == "0.0027"
    day = metrics(read_client, "period=day")["series"]
    assert len(day) == 24
    assert [(s["bucket"][11:13], s["calls"]) for s in day if s["calls"]] == [
        ("08", 1),
        ("09", 1),
        ("10", 1),
        ("11", 1),
    ]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("period=year", "period"),
        ("group_by=colour", "group_by"),
        ("group_by=tag:", "group_by"),
        ("start=yesterday", "start"),
        ("start=2026-11-10&end=2026-11-01", "end"),
        ("end=2026-11-10", "start"),
        ("interval=minute", "interval"),
        ("tag=team", "tag"),
        ("limit=0", "limit"),
    ],
)
def test_bad_parameters_get_a_400_naming_the_field(read_client, usage, query, field):
    response = read_client.get(f"/api/v1/metrics/?{query}")
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert response.json()["detail"]


def test_the_event_list_pages_with_a_cursor_and_filters(store, read_client, usage):
    first = read_client.get("/api/v1/usage/?limit=3").json()
    assert [e["event_id"] for e in first["results"]] == ["t2", "t3", "t1"]
    second = read_client.get(f"/api/v1/usage/?limit=3&cursor={first['next_cursor']}").json()
    assert [e["event_id"] for e in second["results"]] == ["unpriced", "w1", "m1"]
    third = read_client.get(f"/api/v1/usage/?limit=3&cursor={second['next_cursor']}").json()
    assert ([e["event_id"] for e in third["results"]], third["next_cursor"]) == (["old"], None)
    errors = read_client.get("/api/v1/usage/?status=error").json()["results"]
    assert [e["event_id"] for e in errors] == ["t2"]
    unpriced = read_client.get("/api/v1/usage/?cost_source=unpriced").json()["results"]
    assert [e["event_id"] for e in unpriced] == ["unpriced"]
    assert read_client.get("/api/v1/usage/?cursor=garbage").status_code == 400
    for query, expected in [
        ("tag=team:search", ["t2", "t1"]),
        ("session_id=s1", ["t2", "t1"]),
        ("end_user=u2&provider=openai", ["t3", "w1"]),
        ("period=week&model=gpt-4o-mini", ["t3", "w1"]),
        ("start=2026-11-02&end=2026-11-15", ["m1"]),
        ("end_user=nobody", []),
        ("tag=team:nobody", []),
    ]:
        listed = read_client.get(f"/api/v1/usage/?{query}").json()["results"]
        assert [e["event_id"] for e in listed] == expected, query


def test_the_csv_export_has_every_matching_event(store, read_client, usage):
    response = read_client.get("/api/v1/usage/?format=csv&period=month&provider=openai")
    assert response["Content-Type"].startswith("text/csv")
    lines = b"".join(response.streaming_content).decode().strip().splitlines()
    assert lines[0].startswith("event_id,occurred_at,provider,model")
    assert sorted(line.split(",")[0] for line in lines[1:]) == ["m1", "t3", "w1"]
    assert any(",0.000525,computed," in line for line in lines)


@pytest.mark.parametrize(
    "query",
    [
        "period=month",
        "period=week",
        "period=month&provider=openai",
        "period=month&model=claude-haiku-4-5",
        "period=month&operation=summarize",
        "period=month&end_user=u1",  # the tag rollups hold no end user: read from events
        "period=month&tag=team:search",  # a tag filter reads events too
        "period=month&model=nope",
    ],
)
def test_the_breakdown_by_tag_equals_the_events_grouped(
    acme, read_client, outsider_client, usage, query
):
    """group_by=tag:<name> reads the tag rollups (no event read) unless an end user or tag
    filter needs the events, with the figures of the events grouped by the tag's value."""
    theirs = event(event_id="o-tag", occurred_at="2026-11-21T09:00:00Z", tags={"team": "search"})
    assert post_usage(outsider_client, [theirs | {"cost_usd": "9"}]).status_code == 201
    params = dict(p.split("=", 1) for p in query.split("&"))
    with tenancy.tenant_context(acme):
        tr = period_range(tenant=acme, period=params.pop("period"), now=datetime.now(UTC))
        tag = tuple(params.pop("tag").split(":")) if "tag" in params else None
        events = _filtered_events(acme, tr, UsageFilters(**params, tag=tag))
        grouped = events.values(key=TagValue("team")).annotate(**event_aggregates())
        expected = sorted(
            ({**{k: int(r[k]) for k in ROLLUP_SUMS}, "key": r["key"] or ""} for r in grouped),
            key=lambda r: (-r["cost_nanos"], -r["calls"], r["key"]),
        )
    with CaptureQueriesContext(connection) as queries:
        body = metrics(read_client, f"{query}&group_by=tag:team")
    reads_events = any("usage_usageevent" in q["sql"] for q in queries.captured_queries)
    assert reads_events == ("end_user=" in query or "tag=" in query)
    assert [
        (r["key"], r["calls"], r["errors"], r["cache_hits"], r["input_tokens"], r["cost_usd"])
        for r in body["breakdown"]
    ] == [
        (
            r["key"],
            r["calls"],
            r["errors"],
            r["cache_hits"],
            r["input_tokens"],
            format_usd(r["cost_nanos"]),
        )
        for r in expected
    ]
    if "search" in [r["key"] for r in expected]:
        # The outsider's $9 call tagged search counts only in its own figures.
        assert all(r["cost_usd"] != "9" for r in body["breakdown"])
    outsider = metrics(outsider_client, "period=month&group_by=tag:team")["breakdown"]
    assert [(r["key"], r["calls"], r["cost_usd"]) for r in outsider if r["key"]] == [
        ("search", 1, "9")
    ]
