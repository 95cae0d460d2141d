"""Each rule kind raises the right alert once, with exact figures, and notifies its channels."""

from __future__ import annotations

from decimal import Decimal

import pytest

from alerts.models import Alert, Notification
from alerts.services import alert_rules_evaluate
from alerts.transports.webhook import verify_signature
from budgets.emergency_stop import emergency_stop_lift, emergency_stop_trip
from budgets.services import budget_create
from costmon.core.tenancy import unscoped
from tests.alerts.conftest import make_rule
from tests.helpers import event, post_usage

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "frozen")]
ALL = ["spend", "budget", "projected", "spike", "cache_hit_rate", "error_rate", "unpriced"]
TODAY = "2026-11-21T11:00:00Z"


def evaluate(capture, kinds=ALL):
    with capture(execute=True):
        return alert_rules_evaluate(kinds=kinds)


def today(**fields):
    return event(occurred_at=TODAY, **fields)


def test_a_spend_threshold_alerts_once_with_a_signed_webhook(
    acme, ingest_client, webhook, receiver, django_capture_on_commit_callbacks
):
    make_rule(
        acme,
        [webhook],
        kind="spend",
        period="day",
        threshold_usd=Decimal("0.002"),
        severity="warning",
    )
    post_usage(ingest_client, [today(event_id="a"), today(event_id="b")])
    report = evaluate(django_capture_on_commit_callbacks)
    assert (report.firing, report.notified) == (1, 1)
    [received] = receiver.requests
    body = received.json
    assert (body["type"], body["title"], body["figure"], body["threshold"], body["severity"]) == (
        "costmon.alert",
        "Spend today is above $0.002",
        "$0.0027",
        "$0.002",
        "warning",
    )
    assert body["link"] == "http://127.0.0.1:8000/t/acme/"
    assert verify_signature(
        secret="s3cret-s3cret-s3cret",
        timestamp=received.headers["X-Costmon-Timestamp"],
        body=received.body,
        signature=received.headers["X-Costmon-Signature"],
    )
    # The condition still holds a minute later: no second notification within the cooldown.
    assert evaluate(django_capture_on_commit_callbacks).notified == 0
    assert len(receiver.requests) == 1
    with unscoped():
        notification = Notification.objects.for_tenant(acme).get()
    assert (notification.status, notification.attempts, notification.response_code) == (
        "sent",
        1,
        200,
    )


def test_while_it_holds_it_reminds_only_after_the_cooldown(
    acme, ingest_client, webhook, receiver, frozen, django_capture_on_commit_callbacks
):
    make_rule(acme, [webhook], kind="spend", threshold_usd=Decimal("0.001"), cooldown_minutes=60)
    post_usage(ingest_client, today())
    evaluate(django_capture_on_commit_callbacks)
    frozen.shift(59 * 60)
    evaluate(django_capture_on_commit_callbacks)
    frozen.shift(60)
    evaluate(django_capture_on_commit_callbacks)
    assert [r.json["type"] for r in receiver.requests] == [
        "costmon.alert",
        "costmon.alert.reminder",
    ]


def test_a_budget_alerts_once_per_level_per_period(
    acme, ingest_client, webhook, receiver, django_capture_on_commit_callbacks
):
    budget_create(
        tenant=acme, data={"name": "Monthly", "limit_usd": Decimal("0.003"), "thresholds": [80, 95]}
    )
    make_rule(acme, [webhook], kind="budget")
    post_usage(ingest_client, [today(event_id="a"), today(event_id="b")])  # 90%
    evaluate(django_capture_on_commit_callbacks)
    evaluate(django_capture_on_commit_callbacks)
    post_usage(ingest_client, today(event_id="c"))  # 135%
    evaluate(django_capture_on_commit_callbacks)
    evaluate(django_capture_on_commit_callbacks)
    titles = [r.json["title"] for r in receiver.requests]
    assert titles == [
        "Budget 'Monthly' passed its warning threshold (90.0%)",
        "Budget 'Monthly' is exhausted (135.0%)",
    ]
    assert [r.json["severity"] for r in receiver.requests] == ["warning", "critical"]
    assert receiver.requests[1].json["figure"] == "$0.00405"


def test_a_per_user_budget_alerts_for_each_user_separately(
    acme, ingest_client, webhook, receiver, django_capture_on_commit_callbacks
):
    budget_create(
        tenant=acme,
        data={"name": "Per user", "scope": "every_end_user", "limit_usd": Decimal("0.001")},
    )
    make_rule(acme, [webhook], kind="budget")
    post_usage(
        ingest_client,
        [
            today(event_id="a", end_user="ann"),
            today(event_id="b", end_user="bo"),
            today(event_id="c", end_user="cy", input_tokens=10, output_tokens=0),
        ],
    )
    evaluate(django_capture_on_commit_callbacks)
    assert sorted(r.json["title"] for r in receiver.requests) == [
        "Budget 'Per user' for ann is exhausted (135.0%)",
        "Budget 'Per user' for bo is exhausted (135.0%)",
    ]


def test_a_projection_above_the_threshold_alerts(
    acme, ingest_client, webhook, receiver, django_capture_on_commit_callbacks
):
    make_rule(acme, [webhook], kind="projected", threshold_usd=Decimal("0.005"))
    post_usage(ingest_client, [today(event_id="a"), today(event_id="b")])
    evaluate(django_capture_on_commit_callbacks)
    # $0.0027 in 20.5 of 30 days projects to $0.0027 * 30 / 20.5 = $0.003951219: below $0.005
    assert receiver.requests == []
    post_usage(ingest_client, today(event_id="c"))  # $0.00405 -> $0.005926829
    evaluate(django_capture_on_commit_callbacks)
    [received] = receiver.requests
    # Shown by the one money rule: three significant digits below a dollar.
    assert (received.json["title"], received.json["figure"]) == (
        "Spend is on track for $0.00593 in November 2026",
        "$0.00593",
    )


def test_a_spike_against_the_same_hour_alerts_but_a_quiet_hour_does_not(
    acme, ingest_client, webhook, receiver, django_capture_on_commit_callbacks
):
    make_rule(
        acme,
        [webhook],
        kind="spike",
        multiplier=Decimal(2),
        trailing_days=7,
        min_volume=Decimal("0.003"),
    )
    # Usual: one call at 11:xx on each of the last 7 days; now four in the last hour (11:00-12:00).
    post_usage(
        ingest_client,
        [
            event(event_id=f"d{d}", occurred_at=f"2026-11-{21 - d:02d}T11:30:00Z")
            for d in range(1, 8)
        ],
    )
    post_usage(
        ingest_client, [today(event_id="n1"), today(event_id="n2")]
    )  # 2x, $0.0027: below min volume
    evaluate(django_capture_on_commit_callbacks)
    assert receiver.requests == []
    post_usage(ingest_client, [today(event_id="n3"), today(event_id="n4")])  # 4x usual, $0.0054
    evaluate(django_capture_on_commit_callbacks)
    [received] = receiver.requests
    assert received.json["title"] == "Cost spike: $0.0054 in the hour from 11:00 (4.0x usual)"


def test_cache_hit_and_error_rates_alert_past_their_thresholds_with_enough_calls(
    acme, ingest_client, webhook, receiver, django_capture_on_commit_callbacks
):
    make_rule(acme, [webhook], kind="cache_hit_rate", min_volume=Decimal(4))  # default target 70%
    make_rule(acme, [webhook], kind="error_rate", min_volume=Decimal(4))  # default 5%
    post_usage(
        ingest_client,
        [
            today(event_id="a", cache_hit=True),
            today(event_id="b", status="error"),
            today(event_id="c"),
        ],
    )
    evaluate(django_capture_on_commit_callbacks)
    assert receiver.requests == []  # 3 calls: below the minimum volume
    post_usage(ingest_client, today(event_id="d", cache_hit=True))
    evaluate(django_capture_on_commit_callbacks)
    assert sorted(r.json["title"] for r in receiver.requests) == [
        "Cache hit rate today is 50.0%, below 70.0%",
        "Error rate today is 25.0%, above 5.0%",
    ]


def test_an_unpriced_model_alerts_once_a_day_per_model(
    acme, ingest_client, webhook, receiver, django_capture_on_commit_callbacks
):
    make_rule(acme, [webhook], kind="unpriced", severity="info")
    post_usage(
        ingest_client,
        [
            today(event_id="a", provider="newco", model="brainy-1"),
            today(event_id="b", provider="newco", model="brainy-1"),
        ],
    )
    evaluate(django_capture_on_commit_callbacks)
    evaluate(django_capture_on_commit_callbacks)
    [received] = receiver.requests
    assert (received.json["title"], received.json["figure"]) == (
        "Unpriced model seen: newco/brainy-1",
        "2 calls",
    )


def test_an_emergency_stop_trip_and_lift_are_announced_at_once(
    acme, webhook, receiver, django_capture_on_commit_callbacks
):
    make_rule(acme, [webhook], kind="emergency_stop")
    with django_capture_on_commit_callbacks(execute=True):
        emergency_stop_trip(tenant=acme, reason="runaway agent")
    with django_capture_on_commit_callbacks(execute=True):
        emergency_stop_lift(tenant=acme, reason="fixed")
    assert [(r.json["severity"], r.json["title"]) for r in receiver.requests] == [
        ("critical", "Emergency stop tripped (tenant): every LLM call is refused"),
        ("info", "Emergency stop lifted (tenant): calls are allowed again"),
    ]


def test_a_cleared_condition_resolves_and_optionally_says_so(
    acme, ingest_client, webhook, receiver, frozen, django_capture_on_commit_callbacks
):
    make_rule(
        acme,
        [webhook],
        kind="spend",
        period="day",
        threshold_usd=Decimal("0.001"),
        notify_resolved=True,
    )
    post_usage(ingest_client, today())
    evaluate(django_capture_on_commit_callbacks)
    frozen.move_to("2026-11-22T00:01:00Z")  # a new day: today's spend is $0
    evaluate(django_capture_on_commit_callbacks)
    assert [r.json["type"] for r in receiver.requests] == [
        "costmon.alert",
        "costmon.alert.resolved",
    ]
    with unscoped():
        assert Alert.objects.for_tenant(acme).get().status == "resolved"


def test_rules_of_other_tenants_never_see_acmes_spend(
    acme, outsider, outsider_client, webhook, receiver, django_capture_on_commit_callbacks
):
    make_rule(acme, [webhook], kind="spend", threshold_usd=Decimal("0.001"))
    post_usage(outsider_client, [today(event_id="a"), today(event_id="b")])
    evaluate(django_capture_on_commit_callbacks)
    assert receiver.requests == []
