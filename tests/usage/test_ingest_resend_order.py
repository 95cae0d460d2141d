"""Concurrent requests storing the same events listed in different orders (a resend) never
deadlock: every statement that inserts events inserts them in the key's order
(`usage.storage.event_order`), ingest's one-trip function (`usage.newevents`) as the path that
reads which events are new."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection, transaction

from costmon.core.tenancy import tenant_context
from tests.helpers import event, requires_postgresql
from tests.usage.test_ingest_one_trip import sums
from usage.eventstore.postgres import PostgresStore
from usage.ingest import parse_batch
from usage.models import UsageEvent
from usage.services import EventResult, usage_record_batch

pytestmark = [pytest.mark.usefixtures("prices", "unscoped")]
HAIKU = 1_350_000  # nano-USD of the default test event
START = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def batch(*numbers: int) -> list[dict[str, Any]]:
    """Events e00, e01, ...: a second apart, so the key's order is their numbers'."""
    return [
        event(event_id=f"e{n:02d}", occurred_at=(START + timedelta(seconds=n)).isoformat())
        for n in numbers
    ]


def lock_waits(count: int) -> None:
    """Return once `count` backends wait for a lock (here: another transaction's key)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            # pg_locks: pg_stat_activity hides other roles' sessions from the app's role.
            cursor.execute("SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted")
            if cursor.fetchone()[0] >= count:
                return
        time.sleep(0.005)
    raise AssertionError(f"{count} backends never waited for a lock")


@requires_postgresql  # the one-trip function and row locks
@pytest.mark.django_db(transaction=True)  # each thread its own connection, commits seen
def test_a_resend_listed_otherwise_waits_for_the_one_trip_batch_and_never_deadlocks(
    acme, outsider, monkeypatch
):
    # The names exist already: the three requests meet on the events' key only.
    old = event(event_id="old", occurred_at=(START - timedelta(hours=1)).isoformat())
    usage_record_batch(tenant=acme, events=parse_batch([old]))
    paths: list[tuple[str, str]] = []
    one_trip, two_trip = PostgresStore.insert_all_new, PostgresStore.insert_new

    def all_new(self: PostgresStore, rows: Any, new_names: Any = ()) -> Any:
        paths.append((threading.current_thread().name, "one trip"))
        return one_trip(self, rows, new_names)

    def new(self: PostgresStore, rows: Any, *, direct: bool = False) -> set[str]:
        paths.append((threading.current_thread().name, "reads which are new"))
        return two_trip(self, rows, direct=direct)

    monkeypatch.setattr(PostgresStore, "insert_all_new", all_new)
    monkeypatch.setattr(PostgresStore, "insert_new", new)
    held, release = threading.Event(), threading.Event()
    answers: dict[str, list[EventResult]] = {}
    errors: list[BaseException] = []

    def run(name: str, events: list[dict[str, Any]], hold: bool) -> None:
        # Outside a transaction but the holder's: a request of all new events takes the one
        # trip (a pipeline); the holder's stays uncommitted until released.
        try:
            with transaction.atomic() if hold else contextlib.nullcontext():
                answers[name] = usage_record_batch(tenant=acme, events=parse_batch(events))
                if hold:
                    held.set()
                    assert release.wait(30)
                    transaction.set_rollback(True)
        except BaseException as exc:  # noqa: BLE001 - the test asserts there is none
            errors.append(exc)
        finally:
            connection.close()

    def thread(name: str, events: list[dict[str, Any]], hold: bool = False) -> threading.Thread:
        started = threading.Thread(target=run, args=(name, events, hold), name=name)
        started.start()
        return started

    # A third request holds e10 uncommitted: the two that follow stop on it, each having
    # inserted what its list put before it, were it inserted in the list's order. Neither list
    # is in the key's order, and each holds before e10 what the other needs after it: in their
    # lists' orders (either or both), the two would wait for each other once e10 is free.
    holder = thread("holder", batch(10), hold=True)
    assert held.wait(10)
    first = thread("first", batch(11, 12, 13, 14, 10, *range(10), *range(15, 20)))  # all new
    lock_waits(1)
    # The resend starts with "old" (stored before all the others): the one-trip function
    # refuses it at once, and the path that reads which events are new stores it.
    resend = thread("resend", [old, *batch(*range(15, 20), 10, *range(10), 11, 12, 13, 14)])
    lock_waits(2)
    release.set()  # the holder rolls back: e10 is free, the first request goes on
    for each in (holder, first, resend):
        each.join(30)
        assert not each.is_alive()

    assert errors == []  # no deadlock detected (40P01), nothing failed
    assert ("first", "one trip") in paths and ("resend", "reads which are new") in paths
    assert not any(r.duplicate for r in answers["first"]) and len(answers["first"]) == 20
    assert all(r.duplicate for r in answers["resend"])
    # Every event once, and the rollups hold exactly the events.
    stored = sorted(UsageEvent.objects.for_tenant(acme).values_list("event_id", flat=True))
    assert stored == sorted(["old", *(f"e{n:02d}" for n in range(20))])
    calls = (21, 21 * HAIKU)
    assert sums(acme) == {
        "events": calls,
        "HourlyRollup": calls,
        "ModelHourlyRollup": calls,
        "EndUserDailyRollup": calls,
        "TagHourlyRollup": (0, 0),  # no tags
    }
    assert set(sums(outsider).values()) == {(0, 0)}
    with tenant_context(outsider):
        assert not UsageEvent.objects.exists()
