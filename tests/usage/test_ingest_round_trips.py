"""How many times one ingest waits for PostgreSQL: counted from libpq's own trace of the
connection (every message the client sends and receives), as the number of times the client
turns from sending to reading. A group of single events (usage.grouping) pays these once; they
are most of a single event's time on the server."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.db import DatabaseError, connection
from django.utils import timezone
from psycopg import pq

from budgets import counters
from budgets import redis as bredis
from costmon.core.cache import cache_get, cache_get_many, cache_set
from costmon.web.prometheus import totals
from tests.helpers import event, requires_postgresql, requires_redis
from usage import settled
from usage.ingest import parse_batch
from usage.models import HourlyRollup, TagHourlyRollup, UsageEvent
from usage.services import usage_record_batch
from usage.signals import batch_committing

pytestmark = [
    requires_postgresql,  # libpq's trace of PostgreSQL's wire protocol
    requires_redis,  # the budgets app's receivers run as in production
    pytest.mark.usefixtures("prices", "unscoped"),
]


def round_trips(call: Callable[[], Any]) -> list[list[str]]:
    """What `call` sent on the default connection, one list of messages per round trip: a
    run of messages sent, followed by a run received."""
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    with tempfile.TemporaryFile("w+") as trace:
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            call()
        finally:
            pgconn.untrace()
        trace.seek(0)
        lines = trace.read().splitlines()
    # A prepared statement is sent by name ("Bind ... "_pg3_1""): show its text instead.
    with connection.connection.cursor() as cursor:
        cursor.execute("SELECT name, statement FROM pg_prepared_statements")
        for name, statement in cursor.fetchall():
            lines = [line.replace(f' "{name}" ', f' "{statement}" ') for line in lines]
    trips: list[list[str]] = []
    sent: list[str] = []
    for line in lines:
        direction = line.split("\t", 1)[0]
        if direction == "F":
            sent.append(line)
        elif direction == "B" and sent:
            trips.append(sent)
            sent = []
    return trips


def shown(trips: list[list[str]]) -> str:
    return "\n".join(f"{i + 1}: {line[:160]}" for i, trip in enumerate(trips) for line in trip)


def sends(trip: list[str], statement: str) -> bool:
    return any(f'"{statement}' in line for line in trip)


def ingest(tenant: Any, *event_ids: str, **fields: Any) -> Any:
    return usage_record_batch(
        tenant=tenant, events=parse_batch([event(event_id=i, **fields) for i in event_ids])
    )


@pytest.mark.django_db(transaction=True)
def test_the_events_transaction_costs_one_round_trip(acme, outsider):
    ingest(acme, "warm")  # names, partitions and the catalog now known
    ingest(outsider, "warm")
    # The call with no new names (NULL arrays) is a statement of its own for psycopg: prepared
    # on its first use too.
    ingest(acme, "warm-known")
    trips = round_trips(lambda: ingest(acme, "e1"))
    # BEGIN, the tenant's row-level security settings, the insert with every rollup, which
    # takes the ingest lock first (usage.newevents), the budgets app's counter update and
    # COMMIT, in one round trip.
    # (Main sent BEGIN, the lock, the insert, the counter update and COMMIT each on its own: 9
    # round trips in all here; then two for the transaction.)
    transaction = [
        i for i, trip in enumerate(trips) if sends(trip, "BEGIN") or sends(trip, "COMMIT")
    ]
    assert transaction == [0], shown(trips)
    assert not any(sends(trip, "SELECT pg_advisory_xact_lock_shared") for trip in trips)
    assert sends(trips[0], "SELECT usage_events_add_new("), shown(trips)
    assert sends(trips[0], "INSERT INTO budgets_counterupdate"), shown(trips)
    # No mark of the alerts app's (the tenant's next round is due): with the spend counters,
    # the batch's pending counter update keeps the tenant due, and the sweeper marks it.
    assert not any(sends(t, "UPDATE alerts_ruleround SET dirty_since") for t in trips)
    # Prepared on the connection's first batch: bound by name, not parsed (nor planned) again.
    for statement in (
        "SELECT usage_events_add_new(",
        "INSERT INTO budgets_counterupdate",
    ):
        assert not any(
            line.split("\t")[2] == "Parse" and f'"{statement}' in line for line in trips[0]
        ), shown(trips)
    # The lock ends with the transaction: after the commit only the settled reservations
    # while the counters are not trusted (nothing rebuilt them in this test).
    assert len(trips) <= 2, shown(trips)
    assert not any(sends(trip, "SELECT pg_advisory_unlock") for trip in trips), shown(trips)
    # A resend is a duplicate: the one-trip statement fails and is rolled back, then the
    # events' transaction of two round trips that reads which events are new.
    # (psycopg may read the failure's answer while still sending: counted by what is sent.)
    trips = round_trips(lambda: ingest(acme, "e1"))
    _, again = [i for i, trip in enumerate(trips) if sends(trip, "BEGIN")]
    # The rollback, then psycopg's DEALLOCATE ALL (it forgets its prepared statements on a
    # rollback: the next batch prepares them again).
    assert [i for i, trip in enumerate(trips) if sends(trip, "ROLLBACK")] == [again - 2]
    assert sends(trips[again - 1], "DEALLOCATE ALL"), shown(trips)
    assert sends(trips[again], "WITH fresh AS (INSERT INTO usage_usageevent"), shown(trips)
    # (The first COMMIT is sent too when psycopg has not read the failure yet: skipped.)
    assert [i for i, trip in enumerate(trips) if sends(trip, "COMMIT")][-1] == again + 1
    assert [r.duplicate for r in ingest(acme, "e1", "e2")] == [True, False]
    assert UsageEvent.objects.for_tenant(acme).count() == 4
    assert HourlyRollup.objects.for_tenant(acme).get().calls == 4
    assert UsageEvent.objects.for_tenant(outsider).count() == 1
    # The counter updates written in the pipeline were applied: Redis holds what PostgreSQL does.
    day = counters.day_key(acme.pk, timezone.now().date())
    assert int(bredis.client().hget(day, "t") or 0) == 0  # the events are of another day
    for tenant in (acme, outsider):
        assert counters.counters_reconcile(tenant=tenant).corrected == 0


def advisory_locks() -> int:
    with connection.cursor() as cursor:
        cursor.execute(  # this session's: other sessions of the server hold their own
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_a_failure_in_the_pipeline_stores_nothing_and_releases_the_lock(acme, outsider):
    ingest(acme, "warm")

    def raising(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("a receiver refuses the batch")

    def bad_statement(sender: Any, **kwargs: Any) -> None:
        with connection.cursor() as cursor:  # fails on the server, seen when the pipeline ends
            cursor.execute("INSERT INTO usage_usageevent (tenant_id) VALUES (NULL)")

    for receiver, error in ((raising, RuntimeError), (bad_statement, DatabaseError)):
        batch_committing.connect(receiver, weak=False, dispatch_uid="tests.failing")
        try:
            with pytest.raises(error):
                ingest(acme, "lost", "lost-too", tags={"team": "search"})
        finally:
            batch_committing.disconnect(dispatch_uid="tests.failing")
        assert advisory_locks() == 0
        assert connection.connection.info.transaction_status == pq.TransactionStatus.IDLE
        assert not connection.in_atomic_block
        assert UsageEvent.objects.for_tenant(acme).count() == 1
        assert HourlyRollup.objects.for_tenant(acme).get().calls == 1
        assert not TagHourlyRollup.objects.for_tenant(acme).exists()
    # The connection goes on as before; the events are stored once sent again.
    assert [r.duplicate for r in ingest(acme, "lost", "lost-too", tags={"team": "search"})] == [
        False,
        False,
    ]
    assert HourlyRollup.objects.for_tenant(acme).get().calls == 3
    assert TagHourlyRollup.objects.for_tenant(acme).get().calls == 2
    assert not UsageEvent.objects.for_tenant(outsider).exists()
    assert advisory_locks() == 0


@pytest.mark.django_db(transaction=True)
def test_a_late_events_marks_of_cached_sums_go_to_redis_in_one_round_trip(
    acme, outsider, monkeypatch
):
    ingest(acme, "warm")
    ingest(outsider, "warm")
    late = (timezone.now() - timedelta(days=3)).isoformat()  # a settled hour, a recent day
    cache_set(totals._STALE_KEY, False, 60)
    marks = [settled._RECENT.format(t.pk) for t in (acme, outsider)]
    before = cache_get_many(marks)
    sent: list[bytes] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def recorded(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(b"".join(command) if isinstance(command, list) else bytes(command))
        return send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", recorded)
    ingest(acme, "late", occurred_at=late)
    monkeypatch.undo()

    # Prometheus's stale mark and the dashboard's new generation: one send, one reply.
    [together] = [s for s in sent if b"costmon:" in s and b"SET" in s]
    assert b"usage-sums-stale" in together and b"dashboard:recent" in together
    assert cache_get(totals._STALE_KEY) is True
    after = cache_get_many(marks)
    assert before is not None and after is not None
    assert after[0] != before[0]  # acme's kept sums of the recent days are forgotten
    assert after[1] == before[1]  # the outsider's are not


@pytest.mark.django_db(transaction=True)
def test_new_names_cost_no_round_trip_of_their_own_and_are_stored(acme, outsider):
    ingest(acme, "warm", session_id="known")
    ingest(outsider, "warm", session_id="theirs")
    known = round_trips(lambda: ingest(acme, "k1", session_id="known"))
    new = round_trips(lambda: ingest(acme, "n1", session_id="new-session", end_user="new-user"))
    # The new names go to the one-trip function with the events (usage.newevents): no
    # statement of their own before the transaction.
    assert len(new) == len(known), shown(new)
    assert sends(new[0], "BEGIN") and sends(new[0], "COMMIT"), shown(new)
    assert not any(sends(trip, "WITH wanted") for trip in new), shown(new)
    stored = UsageEvent.objects.for_tenant(acme).select_related("session", "end_user")
    found = {(e.event_id, e.session.value, e.end_user.value) for e in stored}
    assert ("n1", "new-session", "new-user") in found
    assert {e.session.value for e in UsageEvent.objects.for_tenant(outsider)} == {"theirs"}
    # Remembered once committed: the same names again cost nothing more than known ones.
    again = round_trips(lambda: ingest(acme, "n2", session_id="new-session", end_user="new-user"))
    assert len(again) == len(known), shown(again)


@pytest.mark.django_db(transaction=True)
def test_a_changed_budgets_configuration_is_read_before_the_events_transaction(acme, outsider):
    from budgets import config as budgets_config

    ingest(acme, "warm")
    ingest(outsider, "warm")
    budgets_config.bump(acme.pk)  # a budget changed: the next batch reads the configuration
    trips = round_trips(lambda: ingest(acme, "e1"))
    begin = next(i for i, trip in enumerate(trips) if sends(trip, "BEGIN"))
    commit = next(i for i, trip in enumerate(trips) if sends(trip, "COMMIT"))
    # Read by `batch_preparing` before BEGIN; the pipeline still one round trip, reading none.
    assert any(sends(trip, "budgets_budget") for trip in trips[:begin]), shown(trips)
    assert commit == begin, shown(trips)
    assert not any(sends(trip, "budgets_budget") for trip in trips[begin:]), shown(trips)
    assert [r.duplicate for r in ingest(acme, "e1")] == [True]
    assert UsageEvent.objects.for_tenant(outsider).count() == 1
    for tenant in (acme, outsider):
        assert counters.counters_reconcile(tenant=tenant).corrected == 0
