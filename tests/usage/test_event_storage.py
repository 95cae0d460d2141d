"""Token counts that are zero for most calls (cached input, cache writes, reasoning) are stored
as NULL and read back as 0 everywhere: the event list, sums over events, the rollups.
Migration 0017 on a copy with data: the rows already stored keep their zeros, and backwards the
NULLs become zeros again."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Sum

from costmon.core.tenancy import tenant_context, unscoped
from tests.conftest import restore_test_partitions
from tests.helpers import event, post_usage
from usage.models import HourlyRollup, UsageEvent

COUNTS = ("cached_input_tokens", "cache_write_tokens", "reasoning_tokens")
NOW = "2026-11-21T12:00:00Z"


def _stored(event_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """The three counts as the table holds them (NULL as None), by event id."""
    marks = ", ".join(["%s"] * len(event_ids))
    with unscoped(), connection.cursor() as cursor:
        cursor.execute(
            f"SELECT event_id, {', '.join(COUNTS)} FROM usage_usageevent "  # noqa: S608
            f"WHERE event_id IN ({marks})",
            event_ids,
        )
        return {r[0]: tuple(r[1:]) for r in cursor.fetchall()}


@pytest.mark.django_db
@pytest.mark.usefixtures("prices")
def test_zero_counts_are_stored_as_null_and_read_as_zero(
    ingest_client, read_client, outsider_client, acme, outsider
):
    with time_machine.travel(NOW, tick=False):
        # haiku 4.5: 200 plain input at $1, 600 cache reads at $0.10, 200 cache writes at
        # $1.25, 100 output at $5: $0.00101; the plain call: 450 * 1 + 180 * 5 = $0.00135.
        sent = [
            event(event_id="plain"),
            event(
                event_id="cached",
                input_tokens=1000,
                cached_input_tokens=600,
                cache_write_tokens=200,
                output_tokens=100,
                reasoning_tokens=30,
            ),
        ]
        costs = [e["cost_usd"] for e in post_usage(ingest_client, sent).json()["events"]]
        assert costs == ["0.00135", "0.00101"]
        post_usage(outsider_client, event(event_id="theirs", cached_input_tokens=7))
        listed = read_client.get("/api/v1/usage/").json()

    assert _stored(["plain", "cached", "theirs"]) == {
        "plain": (None, None, None),
        "cached": (600, 200, 30),
        "theirs": (7, None, None),
    }
    rows = {r["event_id"]: r for r in listed["results"]}
    assert set(rows) == {"plain", "cached"}
    assert [rows["plain"][c] for c in COUNTS] == [0, 0, 0]
    assert [rows["cached"][c] for c in COUNTS] == [600, 200, 30]
    with tenant_context(acme):
        plain = UsageEvent.objects.get(event_id="plain")
        assert [getattr(plain, c) for c in COUNTS] == [0, 0, 0]
        only_plain = UsageEvent.objects.filter(event_id="plain")
        assert only_plain.aggregate(**{c: Sum(c) for c in COUNTS}) == dict.fromkeys(COUNTS, 0)
        rollup = HourlyRollup.objects.aggregate(**{c: Sum(c) for c in COUNTS})
        assert rollup == {
            "cached_input_tokens": 600,
            "cache_write_tokens": 200,
            "reasoning_tokens": 30,
        }
    with tenant_context(outsider):
        assert HourlyRollup.objects.aggregate(c=Sum("cached_input_tokens")) == {"c": 7}
        assert UsageEvent.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_0017_keeps_stored_zeros_and_gives_zeros_back_going_backwards(acme, outsider):
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    before = [("usage", "0016_event_rewrites")]
    at = datetime(2026, 11, 20, 10, tzinfo=UTC)
    try:
        executor.migrate(before)
        old = executor.loader.project_state(before).apps.get_model("usage", "UsageEvent")
        common = {"occurred_at": at, "provider_id": 1, "model_id": 1, "operation_id": 1}
        with unscoped():
            old.objects.bulk_create(
                [
                    old(tenant_id=acme.pk, event_id="zero", end_user_id=1, **common),
                    old(
                        tenant_id=outsider.pk,
                        event_id="some",
                        end_user_id=1,
                        cached_input_tokens=5,
                        reasoning_tokens=3,
                        **common,
                    ),
                ]
            )
        executor = MigrationExecutor(connection)
        executor.migrate(latest)
        # Stored before: zeros kept (nothing rewritten), and read as such.
        assert _stored(["zero", "some"]) == {"zero": (0, 0, 0), "some": (5, 0, 3)}
        with unscoped():
            UsageEvent.objects.unscoped().filter(event_id="zero").update(
                cached_input_tokens=None, cache_write_tokens=None, reasoning_tokens=None
            )
            assert UsageEvent.objects.unscoped().get(event_id="zero").cached_input_tokens == 0
        executor = MigrationExecutor(connection)
        executor.migrate(before)
        assert _stored(["zero", "some"]) == {"zero": (0, 0, 0), "some": (5, 0, 3)}
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(latest)
        restore_test_partitions()
