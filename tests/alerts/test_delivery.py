"""Delivery: recorded per channel, retried when it can succeed later, exactly once under races."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from alerts.models import Alert, Channel, Notification
from alerts.services import (
    alert_rules_evaluate,
    channel_save,
    channel_send_test,
    notification_deliver,
)
from costmon.core.tenancy import unscoped
from tests.alerts.conftest import make_rule
from tests.helpers import event, post_usage

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "frozen")]


def spend_rule(acme, channels):
    return make_rule(acme, channels, kind="spend", threshold_usd=Decimal("0.001"))


def fire(acme, ingest_client, capture, channels):
    """Raise one alert; return its notifications (not yet delivered)."""
    spend_rule(acme, channels)
    post_usage(ingest_client, event(occurred_at="2026-11-21T11:00:00Z"))
    with capture(execute=False):
        alert_rules_evaluate(kinds=["spend"])
    with unscoped():
        return list(Notification.objects.for_tenant(acme).order_by("pk"))


def test_a_transient_failure_is_retried_with_backoff_and_recorded(
    acme, ingest_client, webhook, receiver, django_capture_on_commit_callbacks
):
    [notification] = fire(acme, ingest_client, django_capture_on_commit_callbacks, [webhook])
    receiver.status = 503
    outcome = notification_deliver(notification_id=notification.pk)
    assert (outcome.status, outcome.retry_in) == ("retrying", 30)
    with unscoped():
        notification.refresh_from_db()
    assert (notification.status, notification.attempts, notification.response_code) == (
        "retrying",
        1,
        503,
    )
    assert "503" in notification.error
    with unscoped():
        webhook.refresh_from_db()
    assert webhook.is_enabled and "503" in webhook.last_error
    receiver.status = 500
    assert notification_deliver(notification_id=notification.pk).retry_in == 60
    receiver.status = 200
    assert notification_deliver(notification_id=notification.pk).status == "sent"
    with unscoped():
        notification.refresh_from_db()
    assert (notification.status, notification.attempts, notification.error) == ("sent", 3, "")
    assert notification_deliver(notification_id=notification.pk) is None  # done: never sent twice
    assert len(receiver.requests) == 3


def test_a_gone_endpoint_disables_the_channel_and_says_why(
    acme, ingest_client, webhook, receiver, django_capture_on_commit_callbacks
):
    [notification] = fire(acme, ingest_client, django_capture_on_commit_callbacks, [webhook])
    receiver.status = 410
    assert notification_deliver(notification_id=notification.pk).status == "failed"
    with unscoped():
        webhook.refresh_from_db()
    assert webhook.is_enabled is False
    assert "410" in webhook.disabled_reason
    with unscoped():
        notification.refresh_from_db()
    assert (notification.status, notification.response_code) == ("failed", 410)


def test_a_failing_channel_never_holds_up_another(
    acme, ingest_client, webhook, receiver, django_capture_on_commit_callbacks, settings
):
    with unscoped():
        dead = channel_save(
            channel=Channel(
                tenant=acme, name="dead", kind="webhook", config={"url": "http://127.0.0.1:9/x"}
            )
        )
    notifications = fire(acme, ingest_client, django_capture_on_commit_callbacks, [dead, webhook])
    outcomes = {
        n.channel_id: notification_deliver(notification_id=n.pk).status for n in notifications
    }
    assert outcomes == {dead.pk: "retrying", webhook.pk: "sent"}
    assert len(receiver.requests) == 1


def test_gives_up_after_the_last_attempt(
    acme, ingest_client, webhook, receiver, django_capture_on_commit_callbacks
):
    [notification] = fire(acme, ingest_client, django_capture_on_commit_callbacks, [webhook])
    receiver.status = 500
    statuses = [notification_deliver(notification_id=notification.pk).status for _ in range(5)]
    assert statuses == ["retrying"] * 4 + ["failed"]
    assert notification_deliver(notification_id=notification.pk) is None


@pytest.mark.django_db(transaction=True)
def test_two_workers_evaluating_at_once_send_one_alert(
    acme, ingest_client, prices, receiver, settings
):
    with unscoped():
        hook = channel_save(
            channel=Channel(tenant=acme, name="hook", kind="webhook", config={"url": receiver.url})
        )
    spend_rule(acme, [hook])
    post_usage(ingest_client, event(occurred_at="2026-11-21T11:00:00Z"))
    barrier = threading.Barrier(6)

    def worker() -> None:
        from django.db import connection

        barrier.wait()
        alert_rules_evaluate(kinds=["spend"])  # commits for real: deliveries run (eager) on commit
        connection.close()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with unscoped():
        assert Alert.objects.for_tenant(acme).count() == 1
        assert Notification.objects.for_tenant(acme).count() == 1
    assert len(receiver.requests) == 1


@pytest.mark.usefixtures("in_acme")  # as the API calls it, in the channel's tenant context
def test_a_test_notification_reports_what_happened(acme, webhook, receiver):
    notification = channel_send_test(channel=webhook)
    assert (notification.status, notification.kind) == ("sent", "test")
    assert receiver.requests[0].json["type"] == "costmon.test"
    receiver.status = 404
    failed = channel_send_test(channel=webhook)
    assert (failed.status, failed.response_code) == ("failed", 404)
