"""fail_mode: what a check answers when spend cannot be known at all (no trusted counters and
PostgreSQL unreachable), how a budget and a tenant choose it, and the reply that says which
source and mode answered. Also: a stopped check's figures, and who lifted a stop."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from decimal import Decimal

import pytest
from django.db import connection

from budgets import counters
from budgets import redis as bredis
from budgets.emergency_stop import emergency_stop_trip
from budgets.models import BudgetDefaults, EmergencyStop
from budgets.services import budget_create
from costmon.core.services import api_key_create
from tests.budgets.conftest import check
from tests.budgets.servers import free_port
from tests.helpers import event, post_usage, requires_redis

pytestmark = [pytest.mark.usefixtures("prices", "unscoped")]

TODAY = "2026-11-21T11:00:00Z"


def budget(tenant, **data):
    data.setdefault("name", "cap")
    data.setdefault("period", "day")
    data.setdefault("enforcement", "hard")
    data["limit_usd"] = Decimal(str(data.get("limit_usd", "1")))
    return budget_create(tenant=tenant, data=data)


@contextlib.contextmanager
def postgresql_unreachable() -> Iterator[None]:
    """This process's database connection points at a port nothing listens on."""
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT=str(free_port()))
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


@pytest.fixture
def warm(settings, acme, outsider, ingest_client):
    """This process has seen the key and the budgets in the last minute (as a web worker
    serving checks has), so it can still answer while PostgreSQL is away."""
    settings.COSTMON_SHARED_RECHECK_MS = 60_000

    def warm_up() -> None:
        counters.counters_reconcile(tenant=acme)
        post_usage(ingest_client, event(event_id="spent", occurred_at=TODAY))  # $0.00135
        assert check(ingest_client, estimated_cost_usd="0.01").json()["source"] == "redis"

    return warm_up


@requires_redis
@pytest.mark.django_db(transaction=True)
def test_closed_refuses_when_counters_are_rebuilding_and_postgresql_is_unreachable(
    acme, ingest_client, warm
):
    budget(acme, name="daily cap")  # hard: closed unless told otherwise
    warm()
    bredis.client().delete(counters.ok_key(acme.pk))  # counters not trusted (being rebuilt)
    with postgresql_unreachable():
        body = check(ingest_client, estimated_cost_usd="0.01", reserve=True).json()
    assert (body["allowed"], body["reasons"], body["source"], body["fail_mode"]) == (
        False,
        ["spend_unknown"],
        "none",
        "closed",
    )
    assert body["reservation_id"] is None
    [warning] = body["warnings"]
    assert warning["code"] == "spend_unknown"
    assert warning["message"] == (
        "Spend cannot be known (the counters are being rebuilt and the database is "
        "unreachable): refused, as budget 'daily cap' fails closed."
    )
    assert body["budgets"][0]["fail_mode"] == "closed"


@requires_redis
@pytest.mark.django_db(transaction=True)
def test_closed_refuses_when_redis_and_postgresql_are_both_unreachable(
    acme, ingest_client, warm, settings
):
    budget(acme)
    warm()
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    with postgresql_unreachable():
        body = check(ingest_client, estimated_cost_usd="0.01").json()
    assert (body["allowed"], body["reasons"], body["source"], body["fail_mode"]) == (
        False,
        ["spend_unknown"],
        "none",
        "closed",
    )
    assert "Redis is unavailable and the database is unreachable" in body["warnings"][0]["message"]


@requires_redis
@pytest.mark.django_db(transaction=True)
def test_open_allows_with_a_warning_and_reserves_nothing(acme, ingest_client, warm):
    budget(acme, fail_mode="open")
    warm()
    bredis.client().delete(counters.ok_key(acme.pk))
    with postgresql_unreachable():
        body = check(ingest_client, estimated_cost_usd="0.01", reserve=True).json()
    assert (body["allowed"], body["reasons"], body["source"], body["fail_mode"]) == (
        True,
        [],
        "none",
        "open",
    )
    assert body["reservation_id"] is None
    assert [w["code"] for w in body["warnings"]] == ["spend_unknown"]
    assert "allowed, as the budgets that apply fail open" in body["warnings"][0]["message"]


@requires_redis
@pytest.mark.django_db(transaction=True)
def test_one_closed_budget_among_open_ones_refuses(acme, ingest_client, warm):
    budget(acme, name="open one", fail_mode="open")
    budget(acme, name="soft one", enforcement="soft")  # soft: open by default
    budget(acme, name="closed one", enforcement="soft", fail_mode="closed")
    warm()
    bredis.client().delete(counters.ok_key(acme.pk))
    with postgresql_unreachable():
        body = check(ingest_client).json()
    assert (body["allowed"], body["fail_mode"]) == (False, "closed")
    assert "budget 'closed one' fails closed" in body["warnings"][0]["message"]
    assert [b["fail_mode"] for b in body["budgets"]] == ["open", "open", "closed"]


@requires_redis
@pytest.mark.django_db(transaction=True)
def test_the_tenant_default_applies_to_budgets_that_set_none(acme, ingest_client, warm):
    BudgetDefaults.objects.create(tenant=acme, fail_mode="open")
    budget(acme)  # hard, no mode of its own: the tenant's default (open)
    warm()
    bredis.client().delete(counters.ok_key(acme.pk))
    with postgresql_unreachable():
        body = check(ingest_client, estimated_cost_usd="0.01").json()
    assert (body["allowed"], body["fail_mode"], body["budgets"][0]["fail_mode"]) == (
        True,
        "open",
        "open",
    )


@requires_redis
@pytest.mark.django_db(transaction=True)
def test_with_postgresql_up_spend_is_known_and_no_fail_mode_answers(
    acme, ingest_client, warm, settings
):
    budget(acme, limit_usd="0.002")
    warm()
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    body = check(ingest_client, estimated_cost_usd="0.001", reserve=True).json()
    assert (body["allowed"], body["source"], body["fail_mode"]) == (False, "database", None)
    assert body["budgets"][0]["used_usd"] == "0.00135"


@pytest.mark.django_db
def test_the_budgets_api_sets_shows_and_resets_fail_mode(admin_client_key, acme, outsider):
    created = admin_client_key.post(
        "/api/v1/budgets/",
        {"name": "cap", "limit_usd": "5", "enforcement": "hard"},
        format="json",
    ).json()
    assert (created["fail_mode"], created["fail_mode_inherited"]) == ("closed", True)
    url = f"/api/v1/budgets/{created['id']}/"
    changed = admin_client_key.patch(url, {"fail_mode": "open"}, format="json").json()
    assert (changed["fail_mode"], changed["fail_mode_inherited"]) == ("open", False)
    soft = admin_client_key.patch(url, {"enforcement": "soft"}, format="json").json()
    assert soft["fail_mode"] == "open"
    reset = admin_client_key.patch(
        url, {"fail_mode": None, "enforcement": "hard"}, format="json"
    ).json()
    assert (reset["fail_mode"], reset["fail_mode_inherited"]) == ("closed", True)
    bad = admin_client_key.patch(url, {"fail_mode": "ajar"}, format="json")
    assert bad.status_code == 400
    assert "fail_mode" in bad.content.decode()


@pytest.mark.django_db
def test_a_soft_budget_fails_open_by_default(admin_client_key, acme):
    body = admin_client_key.post(
        "/api/v1/budgets/", {"name": "soft", "limit_usd": "5"}, format="json"
    ).json()
    assert body["fail_mode"] == "open"


# --- the emergency stop ---------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.usefixtures("ready")
@pytest.mark.parametrize("counters_state", ["trusted", "rebuilding"])
def test_a_stopped_check_shows_the_budgets_real_spend(acme, ingest_client, counters_state):
    budget(acme, name="daily", limit_usd="0.01")
    post_usage(
        ingest_client,
        [event(event_id="a", occurred_at=TODAY), event(event_id="b", occurred_at=TODAY)],
    )
    emergency_stop_trip(tenant=acme, reason="runaway")
    if counters_state == "rebuilding" and bredis.client() is not None:
        bredis.client().delete(counters.ok_key(acme.pk))
    body = check(ingest_client, estimated_cost_usd="0.001", reserve=True).json()
    assert (body["allowed"], body["reasons"]) == (False, ["emergency_stop"])
    [state] = body["budgets"]
    assert (state["used_usd"], state["remaining_usd"], state["percent"]) == (
        "0.0027",
        "0.0073",
        27.0,
    )
    assert body["reservation_id"] is None


@pytest.mark.django_db
@pytest.mark.usefixtures("ready")
def test_a_lift_through_the_api_records_the_key(acme, outsider):
    admin = api_key_create(tenant=acme, scopes="admin")
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {admin.secret}")
    client.post("/api/v1/emergency-stop/", {"action": "trip", "reason": "loop"}, format="json")
    body = client.post(
        "/api/v1/emergency-stop/", {"action": "lift", "reason": "fixed"}, format="json"
    ).json()
    [stop] = body["history"]
    assert (stop["lifted_by"], stop["lifted_by_key"], stop["tripped_by_key"]) == (
        "api key",
        admin.api_key.prefix,
        admin.api_key.prefix,
    )
    row = EmergencyStop.objects.for_tenant(acme).get()
    assert (row.lifted_by_key_id, row.lifted_by_id, row.lift_reason) == (
        admin.api_key.pk,
        None,
        "fixed",
    )
    assert not EmergencyStop.objects.for_tenant(outsider).exists()
