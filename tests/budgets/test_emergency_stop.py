from __future__ import annotations

from decimal import Decimal

import pytest

from budgets.config import bump
from budgets.emergency_stop import emergency_stop_lift, emergency_stop_trip
from budgets.models import EmergencyStop, EmergencyStopRule
from budgets.signals import EmergencyStopChanged, emergency_stop_changed
from budgets.tasks import check_emergency_stop_rules
from costmon.core.tenancy import unscoped
from tests.budgets.conftest import check
from tests.helpers import event as any_event
from tests.helpers import post_usage

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "ready")]


def event(**fields):
    """An event of today (the rules below watch today's spend)."""
    return any_event(occurred_at="2026-11-21T11:00:00Z", **fields)


def rule(tenant, threshold: str, window: str = "day", minutes: int = 60) -> EmergencyStopRule:
    with unscoped():
        row = EmergencyStopRule.objects.create(
            tenant=tenant, window=window, threshold_usd=Decimal(threshold), duration_minutes=minutes
        )
    bump(tenant.pk if tenant else None)
    return row


def test_an_admin_key_trips_and_lifts_the_stop_and_it_is_recorded(
    acme, admin_client_key, ingest_client
):
    tripped = admin_client_key.post(
        "/api/v1/emergency-stop/",
        {"action": "trip", "reason": "runaway agent", "duration_minutes": 30},
        format="json",
    )
    assert tripped.status_code == 200
    body = tripped.json()
    assert body["active"] is True
    assert (body["stop"]["reason"], body["stop"]["tripped_by"], body["stop"]["expires_at"]) == (
        "runaway agent",
        "api key",
        "2026-11-21T12:30:00Z",
    )
    refused = check(ingest_client, end_user="u1").json()
    assert (refused["allowed"], refused["reasons"]) == (False, ["emergency_stop"])
    assert "runaway agent" in refused["warnings"][0]["message"]

    lifted = admin_client_key.post(
        "/api/v1/emergency-stop/", {"action": "lift", "reason": "fixed"}, format="json"
    ).json()
    assert lifted["active"] is False
    assert [(h["reason"], h["lift_reason"]) for h in lifted["history"]] == [
        ("runaway agent", "fixed")
    ]
    assert check(ingest_client).json()["allowed"] is True


def test_a_stop_expires_on_its_own(acme, ingest_client, _frozen_clock):
    emergency_stop_trip(tenant=acme, reason="test", duration_minutes=60)
    assert check(ingest_client).json()["allowed"] is False
    _frozen_clock.shift(3601)
    assert check(ingest_client).json()["allowed"] is True


def test_spend_past_a_rule_trips_the_stop_on_ingest_once(acme, ingest_client):
    rule(acme, "0.002")
    fired: list[str] = []

    def listen(sender, *, event: EmergencyStopChanged, **kwargs) -> None:
        fired.append(event.change)

    emergency_stop_changed.connect(listen)
    try:
        post_usage(ingest_client, event(event_id="a"))
        assert check(ingest_client).json()["allowed"] is True
        post_usage(ingest_client, event(event_id="b"))  # $0.0027 > $0.002
    finally:
        emergency_stop_changed.disconnect(listen)
    body = check(ingest_client).json()
    assert body["reasons"] == ["emergency_stop"]
    with unscoped():
        stop = EmergencyStop.objects.get(tenant=acme)
    assert (stop.spend_at_trip_nanos, stop.rule_id is not None) == (2_700_000, True)
    assert stop.reason == "Spend $0.0027 passed $0.002 today"
    # Lifting it by hand holds: the same spend does not trip it again today.
    emergency_stop_lift(tenant=acme, reason="checked")
    post_usage(ingest_client, event(event_id="c"))
    assert check(ingest_client).json()["allowed"] is True
    with unscoped():
        assert EmergencyStop.objects.filter(tenant=acme).count() == 1


def test_the_minute_task_trips_rules_too(acme, ingest_client):
    post_usage(ingest_client, [event(event_id="a"), event(event_id="b")])
    rule(acme, "0.002")
    assert check_emergency_stop_rules() == 1
    assert check(ingest_client).json()["allowed"] is False
    assert check_emergency_stop_rules() == 0


def test_a_global_rule_stops_every_tenant(acme, outsider, ingest_client, outsider_client):
    rule(None, "0.002")
    post_usage(ingest_client, event(event_id="a"))
    post_usage(outsider_client, event(event_id="b"))  # together $0.0027
    assert check(ingest_client).json()["reasons"] == ["emergency_stop"]
    assert check(outsider_client).json()["reasons"] == ["emergency_stop"]


def test_an_outsider_neither_sees_nor_lifts_acmes_stop(
    acme, outsider, ingest_client, outsider_client
):
    emergency_stop_trip(tenant=acme, reason="acme only")
    mine = outsider_client.get("/api/v1/emergency-stop/").json()
    assert (mine["active"], mine["history"]) == (False, [])
    response = outsider_client.post("/api/v1/emergency-stop/", {"action": "lift"}, format="json")
    assert response.status_code == 409
    assert "no emergency stop to lift" in response.json()["detail"]
    assert check(ingest_client).json()["allowed"] is False
    assert check(outsider_client).json()["allowed"] is True


def test_changing_the_stop_needs_the_admin_scope(read_client, ingest_client):
    assert read_client.get("/api/v1/emergency-stop/").status_code == 200
    for client in (read_client, ingest_client):
        response = client.post(
            "/api/v1/emergency-stop/", {"action": "trip", "reason": "x"}, format="json"
        )
        assert response.status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "explode"}, "action"),
        ({"action": "trip", "duration_minutes": 0}, "duration_minutes"),
        ({}, "action"),
    ],
)
def test_bad_stop_requests_get_a_400(admin_client_key, body, field):
    response = admin_client_key.post("/api/v1/emergency-stop/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()


def test_expired_stops_are_recorded_as_lifted_once(
    acme, _frozen_clock, django_capture_on_commit_callbacks
):
    from budgets.tasks import close_expired_emergency_stops

    emergency_stop_trip(tenant=acme, reason="short", duration_minutes=5)
    _frozen_clock.shift(301)
    seen: list[str] = []

    def listen(sender, *, event: EmergencyStopChanged, **kwargs) -> None:
        seen.append(event.change)

    emergency_stop_changed.connect(listen)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            assert close_expired_emergency_stops() == 1
            assert close_expired_emergency_stops() == 0
    finally:
        emergency_stop_changed.disconnect(listen)
    with unscoped():
        stop = EmergencyStop.objects.get(tenant=acme)
    assert (stop.lift_reason, stop.lifted_at.isoformat(), seen) == (
        "expired",
        "2026-11-21T12:05:00+00:00",
        ["lifted"],
    )


def test_a_failing_receiver_does_not_undo_the_trip_nor_silence_the_others(
    acme, outsider, ingest_client, outsider_client, django_capture_on_commit_callbacks
):
    heard: list[tuple[int | None, str]] = []

    def broken(sender, *, event: EmergencyStopChanged, **kwargs) -> None:
        raise RuntimeError("receiver down")

    def listen(sender, *, event: EmergencyStopChanged, **kwargs) -> None:
        heard.append((event.stop.tenant_id, event.change))

    emergency_stop_changed.connect(broken)
    emergency_stop_changed.connect(listen)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            emergency_stop_trip(tenant=acme, reason="runaway")
        with django_capture_on_commit_callbacks(execute=True):
            emergency_stop_lift(tenant=acme, reason="fixed")
    finally:
        emergency_stop_changed.disconnect(broken)
        emergency_stop_changed.disconnect(listen)
    assert heard == [(acme.pk, "tripped"), (acme.pk, "lifted")]
    with unscoped():
        assert [(s.reason, s.lift_reason) for s in EmergencyStop.objects.unscoped().all()] == [
            ("runaway", "fixed")
        ]
    assert check(outsider_client).json()["allowed"] is True
