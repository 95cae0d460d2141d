from __future__ import annotations

from decimal import Decimal

import pytest

from alerts.models import Alert, AlertRule, Channel
from alerts.services import alert_rules_evaluate
from tests.alerts.conftest import make_rule
from tests.helpers import event, post_usage

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "frozen", "unscoped")]


def test_an_admin_key_manages_channels_and_rules(admin_client_key, receiver, acme):
    created = admin_client_key.post(
        "/api/v1/channels/",
        {"name": "ops", "kind": "webhook", "config": {"url": receiver.url}},
        format="json",
    )
    assert created.status_code == 201, created.content
    channel = created.json()
    assert len(channel["config"]["secret"]) >= 32  # generated, shown this once
    listed = admin_client_key.get("/api/v1/channels/").json()["results"]
    assert listed[0]["config"]["secret"].endswith("…") and len(listed[0]["config"]["secret"]) == 5

    rule = admin_client_key.post(
        "/api/v1/alert-rules/",
        {
            "name": "Daily cap",
            "kind": "spend",
            "period": "day",
            "threshold_usd": "10",
            "severity": "critical",
            "channels": [channel["id"]],
        },
        format="json",
    )
    assert rule.status_code == 201, rule.content
    body = rule.json()
    assert (body["threshold_usd"], body["channels"], body["cooldown_minutes"]) == (
        "10.000000",
        [channel["id"]],
        60,
    )
    changed = admin_client_key.patch(
        f"/api/v1/alert-rules/{body['id']}/", {"threshold_usd": "25"}, format="json"
    )
    assert changed.json()["threshold_usd"] == "25.000000"
    assert admin_client_key.delete(f"/api/v1/alert-rules/{body['id']}/").status_code == 204

    tested = admin_client_key.post(f"/api/v1/channels/{channel['id']}/test/")
    assert (tested.status_code, tested.json()["status"]) == (200, "sent")
    assert receiver.requests[0].json["type"] == "costmon.test"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "spend"}, "threshold_usd"),
        ({"kind": "volcano"}, "kind"),
        ({"kind": "spend", "threshold_usd": "-1"}, "threshold_usd"),
        ({"kind": "error_rate", "threshold_percent": "150"}, "threshold_percent"),
        ({"kind": "spend", "threshold_usd": "1", "tag": "team"}, "tag"),
        ({"kind": "spend", "threshold_usd": "1", "channels": [999]}, "channels"),
        # Beyond a 64-bit integer: refused before the database (SQLite cannot hold it: was 500).
        ({"kind": "spend", "threshold_usd": "1", "channels": [2**64]}, "channels"),
        ({"kind": "spike", "multiplier": "1"}, "multiplier"),
    ],
)
def test_bad_rules_get_a_400_naming_the_field(admin_client_key, body, field):
    response = admin_client_key.post("/api/v1/alert-rules/", {"name": "r", **body}, format="json")
    assert response.status_code == 400, response.content
    data = response.json()
    assert field in data or data.get("field") == field or field in data.get("fields", {}), data
    assert AlertRule.objects.unscoped().count() == 0


@pytest.mark.parametrize(
    ("config", "message"),
    [({"url": "ftp://example.com/x"}, "http"), ({}, "url")],
)
def test_a_bad_channel_is_refused(admin_client_key, config, message):
    response = admin_client_key.post(
        "/api/v1/channels/", {"name": "x", "kind": "webhook", "config": config}, format="json"
    )
    assert response.status_code == 400
    assert message in str(response.json()).lower()
    assert Channel.objects.unscoped().count() == 0


def test_alerts_are_listed_filtered_and_acknowledged(
    acme, ingest_client, admin_client_key, webhook, django_capture_on_commit_callbacks
):
    make_rule(acme, [webhook], kind="spend", threshold_usd=Decimal("0.001"), severity="critical")
    make_rule(acme, [webhook], kind="unpriced", severity="info")
    post_usage(
        ingest_client,
        [
            event(occurred_at="2026-11-21T11:00:00Z"),
            event(event_id="u", occurred_at="2026-11-21T11:00:00Z", provider="x", model="y"),
        ],
    )
    with django_capture_on_commit_callbacks(execute=True):
        alert_rules_evaluate(kinds=["spend", "unpriced"])
    alerts = admin_client_key.get("/api/v1/alerts/").json()["results"]
    assert sorted(a["kind"] for a in alerts) == ["spend", "unpriced"]
    critical = admin_client_key.get("/api/v1/alerts/?severity=critical").json()["results"]
    assert [a["title"] for a in critical] == ["Spend today is above $0.001"]
    acked = admin_client_key.post(f"/api/v1/alerts/{critical[0]['id']}/acknowledge/").json()
    assert acked["acknowledged_at"] == "2026-11-21T12:00:00Z"
    assert [
        a["kind"]
        for a in admin_client_key.get("/api/v1/alerts/?acknowledged=false").json()["results"]
    ] == ["unpriced"]
    assert admin_client_key.get("/api/v1/alerts/?status=burning").status_code == 400


def test_an_outsider_sees_and_changes_none_of_acmes_alerting(
    acme,
    outsider_client,
    admin_client_key,
    webhook,
    ingest_client,
    django_capture_on_commit_callbacks,
):
    rule = make_rule(acme, [webhook], kind="spend", threshold_usd=Decimal("0.001"))
    post_usage(ingest_client, event(occurred_at="2026-11-21T11:00:00Z"))
    with django_capture_on_commit_callbacks(execute=True):
        alert_rules_evaluate(kinds=["spend"])
    alert = Alert.objects.for_tenant(acme).get()
    for path in ("/api/v1/alerts/", "/api/v1/alert-rules/", "/api/v1/channels/"):
        assert outsider_client.get(path).json()["results"] == []
    assert outsider_client.get(f"/api/v1/alert-rules/{rule.pk}/").status_code == 404
    assert (
        outsider_client.patch(
            f"/api/v1/channels/{webhook.pk}/", {"name": "mine"}, format="json"
        ).status_code
        == 404
    )
    assert outsider_client.post(f"/api/v1/channels/{webhook.pk}/test/").status_code == 404
    assert outsider_client.post(f"/api/v1/alerts/{alert.pk}/acknowledge/").status_code == 404
    # Nor may an outsider's rule point at acme's channel.
    response = outsider_client.post(
        "/api/v1/alert-rules/",
        {"name": "x", "kind": "spend", "threshold_usd": "1", "channels": [webhook.pk]},
        format="json",
    )
    assert response.status_code == 400


def test_changing_alerting_needs_the_admin_scope(read_client):
    assert read_client.get("/api/v1/alerts/").status_code == 200
    assert (
        read_client.post(
            "/api/v1/alert-rules/", {"name": "x", "kind": "spend"}, format="json"
        ).status_code
        == 403
    )
    assert (
        read_client.post(
            "/api/v1/channels/",
            {"name": "x", "kind": "email", "config": {"to": ["a@b.c"]}},
            format="json",
        ).status_code
        == 403
    )
