"""The pre-flight check: budgets of every scope and period, exact figures, reservations."""

from __future__ import annotations

import os
import threading
from decimal import Decimal

import pytest
from rest_framework.response import Response

from budgets.services import budget_create
from costmon.core.models import Tenant
from costmon.core.services import api_key_create
from tests.budgets.conftest import THROUGH_DRF, check, reply_headers
from tests.helpers import event, post_usage, requires_redis

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "ready", "unscoped")]

HAIKU = 1_350_000  # nano-dollars of the default test event: 450 in + 180 out at $1/$5


def budget(tenant: Tenant, **data):
    data.setdefault("name", "Budget")
    data["limit_usd"] = Decimal(str(data.get("limit_usd", "0.01")))
    return budget_create(tenant=tenant, data=data)


def test_the_reply_has_every_documented_field_with_exact_figures(acme, ingest_client):
    b = budget(acme, name="Acme monthly", limit_usd="0.005", enforcement="hard")
    post_usage(ingest_client, [event(event_id="a"), event(event_id="b")])
    body = check(
        ingest_client,
        end_user="user-1",
        provider="anthropic",
        model="claude-haiku-4-5",
        estimated_input_tokens=450,
        estimated_output_tokens=180,
    ).json()
    assert body == {
        "allowed": True,
        "reasons": [],
        "budgets": [
            {
                "id": b.pk,
                "name": "Acme monthly",
                "scope": "tenant",
                "scope_value": "",
                "period": "month",
                "limit_usd": "0.005",
                "used_usd": "0.0027",
                "reserved_usd": "0",
                "remaining_usd": "0.0023",
                "percent": 54.0,
                "status": "ok",
                "resets_at": "2026-12-01T00:00:00Z",
                "enforcement": "hard",
                "fail_mode": "closed",
            }
        ],
        "warnings": [],
        "suggested_model": None,
        "reservation_id": None,
        "estimated_cost_usd": "0.00135",
        "source": "database" if os.environ.get("COSTMON_TEST_DB") == "sqlite" else "redis",
        "fail_mode": None,
    }


def test_a_hard_budget_blocks_a_call_its_estimate_would_take_over_the_limit(acme, ingest_client):
    budget(acme, limit_usd="0.003", enforcement="hard")
    post_usage(ingest_client, [event(event_id="a"), event(event_id="b")])  # $0.0027 spent
    assert check(ingest_client, estimated_cost_usd="0.0003").json()["allowed"] is True
    refused = check(ingest_client, estimated_cost_usd="0.00031").json()
    assert (refused["allowed"], refused["reasons"]) == (False, ["budget_exceeded"])


def test_a_hard_budget_already_spent_blocks_even_a_free_call(acme, ingest_client):
    budget(acme, limit_usd="0.0027", enforcement="hard")
    post_usage(ingest_client, [event(event_id="a"), event(event_id="b")])
    body = check(ingest_client).json()
    assert (body["allowed"], body["budgets"][0]["status"], body["budgets"][0]["percent"]) == (
        False,
        "exceeded",
        100.0,
    )


def test_a_soft_budget_warns_and_suggests_a_cheaper_model_but_allows(acme, ingest_client):
    b = budget(
        acme,
        name="Soft",
        limit_usd="0.003",
        suggested_model="claude-haiku-4-5",
        thresholds=[50, 90],
    )
    post_usage(ingest_client, [event(event_id="a"), event(event_id="b")])  # 90%
    body = check(ingest_client, estimated_cost_usd="0.01").json()
    assert body["allowed"] is True
    assert body["suggested_model"] == "claude-haiku-4-5"
    assert body["budgets"][0]["status"] == "critical"
    assert [w["code"] for w in body["warnings"]] == ["budget_critical"]
    assert body["warnings"][0]["budget_id"] == b.pk
    assert "90.00% of $0.003" in body["warnings"][0]["message"]


def test_below_the_first_threshold_there_is_no_warning(acme, ingest_client):
    budget(acme, limit_usd="0.01", suggested_model="gpt-4o-mini")
    post_usage(ingest_client, event())  # 13.5%
    body = check(ingest_client).json()
    assert (body["warnings"], body["suggested_model"], body["budgets"][0]["status"]) == (
        [],
        None,
        "ok",
    )


def test_a_budget_created_mid_period_starts_from_the_periods_real_spend(acme, ingest_client):
    post_usage(
        ingest_client,
        [event(event_id="a", occurred_at="2026-11-02T10:00:00Z"), event(event_id="b")],
    )
    budget(acme, limit_usd="1")
    assert check(ingest_client).json()["budgets"][0]["used_usd"] == "0.0027"


def test_a_day_budget_resets_exactly_at_midnight_in_the_tenants_time_zone(
    acme, ingest_client, _frozen_clock
):
    Tenant.objects.filter(pk=acme.pk).update(timezone="Europe/Paris")
    acme.refresh_from_db()
    budget(acme, period="day", limit_usd="1")
    _frozen_clock.move_to("2026-11-21T22:59:59Z")
    response = post_usage(
        ingest_client, event(event_id="late", occurred_at="2026-11-21T22:59:00Z")
    )  # 23:59 in Paris
    assert response.status_code == 201
    body = check(ingest_client).json()["budgets"][0]
    assert (body["used_usd"], body["resets_at"]) == ("0.00135", "2026-11-21T23:00:00Z")
    _frozen_clock.move_to("2026-11-21T23:00:00Z")  # midnight in Paris
    body = check(ingest_client).json()["budgets"][0]
    assert (body["used_usd"], body["resets_at"]) == ("0", "2026-11-22T23:00:00Z")


@pytest.mark.parametrize(
    ("period", "rolling_days", "expected_used", "resets_at"),
    [
        ("day", None, 1, "2026-11-22T00:00:00Z"),
        ("week", None, 2, "2026-11-23T00:00:00Z"),  # Monday the 16th to Sunday the 22nd
        ("month", None, 3, "2026-12-01T00:00:00Z"),
        ("rolling", 7, 3, "2026-11-22T00:00:00Z"),  # the 15th (Sunday) to the 21st
        ("rolling", 30, 4, "2026-11-22T00:00:00Z"),
    ],
)
def test_each_period_counts_its_own_days(
    acme, ingest_client, period, rolling_days, expected_used, resets_at
):
    post_usage(
        ingest_client,
        [
            event(event_id="today", occurred_at="2026-11-21T01:00:00Z"),
            event(event_id="monday", occurred_at="2026-11-16T00:00:00Z"),
            event(
                event_id="sunday", occurred_at="2026-11-15T23:59:59Z"
            ),  # last week, 7 rolling days ago
            event(event_id="october", occurred_at="2026-10-31T12:00:00Z"),
        ],
    )
    budget(acme, period=period, rolling_days=rolling_days, limit_usd="1")
    body = check(ingest_client).json()["budgets"][0]
    assert Decimal(body["used_usd"]) * 10**9 == expected_used * HAIKU
    assert body["resets_at"] == resets_at


def test_every_end_user_budget_applies_to_each_user_separately(acme, ingest_client):
    budget(acme, scope="every_end_user", limit_usd="0.002", enforcement="hard")
    post_usage(ingest_client, [event(event_id="a", end_user="heavy")])
    heavy = check(ingest_client, end_user="heavy", estimated_cost_usd="0.001").json()
    light = check(ingest_client, end_user="light", estimated_cost_usd="0.001").json()
    assert (heavy["allowed"], heavy["budgets"][0]["end_user"], heavy["budgets"][0]["used_usd"]) == (
        False,
        "heavy",
        "0.00135",
    )
    assert (light["allowed"], light["budgets"][0]["used_usd"]) == (True, "0")
    assert check(ingest_client).json()["budgets"] == []  # no end user: the budget does not apply


@pytest.mark.parametrize(
    ("scope", "value", "matching", "other"),
    [
        ("end_user", "u1", {"end_user": "u1"}, {"end_user": "u2"}),
        (
            "provider",
            "openai",
            {"provider": "openai", "model": "gpt-4o-mini"},
            {"provider": "anthropic"},
        ),
        (
            "model",
            "gpt-4o-mini",
            {"provider": "openai", "model": "gpt-4o-mini-2024-07-18"},
            {"provider": "openai", "model": "gpt-4o"},
        ),
        ("operation", "summarize", {"operation": "summarize"}, {"operation": "chat"}),
        ("tag", "team=search", {"tags": {"team": "search"}}, {"tags": {"team": "ops"}}),
    ],
)
def test_scoped_budgets_count_and_apply_only_to_their_scope(
    acme, ingest_client, scope, value, matching, other
):
    b = budget(acme, scope=scope, scope_value=value, limit_usd="1")
    post_usage(
        ingest_client,
        [
            event(event_id="in", input_tokens=1000, output_tokens=0, **matching),
            event(event_id="out", input_tokens=2000, output_tokens=0, **other),
        ],
    )
    body = check(ingest_client, **matching).json()
    [state] = body["budgets"]
    assert state["id"] == b.pk
    rate = {"gpt-4o-mini": Decimal("0.15")}.get(
        matching.get("model", "").split("-2024")[0], Decimal(1)
    )
    assert Decimal(state["used_usd"]) == rate * 1000 / 10**6
    assert check(ingest_client, **other).json()["budgets"] == []


def test_an_api_key_budget_counts_that_keys_spend_only(acme, ingest_client):
    second = api_key_create(tenant=acme, scopes="ingest")
    b = budget(acme, scope="api_key", api_key=second.api_key, limit_usd="1")
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {second.secret}")
    post_usage(client, event(event_id="mine"))
    post_usage(ingest_client, event(event_id="theirs"))
    [state] = check(client).json()["budgets"]
    assert (state["id"], state["used_usd"]) == (b.pk, "0.00135")
    assert check(ingest_client).json()["budgets"] == []


@requires_redis
def test_a_check_with_redis_up_does_no_sql(acme, ingest_client, django_assert_num_queries):
    budget(acme, limit_usd="1")
    budget(acme, scope="every_end_user", limit_usd="0.1", enforcement="hard")
    check(
        ingest_client,
        end_user="u1",
        provider="anthropic",
        model="claude-haiku-4-5",
        estimated_input_tokens=10,
    )
    with django_assert_num_queries(0):
        body = check(
            ingest_client,
            end_user="u1",
            provider="anthropic",
            model="claude-haiku-4-5",
            estimated_input_tokens=1000,
            reserve=True,
        ).json()
    assert body["source"] == "redis" and body["reservation_id"]


@requires_redis
def test_a_reservation_holds_budget_until_the_event_settles_it(acme, ingest_client):
    budget(acme, limit_usd="0.002", enforcement="hard")
    first = check(ingest_client, estimated_cost_usd="0.0015", reserve=True).json()
    assert first["allowed"] and first["reservation_id"]
    assert first["budgets"][0]["reserved_usd"] == "0.0015"
    # Another call now finds the budget held.
    assert check(ingest_client, estimated_cost_usd="0.001").json()["allowed"] is False
    # The call happened and cost $0.00135: the event settles the reservation.
    post_usage(ingest_client, event(event_id="x", reservation_id=first["reservation_id"]))
    after = check(ingest_client, estimated_cost_usd="0.0006").json()
    assert (
        after["allowed"],
        after["budgets"][0]["used_usd"],
        after["budgets"][0]["reserved_usd"],
    ) == (True, "0.00135", "0")


@requires_redis
def test_a_reservation_made_with_an_event_id_is_settled_by_that_event(acme, ingest_client):
    budget(acme, limit_usd="0.002", enforcement="hard")
    held = check(ingest_client, estimated_cost_usd="0.0015", reserve=True, event_id="call-7").json()
    assert held["reservation_id"]
    post_usage(ingest_client, event(event_id="call-7"))
    state = check(ingest_client).json()["budgets"][0]
    assert (state["used_usd"], state["reserved_usd"]) == ("0.00135", "0")


@requires_redis
def test_an_unsettled_reservation_expires(acme, ingest_client, _frozen_clock, settings):
    settings.COSTMON_RESERVATION_SECONDS = 60
    budget(acme, limit_usd="0.002", enforcement="hard")
    assert check(ingest_client, estimated_cost_usd="0.0015", reserve=True).json()["reservation_id"]
    assert check(ingest_client, estimated_cost_usd="0.001").json()["allowed"] is False
    _frozen_clock.shift(61)
    body = check(ingest_client, estimated_cost_usd="0.001").json()
    assert (body["allowed"], body["budgets"][0]["reserved_usd"]) == (True, "0")


@requires_redis
def test_only_hard_budgets_are_reserved_and_soft_ones_only_warn(acme, ingest_client):
    budget(acme, name="soft", limit_usd="0.001")
    body = check(ingest_client, estimated_cost_usd="0.002", reserve=True).json()
    assert body["allowed"] is True and body["reservation_id"] is None
    assert [w["code"] for w in body["warnings"]] == ["soft_budget_would_exceed"]


@requires_redis
@pytest.mark.django_db(transaction=True)
def test_concurrent_reservations_never_overshoot_a_hard_budget(acme, outsider, prices):
    """20 callers race for a $0.01 budget with $0.0015 estimates: at most 6 may pass (0.009),
    and what they then spend never exceeds the limit by more than one estimate."""
    from budgets import counters

    counters.counters_reconcile(tenant=acme)
    budget(acme, limit_usd="0.01", enforcement="hard")
    secret = api_key_create(tenant=acme, scopes="ingest").secret
    admitted: list[str] = []
    barrier = threading.Barrier(20)

    def caller(n: int) -> None:
        from django.db import connection
        from rest_framework.test import APIClient

        # (the clock is frozen for every thread by the autouse fixture)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        barrier.wait()
        body = check(client, estimated_cost_usd="0.0015", reserve=True, end_user=f"u{n}").json()
        if body["allowed"]:
            admitted.append(body["reservation_id"])
            # Each admitted call really spends its estimate.
            post_usage(
                client,
                event(
                    event_id=f"call-{n}", cost_usd="0.0015", reservation_id=body["reservation_id"]
                ),
            )
        connection.close()

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 6
    from usage.models import UsageEvent

    spent = sum(e.cost_nanos for e in UsageEvent.objects.for_tenant(acme))
    assert spent == 6 * 1_500_000 <= 10_000_000 + 1_500_000


def test_the_direct_reply_and_drfs_are_the_same_bytes_and_headers(acme, ingest_client):
    budget(acme, name="soft", limit_usd="0.002", suggested_model="claude-haiku-4-5")
    budget(acme, name="hard", scope="every_end_user", limit_usd="1", enforcement="hard")
    post_usage(ingest_client, [event(event_id="a"), event(event_id="b")])
    body = {
        "end_user": "user-1",
        "provider": "anthropic",
        "model": "claude-haiku-4-5",
        "estimated_input_tokens": 450,
    }
    direct = ingest_client.post("/api/v1/check/", body, format="json")
    through_drf = ingest_client.post("/api/v1/check/", body, format="json", **THROUGH_DRF)
    assert not isinstance(direct, Response) and isinstance(through_drf, Response)
    assert direct.status_code == through_drf.status_code == 200
    assert direct.content == through_drf.content
    assert reply_headers(direct) == reply_headers(through_drf)
    assert direct.json()["warnings"][0]["code"] == "budget_exceeded"


def test_a_check_with_an_accept_header_drf_refuses_gets_406_as_before(ingest_client):
    response = ingest_client.post("/api/v1/check/", {}, format="json", HTTP_ACCEPT="text/html")
    assert response.status_code == 406


def test_without_usable_counters_a_reservation_is_held_in_the_database(
    acme, outsider, ingest_client, settings
):
    """Redis away (or, on the embedded default, not configured): PostgreSQL holds it."""
    if settings.REDIS_URL:
        settings.REDIS_URL = "redis://127.0.0.1:1/0"
    budget(acme, limit_usd="0.002", enforcement="hard")
    first = check(ingest_client, estimated_cost_usd="0.0015", reserve=True).json()
    assert (first["source"], first["allowed"]) == ("database", True)
    assert first["reservation_id"] and first["budgets"][0]["reserved_usd"] == "0.0015"
    refused = check(ingest_client, estimated_cost_usd="0.001", reserve=True).json()
    assert (refused["allowed"], refused["reasons"]) == (False, ["budget_exceeded"])
    post_usage(ingest_client, event(event_id="x", reservation_id=first["reservation_id"]))
    after = check(ingest_client, estimated_cost_usd="0.0006").json()
    assert (
        after["allowed"],
        after["budgets"][0]["used_usd"],
        after["budgets"][0]["reserved_usd"],
    ) == (True, "0.00135", "0")
    assert "reservation_unavailable" not in {w["code"] for w in first["warnings"]}
