"""End to end with a real Celery worker on the real Redis broker: usage in, a threshold crossed,
the task runs in the worker, and exactly one signed webhook arrives."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from alerts.models import Channel, Notification
from alerts.services import channel_save
from alerts.tasks import evaluate_frequent_rules
from alerts.transports.webhook import verify_signature
from costmon.celery import app
from tests.alerts.conftest import make_rule
from tests.helpers import event, post_usage, requires_redis

pytestmark = [pytest.mark.slow, requires_redis, pytest.mark.usefixtures("unscoped")]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker(transactional_db: Any) -> Iterator[subprocess.Popen[bytes]]:
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "costmon.settings",
        # The test database, as the role the tests act as (so row-level security applies).
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
        "DATABASE_ROLE": os.environ.get("DATABASE_ROLE", "costmon_app"),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": "tests-only-secret-key",
        "COSTMON_ALLOW_PRIVATE_WEBHOOKS": "true",
        "CELERY_TASK_ALWAYS_EAGER": "false",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "costmon",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=env,
    )
    app.conf.task_always_eager = False
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=1):
            assert process.poll() is None, "the worker exited"
            assert time.monotonic() < deadline, "the worker did not start within 60 s"
        yield process
    finally:
        app.conf.task_always_eager = True
        process.terminate()
        process.wait(timeout=30)


def wait_for(condition: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def test_a_crossed_threshold_reaches_the_webhook_once_through_the_worker(
    acme, prices, ingest_client, receiver, worker
):
    hook = channel_save(
        channel=Channel(
            tenant=acme,
            name="ops",
            kind="webhook",
            config={"url": receiver.url, "secret": "e2e-secret-e2e-secret"},
        )
    )
    make_rule(acme, [hook], kind="spend", period="day", threshold_usd=Decimal("0.002"))
    now = timezone.now().isoformat()
    assert (
        post_usage(
            ingest_client,
            [event(event_id="a", occurred_at=now), event(event_id="b", occurred_at=now)],
        ).status_code
        == 201
    )

    evaluate_frequent_rules.delay()  # what beat sends every minute
    wait_for(lambda: len(receiver.requests) == 1)
    evaluate_frequent_rules.delay()  # the next minute: the condition holds, no second page
    wait_for(lambda: Notification.objects.unscoped().filter(status="sent").exists())
    time.sleep(2)

    [received] = receiver.requests
    assert received.json["title"] == "Spend today is above $0.002"
    assert received.json["figure"] == "$0.0027"
    assert verify_signature(
        secret="e2e-secret-e2e-secret",
        timestamp=received.headers["X-Costmon-Timestamp"],
        body=received.body,
        signature=received.headers["X-Costmon-Signature"],
    )
    notification = Notification.objects.unscoped().get()
    assert (notification.status, notification.attempts, notification.response_code) == (
        "sent",
        1,
        200,
    )
