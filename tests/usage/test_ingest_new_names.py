"""Names new to the process (providers, models, operations, end users, sessions) in ingest's one
round trip (usage.newevents): created in the events' transaction, remembered once it commits,
each stored once however many batches bring it at the same time; a refused round trip (a
resend) creates them as before."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection, transaction

from budgets import counters
from tests.helpers import event, requires_postgresql, requires_redis
from tests.usage.test_ingest_one_trip import request, sums
from tests.usage.test_ingest_round_trips import round_trips, sends, shown
from usage import dimensions, grouping
from usage.eventstore.postgres import PostgresStore
from usage.ingest import parse_batch
from usage.models import (
    Dimension,
    UsageEvent,
)
from usage.services import usage_record_batch

pytestmark = [pytest.mark.usefixtures("prices", "unscoped")]
KIND = Dimension.Kind
HAIKU = 1_350_000  # nano-USD of the default test event
MINI = 175_500  # the same tokens on gpt-4o-mini
NEW = {
    "provider": "openai",
    "model": "gpt-4o-mini",
    "operation": "summarize",
    "end_user": "new-user",
    "session_id": "new-session",
}


def names_of(tenant: Any) -> dict[str, tuple[str, ...]]:
    """Each stored event's names, by event id."""
    stored = UsageEvent.objects.for_tenant(tenant).select_related(
        "provider", "model", "operation", "end_user", "session"
    )
    return {
        e.event_id: (
            e.provider.value,
            e.model.value,
            e.operation.value,
            e.end_user.value,
            e.session.value if e.session else "",
        )
        for e in stored
    }


def dictionary(tenant: Any) -> dict[tuple[int, str], int]:
    rows = Dimension.objects.for_tenant(tenant).values_list("kind", "value", "pk")
    return {(kind, value): pk for kind, value, pk in rows}


def remembered_right(tenant: Any) -> bool:
    """The ids this process remembers are the database's."""
    known = dimensions._known_ids.of(tenant.pk)
    stored = dictionary(tenant)
    return bool(known) and all(stored[key] == pk for key, pk in known.items())


@requires_redis  # counters equal to PostgreSQL
@pytest.mark.django_db(transaction=True)  # a pipeline needs autocommit around it
def test_a_group_with_new_names_of_every_kind_stores_each_event_and_name_once(
    acme, outsider, monkeypatch
):
    grouping.GroupCommitter().commit([request(acme, "old"), request(outsider, "old")])
    tried: list[list[tuple[int, str]]] = []
    one_trip = PostgresStore.insert_all_new

    def recorded(self: PostgresStore, rows: Any, new_names: Any = ()) -> Any:
        tried.append(list(new_names))
        return one_trip(self, rows, new_names)

    monkeypatch.setattr(PostgresStore, "insert_all_new", recorded)
    group = [
        request(acme, "all-new", **NEW),
        request(acme, "known"),  # every name stored before
        request(acme, "some-new", end_user="new-user", session_id="new-session"),
        request(acme, "again", **NEW),  # the same new names twice in the group
        request(outsider, "theirs", **NEW),  # the same names, the outsider's own entries
    ]
    trips = round_trips(lambda: grouping.GroupCommitter().commit(group))
    answers = [[(r.event_id, r.cost_nanos, r.duplicate) for r in w.future.result()] for w in group]
    assert answers == [
        [("all-new", MINI, False)],
        [("known", HAIKU, False)],
        [("some-new", HAIKU, False)],
        [("again", MINI, False)],
        [("theirs", MINI, False)],
    ]
    if connection.vendor == "postgresql":
        # Each tenant's group: one round trip from BEGIN to COMMIT, the new names in it
        # (no statement of their own before it), none refused.
        begins = [i for i, trip in enumerate(trips) if sends(trip, "BEGIN")]
        commits = [i for i, trip in enumerate(trips) if sends(trip, "COMMIT")]
        assert len(begins) == 2 and begins == commits, shown(trips)
        assert not any(sends(trip, "WITH wanted") for trip in trips), shown(trips)
        new_names = sorted(
            [
                (KIND.PROVIDER, "openai"),
                (KIND.MODEL, "gpt-4o-mini"),
                (KIND.OPERATION, "summarize"),
                (KIND.END_USER, "new-user"),
                (KIND.SESSION, "new-session"),
            ]
        )
        assert tried == [new_names, new_names]
    new = ("openai", "gpt-4o-mini", "summarize", "new-user", "new-session")
    assert names_of(acme) == {
        "old": ("anthropic", "claude-haiku-4-5", "chat", "user-1", ""),
        "known": ("anthropic", "claude-haiku-4-5", "chat", "user-1", ""),
        "some-new": ("anthropic", "claude-haiku-4-5", "chat", "new-user", "new-session"),
        "all-new": new,
        "again": new,
    }
    assert names_of(outsider) == {
        "old": ("anthropic", "claude-haiku-4-5", "chat", "user-1", ""),
        "theirs": new,
    }
    # Each name once per tenant (nine entries each), the outsider's never acme's.
    acme_names, outsider_names = dictionary(acme), dictionary(outsider)
    assert len(acme_names) == len(outsider_names) == 9
    assert not set(acme_names.values()) & set(outsider_names.values())
    five, two = (5, 3 * HAIKU + 2 * MINI), (2, HAIKU + MINI)
    for tenant, total in ((acme, five), (outsider, two)):
        assert sums(tenant) == {
            "events": total,
            "HourlyRollup": total,
            "ModelHourlyRollup": total,
            "EndUserDailyRollup": total,
            "TagHourlyRollup": (0, 0),
        }
    for tenant in (acme, outsider):
        assert counters.counters_reconcile(tenant=tenant).corrected == 0
        assert remembered_right(tenant)
    # The names are known now: the next batch sends none; a resend changes nothing.
    tried.clear()
    again = [request(acme, "all-new", **NEW), request(acme, "later", **NEW)]
    grouping.GroupCommitter().commit(again)
    assert [r.duplicate for w in again for r in w.future.result()] == [True, False]
    if connection.vendor == "postgresql":
        assert tried == [[]]  # tried, refused for "all-new", stored again
    assert sums(acme)["events"] == sums(acme)["HourlyRollup"] == (6, 3 * HAIKU + 3 * MINI)
    assert len(dictionary(acme)) == 9
    for tenant in (acme, outsider):
        assert counters.counters_reconcile(tenant=tenant).corrected == 0


@requires_redis
@pytest.mark.django_db(transaction=True)
def test_a_resend_with_names_the_process_forgot_is_counted_once(acme, outsider):
    usage_record_batch(tenant=acme, events=parse_batch([event(event_id="e1", **NEW)]))
    usage_record_batch(tenant=outsider, events=parse_batch([event(event_id="e1")]))
    before = dictionary(acme)
    # Another process, or this one restarted: the names are new to it, the event is not. The
    # one round trip is refused (its new names rolled back with it) and the batch stored again
    # with the names created first, as before.
    dimensions.forget_known_dimensions()
    results = usage_record_batch(
        tenant=acme,
        events=parse_batch(
            [event(event_id="e1", **NEW), event(event_id="e2", **{**NEW, "session_id": "s2"})]
        ),
    )
    assert [(r.event_id, r.cost_nanos, r.duplicate) for r in results] == [
        ("e1", MINI, True),
        ("e2", MINI, False),
    ]
    after = dictionary(acme)
    assert after == {**before, (KIND.SESSION, "s2"): after[(KIND.SESSION, "s2")]}
    assert names_of(acme)["e2"] == ("openai", "gpt-4o-mini", "summarize", "new-user", "s2")
    assert sums(acme)["events"] == sums(acme)["HourlyRollup"] == (2, 2 * MINI)
    assert sums(acme)["EndUserDailyRollup"] == (2, 2 * MINI)
    assert remembered_right(acme)
    assert sums(outsider)["events"] == sums(outsider)["HourlyRollup"] == (1, HAIKU)
    assert set(dictionary(outsider)) == {
        (KIND.PROVIDER, "anthropic"),
        (KIND.MODEL, "claude-haiku-4-5"),
        (KIND.OPERATION, "chat"),
        (KIND.END_USER, "user-1"),
    }
    for tenant in (acme, outsider):
        assert counters.counters_reconcile(tenant=tenant).corrected == 0


@requires_postgresql  # concurrent writers (SQLite has one)
@requires_redis
@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_bringing_the_same_new_names_never_fail(acme, outsider):
    threads, rounds = 4, 6
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def send(number: int) -> None:
        tenant = outsider if number == threads - 1 else acme
        try:
            for r in range(rounds):
                # Shared new names in every batch, listed in another order by each thread,
                # beside names of its own; all threads of a round start together.
                shared = [f"user-{r}-{k}" for k in range(3)]
                if number % 2:
                    shared.reverse()
                batch = [
                    event(
                        event_id=f"t{number}-r{r}-{k}",
                        end_user=user,
                        session_id=f"s-{r}" if k else f"own-{number}-{r}",
                        operation=f"op-{r}",
                    )
                    for k, user in enumerate(shared)
                ]
                barrier.wait()
                usage_record_batch(tenant=tenant, events=parse_batch(batch))
        except BaseException as exc:  # noqa: BLE001 - the test reads them
            errors.append(exc)
            barrier.abort()
        finally:
            connection.close()

    running = [threading.Thread(target=send, args=(n,)) for n in range(threads)]
    for t in running:
        t.start()
    for t in running:
        t.join()
    assert errors == []
    acme_events = (threads - 1) * rounds * 3
    assert sums(acme)["events"] == sums(acme)["HourlyRollup"] == (acme_events, acme_events * HAIKU)
    assert sums(acme)["EndUserDailyRollup"] == sums(acme)["events"]
    assert (
        sums(outsider)["events"]
        == sums(outsider)["HourlyRollup"]
        == (rounds * 3, rounds * 3 * HAIKU)
    )
    for tenant, senders in ((acme, range(threads - 1)), (outsider, [threads - 1])):
        stored = dictionary(tenant)
        for r in range(rounds):
            assert {(KIND.END_USER, f"user-{r}-{k}") for k in range(3)} <= set(stored)
            assert {(KIND.SESSION, f"own-{n}-{r}") for n in senders} <= set(stored)
        # Each event names its own entries: acme's threads' events hold acme's ids only.
        ids = set(stored.values())
        used = UsageEvent.objects.for_tenant(tenant).values_list("end_user_id", "session_id")
        assert {i for pair in used for i in pair} <= ids
        assert names_of(tenant)[f"t{senders[0]}-r2-1"][3:] == ("user-2-1", "s-2")
        assert counters.counters_reconcile(tenant=tenant).corrected == 0
    assert not set(dictionary(acme).values()) & set(dictionary(outsider).values())


@pytest.mark.django_db(transaction=True)
def test_in_a_callers_transaction_new_names_are_created_before_the_events(
    acme, outsider, monkeypatch
):
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no one round trip inside a caller's transaction")

    monkeypatch.setattr(PostgresStore, "insert_all_new", refused)
    with transaction.atomic():
        results = usage_record_batch(tenant=acme, events=parse_batch([event(**NEW)]))
        assert not dimensions._known_ids.of(acme.pk)  # remembered once committed
    assert [r.duplicate for r in results] == [False]
    assert remembered_right(acme)
    assert names_of(acme) == {
        "evt-1": ("openai", "gpt-4o-mini", "summarize", "new-user", "new-session")
    }
    assert sums(acme)["events"] == sums(acme)["HourlyRollup"] == (1, MINI)
    assert not UsageEvent.objects.for_tenant(outsider).exists()
    assert not dictionary(outsider)
