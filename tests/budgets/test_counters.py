"""Counters: integers in Redis, rebuilt from PostgreSQL, and a fallback when Redis goes away."""

from __future__ import annotations

import io
from datetime import date
from decimal import Decimal

import pytest
from django.core.management import call_command

from budgets import counters
from budgets import redis as bredis
from budgets.emergency_stop import emergency_stop_trip
from budgets.models import CounterState
from budgets.services import budget_create
from budgets.tasks import reconcile_counters
from costmon.core.tenancy import unscoped
from tests.budgets.conftest import check
from tests.helpers import event, post_usage, requires_redis
from usage.models import ModelPrice

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "ready"), requires_redis]


def hard_budget(tenant, limit="0.003"):
    return budget_create(
        tenant=tenant, data={"name": "cap", "limit_usd": Decimal(limit), "enforcement": "hard"}
    )


def test_counters_are_integer_nano_dollars(acme, ingest_client):
    post_usage(
        ingest_client,
        [
            event(event_id="a"),
            event(
                event_id="b",
                provider="openai",
                model="gpt-4o-mini",
                input_tokens=1500,
                output_tokens=500,
            ),
        ],
    )
    day = bredis.client().hgetall(counters.day_key(acme.pk, date(2026, 11, 20)))
    values = {k.decode(): v.decode() for k, v in day.items()}
    assert values["t"] == "1875000"  # 1,350,000 + 525,000: integers, never floats
    assert values["m:gpt-4o-mini"] == "525000"
    assert values["u:user-1"] == "1875000"


def test_reconcile_corrects_drift_and_says_how_much(acme, ingest_client):
    post_usage(ingest_client, [event(event_id="a"), event(event_id="b")])
    r = bredis.client()
    key = counters.day_key(acme.pk, date(2026, 11, 20))
    r.hincrby(key, "t", 5_000)  # drift
    r.hset(key, "u:ghost", 42)  # a field no event explains
    report = counters.counters_reconcile(tenant=acme)
    assert (report.corrected, report.drift_nanos) == (2, 5_042)
    assert int(r.hget(key, "t")) == 2_700_000
    assert r.hget(key, "u:ghost") is None
    assert counters.counters_reconcile(tenant=acme).corrected == 0


def test_a_flushed_redis_is_rebuilt_before_counters_are_trusted(acme, ingest_client):
    hard_budget(acme)
    post_usage(ingest_client, [event(event_id="a"), event(event_id="b")])
    bredis.client().flushdb()  # Redis restarted empty
    body = check(ingest_client, estimated_cost_usd="0.0005").json()
    # Read from PostgreSQL meanwhile (and a rebuild was scheduled; tests run tasks at once).
    assert (body["source"], body["allowed"], body["budgets"][0]["used_usd"]) == (
        "database",
        False,
        "0.0027",
    )
    again = check(ingest_client, estimated_cost_usd="0.0005").json()
    assert (again["source"], again["budgets"][0]["used_usd"]) == ("redis", "0.0027")


def test_a_flushed_redis_keeps_an_emergency_stop(acme, ingest_client):
    emergency_stop_trip(tenant=acme, reason="hold")
    bredis.client().flushdb()
    assert check(ingest_client).json()["reasons"] == ["emergency_stop"]  # from PostgreSQL
    assert check(ingest_client).json()["reasons"] == ["emergency_stop"]  # restored to Redis


def test_redis_going_away_mid_test_falls_back_to_postgresql_and_ingest_goes_on(
    acme, ingest_client, settings
):
    hard_budget(acme)
    post_usage(ingest_client, event(event_id="a"))
    assert check(ingest_client).json()["source"] == "redis"

    original = settings.REDIS_URL
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # Redis is gone
    stored = post_usage(ingest_client, event(event_id="b"))
    assert stored.status_code == 201  # ingestion is unaffected
    body = check(ingest_client, estimated_cost_usd="0.0005", reserve=True).json()
    assert (body["source"], body["allowed"], body["reasons"]) == (
        "database",
        False,
        ["budget_exceeded"],
    )
    assert body["budgets"][0]["used_usd"] == "0.0027"  # still correct
    assert "counters_from_database" in {w["code"] for w in body["warnings"]}
    assert body["reservation_id"] is None  # refused: nothing held

    settings.REDIS_URL = original  # back, but it missed event b
    bredis.reset_breaker()
    with unscoped():
        assert CounterState.objects.for_tenant(acme).exists()
    reconcile_counters(only_stale=True)  # what beat runs every minute
    with unscoped():
        assert not CounterState.objects.for_tenant(acme).exists()
    back = check(ingest_client).json()
    assert (back["source"], back["budgets"][0]["used_usd"]) == ("redis", "0.0027")


def test_the_budget_list_reads_counters_and_projects_the_month(acme, read_client, ingest_client):
    b = hard_budget(acme, limit="0.01")
    post_usage(ingest_client, [event(event_id="a"), event(event_id="b")])
    [row] = read_client.get("/api/v1/budgets/").json()["results"]
    # 21 November 12:00 is 20.5 days into a 30-day month: $0.0027 / (20.5 / 30)
    assert row["id"] == b.pk
    assert (row["used_usd"], row["remaining_usd"], row["percent"], row["status"]) == (
        "0.0027",
        "0.0073",
        27.0,
        "ok",
    )
    assert row["projected_usd"] == "0.003951219"
    assert row["source"] == "redis"


def test_a_reprice_from_the_command_line_rebuilds_the_counters(
    acme, ingest_client, django_capture_on_commit_callbacks
):
    # The command (and the task, and admin) run with no tenant context; marking the counters
    # stale after the commit must not need one.
    post_usage(ingest_client, event(event_id="a"))
    day = counters.day_key(acme.pk, date(2026, 11, 20))
    assert int(bredis.client().hget(day, "t")) == 1_350_000
    with unscoped():
        haiku = ModelPrice.objects.unscoped().get(model="claude-haiku-4-5")
        haiku.output_per_mtok = Decimal(4)
        haiku.save()
    with django_capture_on_commit_callbacks(execute=True):
        call_command(
            "reprice_usage", "--tenant", "acme", "--start", "2026-11-20", "--end", "2026-11-21",
            stdout=io.StringIO(),
        )  # fmt: skip
    assert int(bredis.client().hget(day, "t")) == 450_000 + 180 * 4_000
    assert check(ingest_client).json()["source"] == "redis"
