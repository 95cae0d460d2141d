"""Ingest's one round trip for a batch of new events (usage.newevents): the function that stores
them with every rollup, and the fall back to the statement that reads which events are new when
one of them was stored already."""

from __future__ import annotations

import threading
from importlib import import_module
from typing import Any

import pytest
from django.db import connection, connections
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Sum

from budgets import counters
from tests.helpers import event, requires_postgresql, requires_redis
from usage import grouping
from usage.eventstore.postgres import PostgresStore
from usage.ingest import parse_batch
from usage.models import (
    Dimension,
    EndUserDailyRollup,
    HourlyRollup,
    ModelHourlyRollup,
    TagHourlyRollup,
    UsageEvent,
)
from usage.newevents import FUNCTION, SETTINGS, function_arguments, function_body
from usage.services import usage_record_batch
from usage.transactions import _lock_key

pytestmark = [pytest.mark.usefixtures("prices", "unscoped")]
HAIKU = 1_350_000  # nano-USD of the default test event


def sums(tenant: Any) -> dict[str, tuple[int, int]]:
    """(calls, cost) of the tenant's events and of each rollup table."""
    events = UsageEvent.objects.for_tenant(tenant)
    found = {"events": (events.count(), events.aggregate(c=Sum("cost_nanos"))["c"] or 0)}
    for model in (HourlyRollup, ModelHourlyRollup, EndUserDailyRollup, TagHourlyRollup):
        total = model.objects.for_tenant(tenant).aggregate(n=Sum("calls"), c=Sum("cost_nanos"))
        found[model.__name__] = (total["n"] or 0, total["c"] or 0)
    return found


def request(tenant: Any, *ids: str, **fields: Any) -> Any:
    return grouping._Waiting(tenant, 1, parse_batch([event(event_id=i, **fields) for i in ids]))


@requires_redis  # counters equal to PostgreSQL
@pytest.mark.django_db(transaction=True)  # a pipeline needs autocommit around it
def test_a_group_with_a_resent_event_among_new_ones_counts_each_event_once(
    acme, outsider, monkeypatch, caplog
):
    tags = {"team": "search"}
    grouping.GroupCommitter().commit([request(acme, "old", tags=tags), request(outsider, "old")])
    tried: list[tuple[int, list[str]]] = []
    one_trip = PostgresStore.insert_all_new

    def recorded(self: PostgresStore, rows: Any, new_names: Any = ()) -> Any:
        tried.append((rows[0]["tenant_id"], sorted(r["event_id"] for r in rows)))
        return one_trip(self, rows, new_names)

    monkeypatch.setattr(PostgresStore, "insert_all_new", recorded)
    group = [
        request(acme, "new-1", "old", tags=tags),
        request(acme, "new-2", tags=tags),
        request(acme, "new-2"),  # the same id again in the group: a duplicate
        request(outsider, "new-1"),
    ]
    assert grouping.GroupCommitter().commit(group) is False
    answers = [[(r.event_id, r.cost_nanos, r.duplicate) for r in w.future.result()] for w in group]
    assert answers == [
        [("new-1", HAIKU, False), ("old", HAIKU, True)],
        [("new-2", HAIKU, False)],
        [("new-2", HAIKU, True)],
        [("new-1", HAIKU, False)],
    ]
    if connection.vendor == "postgresql":
        # Acme's group tried the one round trip, was refused for "old" and stored again;
        # the outsider's group of new events took the one round trip.
        assert tried == [(acme.pk, ["new-1", "new-2", "old"]), (outsider.pk, ["new-1"])]
    three, two = (3, 3 * HAIKU), (2, 2 * HAIKU)
    assert sums(acme) == {
        "events": three,
        "HourlyRollup": three,
        "ModelHourlyRollup": three,
        "EndUserDailyRollup": three,
        "TagHourlyRollup": three,  # each event carries one tag
    }
    assert sums(outsider) == {
        "events": two,
        "HourlyRollup": two,
        "ModelHourlyRollup": two,
        "EndUserDailyRollup": two,
        "TagHourlyRollup": (0, 0),
    }
    for tenant in (acme, outsider):
        assert counters.counters_reconcile(tenant=tenant).corrected == 0
    # Sent again as a whole, nothing changes anywhere.
    again = [request(acme, "new-1", "new-2", "old", tags=tags), request(outsider, "new-1")]
    grouping.GroupCommitter().commit(again)
    assert all(r.duplicate for w in again for r in w.future.result())
    assert sums(acme)["events"] == three and sums(acme)["TagHourlyRollup"] == three
    assert sums(outsider)["HourlyRollup"] == two
    for tenant in (acme, outsider):
        assert counters.counters_reconcile(tenant=tenant).corrected == 0
    # A resend is ordinary: psycopg's note on the refused pipeline is not logged.
    assert not [r for r in caplog.records if r.name == "psycopg"]


@requires_postgresql
@pytest.mark.django_db
def test_the_databases_function_is_the_codes():
    # A change of the event columns or the rollups needs a migration replacing the function.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT prosrc, proconfig FROM pg_proc WHERE oid = to_regprocedure(%s)",
            [f"{FUNCTION}({function_arguments()})"],
        )
        [(source, config)] = cursor.fetchall()
    assert " ".join(source.split()) == " ".join(function_body().split())
    assert config == [SETTINGS.removeprefix("SET ").replace(" = ", "=")]


def rollup_rows(tenant: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every rollup row of the tenant, all its keys (names, not the tenant's dictionary ids)
    and sums; the tenant and the row's id left out."""
    names = dict(Dimension.objects.for_tenant(tenant).values_list("id", "value"))
    named = ("provider_id", "model_id", "operation_id", "end_user_id")
    found = {}
    for model in (HourlyRollup, ModelHourlyRollup, EndUserDailyRollup, TagHourlyRollup):
        fields = [f.attname for f in model._meta.concrete_fields]
        fields = [f for f in fields if f not in ("id", "tenant_id")]
        rows = model.objects.for_tenant(tenant).order_by().values(*fields)
        found[model.__name__] = sorted(
            (tuple(names[r[f]] if f in named else r[f] for f in fields) for r in rows), key=repr
        )
    return found


@requires_postgresql  # the function's statement for a batch of one event
@pytest.mark.django_db(transaction=True)  # a pipeline needs autocommit around it
def test_single_events_roll_up_as_the_same_events_in_one_batch(acme, outsider):
    # Sums that differ per column: errors, cache hits, unpriced, nulls, tags (two, one, none),
    # two hours of one end user's day, the same rollup rows met again.
    events = [
        event(event_id="a", tags={"team": "search", "env": "prod"}, latency_ms=120),
        event(event_id="b", tags={"team": "search"}, status="error", cached_input_tokens=300),
        event(event_id="c", occurred_at="2026-11-20T11:05:00Z", cache_hit=True),
        event(event_id="d", model="no-such-model", end_user="user-2", latency_ms=7),
        event(event_id="e", tags={"team": "ads", "env": "prod"}, cost_usd="0.25"),
    ]
    for one in events:  # each alone: the one-event statement
        grouping.GroupCommitter().commit([grouping._Waiting(acme, 1, parse_batch([one]))])
    # The same events in one batch: the statement for several.
    grouping.GroupCommitter().commit([grouping._Waiting(outsider, 1, parse_batch(events))])
    singly, batched = rollup_rows(acme), rollup_rows(outsider)
    assert singly == batched
    assert len(singly["TagHourlyRollup"]) == 3  # team=search (a, b), env=prod (a, e), team=ads
    assert sums(acme) == sums(outsider)
    assert sums(acme)["events"][0] == 5


def _functions() -> dict[str, str]:
    """The database's `usage_events_add_new` functions: each one's arguments, its body."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_get_function_identity_arguments(oid), prosrc FROM pg_proc WHERE proname = %s",
            [FUNCTION],
        )
        return {" ".join(args.split()): " ".join(body.split()) for args, body in cursor.fetchall()}


def _functions_at(migration: str) -> dict[str, str]:
    """`_functions()` once the usage app is migrated back to `migration`; then forth again."""
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate([("usage", migration)])
        return _functions()
    finally:
        MigrationExecutor(connection).migrate(latest)


@requires_postgresql
@pytest.mark.django_db(transaction=True)  # migrations back and forth
def test_0023_goes_back_to_0022s_two_functions_and_forth_to_the_codes_alone():
    one_event = import_module("usage.migrations.0022_events_add_new_one_event")
    lighter = import_module("usage.migrations.0020_events_add_new_lighter")
    back = _functions_at("0022_events_add_new_one_event")
    # Back: 0022's body, and 0020's function (30 arrays) the release before calls.
    assert len(back) == 2
    assert " ".join(one_event.BODY.split()) in back.values()
    assert " ".join(lighter.BODY.split()) in back.values()
    # Forth: the code's function alone, the one the code calls.
    assert list(_functions().values()) == [" ".join(function_body().split())]


@requires_postgresql
@pytest.mark.django_db(transaction=True)  # a pipeline needs autocommit around it
def test_the_function_takes_the_tenants_ingest_lock(acme, outsider):
    """The one-trip function takes the ingest lock itself (no statement of its own for it): a
    rewrite or a counter rebuild of the tenant, which holds it exclusively, holds its single
    events back until it is done, and only its."""
    ingest = usage_record_batch  # the committer's path: one trip
    ingest(tenant=acme, events=parse_batch([event(event_id="warm")]))
    ingest(tenant=outsider, events=parse_batch([event(event_id="warm")]))
    rebuild = connections.create_connection("default")
    rebuild.ensure_connection()
    stored: list[bool] = []

    def single() -> None:
        try:
            [result] = ingest(tenant=acme, events=parse_batch([event(event_id="held")]))
            stored.append(not result.duplicate)
        finally:
            connection.close()

    try:
        with rebuild.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s, %s)", _lock_key(acme.pk))
        thread = threading.Thread(target=single, daemon=True)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive() and stored == []  # waits for the lock
        [other] = ingest(tenant=outsider, events=parse_batch([event(event_id="free")]))
        assert not other.duplicate
        with rebuild.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", _lock_key(acme.pk))
        thread.join(timeout=10)
        assert stored == [True]
    finally:
        rebuild.close()
    assert UsageEvent.objects.for_tenant(acme).filter(event_id="held").exists()
    assert not UsageEvent.objects.for_tenant(outsider).filter(event_id="held").exists()


@requires_postgresql
@pytest.mark.django_db(transaction=True)  # migrations back and forth
def test_0024_goes_back_to_0023s_body_and_forth_to_the_codes():
    before = import_module("usage.migrations.0023_events_add_new_in_key_order")
    back = _functions_at("0023_events_add_new_in_key_order")
    assert list(back.values()) == [" ".join(before.BODY.split())]
    assert "pg_advisory_xact_lock_shared" not in before.BODY
    assert list(_functions().values()) == [" ".join(function_body().split())]
