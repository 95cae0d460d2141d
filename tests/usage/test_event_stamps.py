"""Events sent without occurred_at keep the time they first arrived (usage.EventStamp), so a
resend (same id, still without a time) is counted once; the cost explanation reads an event by
its key when given its time."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import pytest
import time_machine
from django.db import connection, connections
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from costmon.core.tenancy import tenant_context, unscoped
from tests.helpers import event, post_usage, stored_events
from usage.fastparse import parse_valid_batch
from usage.ingest import parse_batch
from usage.maintenance import usage_tenant_reset
from usage.models import EventStamp, ModelHourlyRollup
from usage.tasks import apply_retention

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
PG = pytest.mark.skipif("connection.vendor != 'postgresql'")
COST = 1_350_000  # one default event: 450 in, 180 out on claude-haiku-4-5


def timeless(**overrides):
    sent = event(**overrides)
    del sent["occurred_at"]
    return sent


def stored(tenant) -> list[tuple[str, str, int]]:
    """The tenant's events from the configured event store, oldest first."""
    with unscoped():
        rows = sorted(stored_events(tenant), key=lambda e: (e.occurred_at, e.event_id))
        return [(e.event_id, e.occurred_at.isoformat(), e.cost_nanos) for e in rows]


def stamps(tenant) -> list[tuple[str, str]]:
    with unscoped():
        rows = EventStamp.objects.for_tenant(tenant).order_by("event_id")
        return [(s.event_id, s.occurred_at.isoformat()) for s in rows]


def rollup(tenant) -> tuple[int, int]:
    with unscoped():
        sums = ModelHourlyRollup.objects.for_tenant(tenant).aggregate(
            c=Sum("calls"), s=Sum("cost_nanos")
        )
    return sums["c"] or 0, sums["s"] or 0


def test_both_parsers_mark_the_events_the_server_stamps():
    """Stamped: the caller's id without a time; a made-up id is never resent."""
    now = datetime(2033, 3, 10, 12, 0, tzinfo=UTC)
    sent = [timeless(event_id="a"), event(event_id="b"), timeless(event_id=None)]
    slow = parse_batch(sent, now=now)
    fast = parse_valid_batch(json.dumps(sent).encode(), now=now)
    assert fast is not None
    for parsed in (slow, fast):
        assert [e.stamped for e in parsed] == [True, False, False]
        assert parsed[0].occurred_at == now


def test_a_resend_without_a_time_is_a_duplicate_with_the_stored_cost_across_months(
    acme, outsider, ingest_client, outsider_client, store
):
    with time_machine.travel("2033-01-31T23:59:59Z", tick=False):
        first = post_usage(ingest_client, timeless(event_id="t1", cost_usd="0.5"))
        assert first.status_code == 201
        assert first.json()["events"][0]["duplicate"] is False
    with time_machine.travel("2033-02-01T00:00:05Z", tick=False):
        # The outsider's own "t1" is its own event, stamped with its own first arrival.
        assert post_usage(outsider_client, timeless(event_id="t1")).status_code == 201
        again = post_usage(ingest_client, [timeless(event_id="t1", cost_usd="0.7"), event()])
        assert again.status_code == 201
        results = again.json()["events"]
    assert results[0] == {
        "event_id": "t1",
        "cost_usd": "0.5",
        "cost_source": "caller",
        "duplicate": True,
    }
    assert results[1]["duplicate"] is False
    with time_machine.travel("2033-09-15T08:00:00Z", tick=False):  # months later, in a batch
        later = post_usage(ingest_client, [timeless(event_id="t1"), timeless(event_id="t2")])
        assert [r["duplicate"] for r in later.json()["events"]] == [True, False]
        assert later.json()["events"][0]["cost_usd"] == "0.5"
    assert stored(acme) == [
        ("evt-1", "2026-11-20T10:15:00+00:00", COST),
        ("t1", "2033-01-31T23:59:59+00:00", 500_000_000),
        ("t2", "2033-09-15T08:00:00+00:00", COST),
    ]
    assert rollup(acme) == (3, 500_000_000 + 2 * COST)
    assert stamps(acme) == [
        ("t1", "2033-01-31T23:59:59+00:00"),
        ("t2", "2033-09-15T08:00:00+00:00"),
    ]
    assert stored(outsider) == [("t1", "2033-02-01T00:00:05+00:00", COST)]
    assert stamps(outsider) == [("t1", "2033-02-01T00:00:05+00:00")]
    with tenant_context(outsider):  # the manager: none of acme's
        assert list(EventStamp.objects.values_list("event_id", "tenant_id")) == [
            ("t1", outsider.pk)
        ]
    if connection.vendor == "postgresql":  # row-level security: a raw read fails closed too
        with tenant_context(outsider), connection.cursor() as cursor:
            cursor.execute("SELECT tenant_id FROM usage_eventstamp")
            assert cursor.fetchall() == [(outsider.pk,)]
            cursor.execute(
                "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class "
                "WHERE relname = 'usage_eventstamp'"
            )
            assert cursor.fetchone() == (True,)


def test_the_same_id_sent_with_a_time_is_another_event(acme, outsider, ingest_client, store):
    """The stamp applies to resends without a time only; a time given is the key as sent."""
    with time_machine.travel("2033-03-10T12:00:00Z", tick=False):
        post_usage(ingest_client, timeless(event_id="t1"))
        timed = post_usage(ingest_client, event(event_id="t1", occurred_at="2033-03-10T11:00:00Z"))
    assert timed.json()["events"][0]["duplicate"] is False
    assert [at for _, at, _ in stored(acme)] == [
        "2033-03-10T11:00:00+00:00",
        "2033-03-10T12:00:00+00:00",
    ]
    assert stored(outsider) == []


def test_events_with_a_time_or_without_an_id_pay_nothing(acme, outsider, ingest_client):
    with (
        time_machine.travel("2033-03-10T12:00:00Z", tick=False),
        CaptureQueriesContext(connection) as queries,
    ):
        sent = post_usage(
            ingest_client,
            [event(event_id=f"e{i}") for i in range(3)] + [timeless(event_id=None)],
        )
    assert sent.status_code == 201
    assert not [q["sql"] for q in queries if "usage_eventstamp" in q["sql"]]
    assert len(stored(acme)) == 4
    assert stamps(acme) == []
    assert stored(outsider) == []


@PG
@pytest.mark.django_db(transaction=True)
def test_concurrent_first_sends_of_a_timeless_event_store_one(acme, outsider, ingest_client):
    """Four clients send the same time-less events at once, each arriving at its own time."""
    batch = [timeless(event_id=f"c{i}") for i in range(20)]
    barrier = threading.Barrier(4)
    replies: list[tuple[int, list[bool]]] = []

    def send() -> None:
        try:
            barrier.wait()
            client = APIClient()
            client.credentials(**ingest_client._credentials)
            response = post_usage(client, batch)
            replies.append(
                (response.status_code, [r["duplicate"] for r in response.json()["events"]])
            )
        finally:
            connections.close_all()

    with time_machine.travel("2033-05-31T23:59:59.9Z", tick=True):  # may cross into June
        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [status for status, _ in replies] == [201] * 4
    # Each event is new in exactly one reply.
    for i in range(20):
        assert sorted(duplicates[i] for _, duplicates in replies) == [False, True, True, True]
    events = stored(acme)
    assert len(events) == 20
    assert rollup(acme) == (20, 20 * COST)
    assert [(eid, at) for eid, at, _ in events] == [
        (eid, at) for eid, at in sorted(stamps(acme), key=lambda s: (s[1], s[0]))
    ]
    assert stored(outsider) == []
    assert stamps(outsider) == []


def test_retention_forgets_stamps_older_than_the_cutoff(
    acme, outsider, ingest_client, outsider_client, settings
):
    settings.COSTMON_RETENTION_DAYS = 30
    with time_machine.travel("2033-01-05T10:00:00Z", tick=False):
        post_usage(ingest_client, timeless(event_id="old"))
        post_usage(outsider_client, timeless(event_id="old"))
    with time_machine.travel("2033-02-01T05:00:00Z", tick=False):
        post_usage(ingest_client, timeless(event_id="edge"))
    with time_machine.travel("2033-02-10T10:00:00Z", tick=False):
        post_usage(ingest_client, timeless(event_id="new"))
    with time_machine.travel("2033-03-05T10:00:00Z", tick=False):
        apply_retention()  # cutoff 2033-02-03
    new = ("new", "2033-02-10T10:00:00+00:00")
    if connection.vendor == "postgresql":
        # February's partition ends after the cutoff and stays whole: so do its stamps, or a
        # resend of "edge" would be stored again beside the kept event.
        assert stamps(acme) == [("edge", "2033-02-01T05:00:00+00:00"), new]
        assert [eid for eid, _, _ in stored(acme)] == ["edge", "new"]
    else:
        assert stamps(acme) == [new]
    assert stamps(outsider) == []


# --- GET /api/v1/usage/<event_id>/ -----------------------------------------------------------


def test_the_lookup_with_and_without_its_time(acme, outsider, ingest_client, read_client, store):
    with time_machine.travel("2033-03-10T12:00:00.250Z", tick=False):
        post_usage(
            ingest_client,
            [
                event(event_id="timed", occurred_at="2033-03-01T08:00:00Z"),
                timeless(event_id="stamped"),
            ],
        )
    with time_machine.travel("2033-03-10T12:00:01Z", tick=False):
        post_usage(
            ingest_client, event(event_id="timed", occurred_at="2033-03-02T08:00:00Z", cost_usd="2")
        )
    url = "/api/v1/usage/timed/"
    by_key = read_client.get(url, {"occurred_at": "2033-03-02T08:00:00Z"})
    assert by_key.status_code == 200
    assert (by_key.json()["occurred_at"], by_key.json()["cost_usd"]) == (
        "2033-03-02T08:00:00Z",
        "2",
    )
    offset = read_client.get(url + "?occurred_at=2033-03-02T09:00:00%2B01:00")
    assert offset.json()["occurred_at"] == "2033-03-02T08:00:00Z"
    naive = read_client.get(url, {"occurred_at": "2033-03-01T08:00:00"})  # UTC
    assert (naive.json()["occurred_at"], naive.json()["cost_usd"]) == (
        "2033-03-01T08:00:00Z",
        "0.00135",
    )
    assert read_client.get(url).status_code == 200  # without a time: one of the two
    missing = read_client.get(url, {"occurred_at": "2033-03-03T08:00:00Z"})
    assert missing.status_code == 404
    assert "2033-03-03T08:00:00Z" in missing.json()["detail"]
    stamped = read_client.get("/api/v1/usage/stamped/")
    assert stamped.status_code == 200
    assert stamped.json()["occurred_at"] == "2033-03-10T12:00:00.250000Z"
    assert stamped.json()["cost"]["cost_usd"] == "0.00135"
    if store.name != "postgres":
        return
    with CaptureQueriesContext(connection) as queries:
        assert read_client.get("/api/v1/usage/stamped/").status_code == 200
    event_reads = [q["sql"] for q in queries if 'FROM "usage_usageevent"' in q["sql"]]
    assert len(event_reads) == 1 and '"occurred_at" =' in event_reads[0]  # by its key


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yesterday", "occurred_at must be an ISO 8601 date-time"),
        ("2033-02-30T10:00:00Z", "is not a valid date-time"),
        ("", "occurred_at must be an ISO 8601 date-time"),
    ],
)
def test_a_bad_time_is_refused_with_what_to_send(acme, ingest_client, read_client, value, message):
    post_usage(ingest_client, event(event_id="x"))
    response = read_client.get("/api/v1/usage/x/", {"occurred_at": value})
    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert response.json()["errors"][0]["field"] == "occurred_at"


@pytest.mark.parametrize("value", ["1999-12-31T23:59:59Z", "0001-01-01T00:00:00+05:00"])
def test_a_time_no_event_can_have_finds_nothing(acme, ingest_client, read_client, value, store):
    """A valid date-time before 2000 (or out of range once shifted to UTC) is not a bad
    request, as the schema allows it: there is simply no event there."""
    post_usage(ingest_client, event(event_id="x"))
    response = read_client.get("/api/v1/usage/x/", {"occurred_at": value})
    assert response.status_code == 404
    assert "events are kept from 2000-01-01 on" in response.json()["detail"]


def test_an_outsider_finds_nothing(acme, outsider, ingest_client, outsider_client, store):
    with time_machine.travel("2033-03-10T12:00:00Z", tick=False):
        post_usage(ingest_client, [event(event_id="mine"), timeless(event_id="stamped")])
    assert outsider_client.get("/api/v1/usage/mine/").status_code == 404
    assert (
        outsider_client.get(
            "/api/v1/usage/mine/", {"occurred_at": "2026-11-20T10:15:00Z"}
        ).status_code
        == 404
    )
    assert outsider_client.get("/api/v1/usage/stamped/").status_code == 404
    assert (
        outsider_client.get(
            "/api/v1/usage/stamped/", {"occurred_at": "2033-03-10T12:00:00Z"}
        ).status_code
        == 404
    )


def test_a_reset_forgets_the_tenants_stamps_only(
    acme, outsider, ingest_client, outsider_client, store
):
    with time_machine.travel("2033-01-05T10:00:00Z", tick=False):
        post_usage(ingest_client, timeless(event_id="a"))
        post_usage(outsider_client, timeless(event_id="a"))
    usage_tenant_reset(tenant=acme)
    assert stamps(acme) == []
    assert stamps(outsider) == [("a", "2033-01-05T10:00:00+00:00")]
    with time_machine.travel("2033-01-06T10:00:00Z", tick=False):
        response = post_usage(ingest_client, timeless(event_id="a"))
    # Starting over: the resend is a new event, at the time it arrives now.
    assert response.json()["events"][0]["duplicate"] is False
    assert [(eid, at) for eid, at, _ in stored(acme)] == [("a", "2033-01-06T10:00:00+00:00")]
    assert [(eid, at) for eid, at, _ in stored(outsider)] == [("a", "2033-01-05T10:00:00+00:00")]
