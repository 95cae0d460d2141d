"""Raw events in monthly partitions (PostgreSQL): created ahead and on demand, idempotency
across partition boundaries, retention by whole partitions. On SQLite (one plain table) the same
API behaviour holds, and retention deletes rows."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
import time_machine
from django.db import connection, connections, transaction
from django.db.models import Sum
from rest_framework.test import APIClient

from costmon.core.tenancy import tenant_context, unscoped
from tests.helpers import event, post_usage
from usage.bulk import usage_bulk_load
from usage.ingest import parse_batch
from usage.models import HourlyRollup, ModelHourlyRollup, TagHourlyRollup, UsageEvent
from usage.partitions import (
    KnownMonths,
    create_partition,
    partition_exists,
    partition_name,
    partitions,
)
from usage.tasks import apply_retention, create_event_partitions

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
PG = pytest.mark.skipif("connection.vendor != 'postgresql'")
COST = 1_350_000  # one default event: 450 in, 180 out on claude-haiku-4-5


def months() -> list[str]:
    with connection.cursor() as cursor:
        return [name for name, _ in partitions(cursor)]


def stored(tenant) -> list[tuple[str, str]]:
    with unscoped():
        rows = UsageEvent.objects.for_tenant(tenant).order_by("occurred_at", "event_id")
        return [(e.event_id, e.occurred_at.isoformat()) for e in rows]


def rollup_cost(tenant) -> tuple[int, int]:
    with unscoped():
        hourly = HourlyRollup.objects.for_tenant(tenant).aggregate(
            c=Sum("calls"), s=Sum("cost_nanos")
        )
        by_model = ModelHourlyRollup.objects.for_tenant(tenant).aggregate(
            c=Sum("calls"), s=Sum("cost_nanos")
        )
    assert (hourly["c"], hourly["s"]) == (by_model["c"], by_model["s"])
    return hourly["c"] or 0, hourly["s"] or 0


@PG
def test_beat_creates_this_month_and_the_next_two_once():
    with time_machine.travel("2031-11-10T12:00:00Z", tick=False):
        assert create_event_partitions() == 3
        assert create_event_partitions() == 0
    assert {
        "usage_usageevent_p203111",
        "usage_usageevent_p203112",
        "usage_usageevent_p203201",
    } <= set(months())
    assert "usage_usageevent_p203202" not in months()


@PG
def test_beat_keeps_statistics_of_the_events_table_as_a_whole(acme, ingest_client, prices):
    batch = [event(event_id=f"e{i}", end_user=f"u{i % 3}") for i in range(9)]
    assert post_usage(ingest_client, batch).status_code == 201
    create_event_partitions()
    with connection.cursor() as cursor:
        # pg_stats hides a table under row-level security; its row count says it was analyzed.
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'usage_usageevent'")
        assert cursor.fetchone()[0] == 9  # autovacuum never analyzes the partitioned parent


@PG
def test_a_partition_fails_closed_when_read_directly(acme, outsider, ingest_client):
    assert post_usage(ingest_client, event(occurred_at="2024-03-05T10:00:00Z")).status_code == 201
    count = f"SELECT count(*) FROM {partition_name(datetime(2024, 3, 1, tzinfo=UTC))}"  # noqa: S608
    with tenant_context(outsider), connection.cursor() as cursor:
        cursor.execute(count)
        assert cursor.fetchone()[0] == 0
    with tenant_context(acme), connection.cursor() as cursor:
        cursor.execute(count)
        assert cursor.fetchone()[0] == 1


def test_a_backfill_of_old_months_is_stored_and_counted_once(
    acme, outsider, ingest_client, outsider_client
):
    old = [
        event(event_id="a", occurred_at="2024-03-05T10:00:00Z"),
        event(event_id="b", occurred_at="2024-01-31T23:59:59.999999Z"),
        event(event_id="c", occurred_at="2024-02-01T00:00:00Z"),
    ]
    response = post_usage(ingest_client, old)
    assert response.status_code == 201
    assert [r["duplicate"] for r in response.json()["events"]] == [False] * 3
    assert [r["duplicate"] for r in post_usage(ingest_client, old).json()["events"]] == [True] * 3
    assert stored(acme) == [
        ("b", "2024-01-31T23:59:59.999999+00:00"),
        ("c", "2024-02-01T00:00:00+00:00"),
        ("a", "2024-03-05T10:00:00+00:00"),
    ]
    assert rollup_cost(acme) == (3, 3 * COST)
    assert stored(outsider) == []
    if connection.vendor == "postgresql":
        assert {"usage_usageevent_p202401", "usage_usageevent_p202402"} <= set(months())
        assert "usage_usageevent_p202404" not in months()


def test_a_resend_is_counted_once_after_the_next_months_partition_exists(
    acme, outsider, ingest_client, outsider_client
):
    batch = [
        event(event_id="last", occurred_at="2033-01-31T23:59:59.999999Z"),
        event(event_id="first", occurred_at="2033-02-01T00:00:00Z"),
    ]
    with time_machine.travel("2033-01-31T23:59:59Z", tick=False):
        sent = post_usage(ingest_client, batch[:1])
        assert sent.json()["events"][0]["duplicate"] is False
        post_usage(outsider_client, batch)
    with time_machine.travel("2033-02-01T00:00:05Z", tick=False):
        assert create_event_partitions() in (0, 1, 2, 3)  # February's exists by now either way
        results = post_usage(ingest_client, batch).json()["events"]
        assert [r["duplicate"] for r in results] == [True, False]
    with time_machine.travel("2033-07-15T08:00:00Z", tick=False):  # months later
        results = post_usage(ingest_client, batch).json()["events"]
        assert [r["duplicate"] for r in results] == [True, True]
        assert results[0]["cost_usd"] == results[1]["cost_usd"]
    assert stored(acme) == [
        ("last", "2033-01-31T23:59:59.999999+00:00"),
        ("first", "2033-02-01T00:00:00+00:00"),
    ]
    assert rollup_cost(acme) == (2, 2 * COST)
    assert len(stored(outsider)) == 2


def test_the_same_id_at_another_time_is_another_event(acme, outsider, ingest_client):
    """The idempotency key is (event id, occurred_at): a resend carries both unchanged."""
    one = event(event_id="same", occurred_at="2026-10-31T10:00:00Z")
    other = event(event_id="same", occurred_at="2026-11-01T10:00:00Z", input_tokens=900)
    first = post_usage(ingest_client, one).json()["events"][0]
    second = post_usage(ingest_client, other).json()["events"][0]
    assert (first["duplicate"], second["duplicate"]) == (False, False)
    assert first["cost_usd"] != second["cost_usd"]
    # Each resend is a duplicate of its own stored event, and reports that event's cost.
    assert post_usage(ingest_client, [one]).json()["events"][0] == {**first, "duplicate": True}
    assert post_usage(ingest_client, [other]).json()["events"][0] == {**second, "duplicate": True}
    # Within one request an id counts once, whatever the times: the first copy.
    again = post_usage(ingest_client, [other, one]).json()["events"]
    assert again == [{**second, "duplicate": True}, {**second, "duplicate": True}]
    assert [e for e, _ in stored(acme)] == ["same", "same"]
    assert rollup_cost(acme)[0] == 2
    assert stored(outsider) == []


def test_a_bulk_load_into_old_months_creates_their_partitions_and_skips_resends(acme, outsider):
    batch = parse_batch(
        [
            event(
                event_id=f"bulk-{i}",
                occurred_at=f"2024-{1 + i % 3:02d}-0{1 + i % 7}T0{i % 10}:00:00Z",
                tags={"team": "x"},
            )
            for i in range(30)
        ]
    )
    assert usage_bulk_load(tenant=acme, events=batch, chunk=7).inserted == 30
    assert usage_bulk_load(tenant=acme, events=batch, chunk=11).inserted == 0
    assert len(stored(acme)) == 30
    assert rollup_cost(acme) == (30, 30 * COST)
    with unscoped():
        tags = TagHourlyRollup.objects.for_tenant(acme).aggregate(c=Sum("calls"))["c"]
    assert tags == 30
    assert stored(outsider) == []
    if connection.vendor == "postgresql":
        assert {f"usage_usageevent_p20240{m}" for m in (1, 2, 3)} <= set(months())


def test_retention_drops_whole_months_and_keeps_rollups(
    acme, outsider, ingest_client, outsider_client, settings
):
    settings.COSTMON_RETENTION_DAYS = 30
    sent = [
        event(event_id="sep", occurred_at="2026-09-30T23:00:00Z"),
        event(event_id="oct", occurred_at="2026-10-01T00:00:00Z"),  # October ends after the cutoff
        event(event_id="nov", occurred_at="2026-11-20T00:00:00Z"),
    ]
    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        post_usage(ingest_client, sent)
        post_usage(outsider_client, sent[:1])
        before = rollup_cost(acme)
        statements: list[str] = []

        def record(execute, sql, params, many, context):
            statements.append(sql)
            return execute(sql, params, many, context)

        with connection.execute_wrapper(record):
            removed = apply_retention()
    kept = [e for e, _ in stored(acme)]
    assert rollup_cost(acme) == before == (3, 3 * COST)
    assert stored(outsider) == []
    if connection.vendor == "postgresql":
        assert removed == 2  # September, both tenants
        assert kept == ["oct", "nov"]  # whole months: October is kept entirely
        assert "usage_usageevent_p202609" not in months()
        deletes = [s for s in statements if s.lstrip().upper().startswith("DELETE")]
        # No event row is deleted; only the small ledger of time-less events' stamps is.
        assert all('"usage_eventstamp"' in s for s in deletes)
        assert any(s.startswith("DROP TABLE usage_usageevent_p202609") for s in statements)
    else:
        assert removed == 3  # rows before 2026-10-22
        assert kept == ["nov"]


@PG
@pytest.mark.django_db(transaction=True)
def test_concurrent_resends_across_a_new_month_count_once(acme, outsider, ingest_client):
    """Four clients send the same batch at once into a month with no partition yet."""
    batch = [
        event(event_id=f"c{i}", occurred_at=f"2024-06-{1 + i % 28:02d}T10:00:00Z")
        for i in range(50)
    ]
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def send() -> None:
        try:
            barrier.wait()
            client = APIClient()
            client.credentials(**ingest_client._credentials)
            statuses.append(post_usage(client, batch).status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [201] * 4
    assert len(stored(acme)) == 50
    assert rollup_cost(acme) == (50, 50 * COST)
    assert stored(outsider) == []
    assert "usage_usageevent_p202406" in months()


@PG
@pytest.mark.django_db(transaction=True)
def test_the_nightly_task_detaches_concurrently_outside_a_transaction(
    acme, outsider, ingest_client, outsider_client, settings
):
    settings.COSTMON_RETENTION_DAYS = 30
    with time_machine.travel("2024-09-21T12:00:00Z", tick=False):
        post_usage(
            ingest_client,
            [
                event(event_id="jul", occurred_at="2024-07-31T23:59:59Z"),
                event(event_id="aug", occurred_at="2024-08-01T00:00:00Z"),
            ],
        )
        post_usage(outsider_client, event(event_id="jul", occurred_at="2024-07-10T00:00:00Z"))
        statements: list[str] = []

        def record(execute, sql, params, many, context):
            statements.append(sql)
            return execute(sql, params, many, context)

        with connection.execute_wrapper(record):
            assert apply_retention() == 2
    assert [e for e, _ in stored(acme)] == ["aug"]
    assert stored(outsider) == []
    assert rollup_cost(acme) == (2, 2 * COST)
    assert "usage_usageevent_p202407" not in months()
    assert "usage_usageevent_p202408" in months()
    assert any(
        s.endswith("DETACH PARTITION usage_usageevent_p202407 CONCURRENTLY") for s in statements
    )
    deletes = [s for s in statements if s.lstrip().upper().startswith("DELETE")]
    assert all('"usage_eventstamp"' in s for s in deletes)  # no event row, only old stamps


def test_a_month_is_trusted_only_until_retention_could_drop_it():
    known = KnownMonths()
    march = datetime(2030, 3, 1, tzinfo=UTC)
    with time_machine.travel("2030-03-15T00:00:00Z", tick=False):
        assert known.missing([march]) == [march]
        known.remember(march, 30)
        assert known.missing([march]) == []
    # Retention (30 days) may drop March from 2030-05-01 on: checked again from then.
    with time_machine.travel("2030-04-30T23:59:59Z", tick=False):
        assert known.missing([march]) == []
    with time_machine.travel("2030-05-01T00:00:00Z", tick=False):
        assert known.missing([march]) == [march]
        known.remember(march, 0)  # retention off: for good
    with time_machine.travel("2090-01-01T00:00:00Z", tick=False):
        assert known.missing([march]) == []


@PG
@pytest.mark.django_db(transaction=True)
def test_a_month_created_by_a_concurrent_transaction_is_seen_after_its_commit():
    """Two writers bring the same new month (parallel seeding did): the second one waits for
    the first one's lock, then must see the committed partition, not create it again. Its
    backend looked the name up before the commit, so a cached catalog answer would be stale."""
    month = datetime(2019, 4, 1, tzinfo=UTC)
    a_created, b_looked = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def first() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                results["a"] = create_partition(cursor, month)
                a_created.set()
                b_looked.wait(10)
                time.sleep(0.3)  # the second one is waiting for the month's lock
        finally:
            connections.close_all()

    def second() -> None:
        try:
            a_created.wait(10)
            with transaction.atomic(), connection.cursor() as cursor:
                results["before"] = partition_exists(cursor, month)
                b_looked.set()
                results["b"] = create_partition(cursor, month)
        except Exception as exc:  # noqa: BLE001 - the failure under test
            results["b"] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == {"a": True, "before": False, "b": False}
        assert partition_name(month) in months()
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {partition_name(month)}")
