"""PostgreSQL's rollups and the budget counters repaired after PostgreSQL lost a batch's COMMIT
that ClickHouse had taken (`usage.storereconcile`): by the reconcile (task and command) and by
the batch's retry, on one ClickHouse node and on two shards, with an outsider left untouched.

The failure is simulated where it happens: the store's `insert_new` stores the batch in
ClickHouse, then the PostgreSQL transaction fails before its COMMIT (rolled back).

Events: claude-haiku-4-5 at 450 in / 180 out costs 1,350,000 nano-dollars; every third event is
an in-house model the caller prices ($0.00000i: i x 1,000 nano-dollars).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError

from budgets import counters
from budgets import redis as bredis
from costmon.core.tenancy import tenant_context, unscoped
from tests.clickhouse import assert_store_rollups_exact, free_port
from tests.helpers import event, post_usage, requires_redis
from tests.usage.test_clickhouse_store import client_of
from usage.eventstore import current
from usage.eventstore.clickhouse import ClickHouseStore
from usage.models import ModelHourlyRollup, TagHourlyRollup
from usage.signals import usage_rewritten
from usage.storereconcile import store_reconcile
from usage.tasks import reconcile_store_rollups

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.usefixtures("prices"),
    pytest.mark.clickhouse,
    pytest.mark.parametrize("store", ["ch", "ch2"], indirect=True),
    requires_redis,
]
NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)
HAIKU = 1_350_000
TODAY = date(2026, 11, 21)


class LostCommit(Exception):
    """PostgreSQL's COMMIT failed (connection lost) after ClickHouse took the batch."""


@pytest.fixture(autouse=True)
def _frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def told() -> Any:
    """The tenants the apps above were told had their stored usage change."""
    seen: list[int] = []

    def receiver(sender: Any, *, tenant_id: int, **kwargs: Any) -> None:
        seen.append(tenant_id)

    usage_rewritten.connect(receiver, dispatch_uid="tests.told")
    yield seen
    usage_rewritten.disconnect(dispatch_uid="tests.told")


def cost(i: int) -> int:
    return i * 1_000 if i % 3 == 0 else HAIKU


def batch(prefix: str, count: int = 7, day: int = 21) -> list[dict[str, Any]]:
    """Events over three hours of the morning, two models, two tag sets."""
    return [
        event(
            event_id=f"{prefix}{i}",
            occurred_at=f"2026-11-{day:02d}T{8 + i % 3:02d}:{i:02d}:00.{i:06d}Z",
            end_user=f"u{i % 2}",
            tags={"team": "search"} if i % 2 else {"team": "ops", "env": "prod"},
            **({"model": "in-house-7b", "cost_usd": f"0.{i:06d}"} if i % 3 == 0 else {}),
        )
        for i in range(count)
    ]


def expected(events: list[dict[str, Any]]) -> tuple[dict, dict]:
    """(calls, cost) by (hour, model) and by tag, from what was sent."""
    by_model: dict[tuple[datetime, str], list[int]] = defaultdict(lambda: [0, 0])
    by_tag: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for e in events:
        i = int(e["event_id"].lstrip("abcdefghijklmnopqrstuvwxyz"))
        at = datetime.fromisoformat(e["occurred_at"]).replace(minute=0, second=0, microsecond=0)
        for acc in [by_model[(at, e["model"])], *(by_tag[t] for t in e["tags"].items())]:
            acc[0] += 1
            acc[1] += cost(i)
    return {k: tuple(v) for k, v in by_model.items()}, {k: tuple(v) for k, v in by_tag.items()}


def postgres_rollups(tenant) -> tuple[dict, dict]:
    """PostgreSQL's by-model and by-tag rollups of the tenant, as `expected` gives them."""
    with tenant_context(tenant):
        models = {
            (hour, model): (calls, cost)
            for hour, model, calls, cost in ModelHourlyRollup.objects.for_tenant(tenant)
            .filter(calls__gt=0)
            .values_list("hour", "model__value", "calls", "cost_nanos")
        }
        tags: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for name, value, calls, cost in (
            TagHourlyRollup.objects.for_tenant(tenant)
            .filter(calls__gt=0)
            .values_list("tag_name", "tag_value", "calls", "cost_nanos")
        ):
            tags[(name, value)][0] += calls
            tags[(name, value)][1] += cost
    return models, {k: tuple(v) for k, v in tags.items()}


def spent_today(tenant) -> int:
    """The tenant's whole-tenant counter of today, in nano-dollars."""
    return int(bredis.client().hget(counters.day_key(tenant.pk, TODAY), "t") or 0)


def counters_match_postgresql(tenant) -> bool:
    """A rebuild from PostgreSQL finds nothing to correct in Redis."""
    return counters.counters_reconcile(tenant=tenant).corrected == 0


def lose_commit(monkeypatch, client, events: list[dict[str, Any]]) -> None:
    """Post the batch; the store takes it into ClickHouse, then PostgreSQL's transaction
    fails before its COMMIT."""
    original = ClickHouseStore.insert_new

    def insert_then_fail(self, rows, **kwargs):
        original(self, rows, **kwargs)
        raise LostCommit

    with monkeypatch.context() as patched:
        patched.setattr(ClickHouseStore, "insert_new", insert_then_fail)
        with pytest.raises(LostCommit):
            post_usage(client, events)


@pytest.fixture
def lost(store, acme, outsider, monkeypatch):
    """acme's batch lost its COMMIT after ClickHouse took it; the outsider's was stored."""
    for tenant in (acme, outsider):
        counters.counters_reconcile(tenant=tenant)
    assert post_usage(client_of(outsider), batch("o", 4)).status_code == 201
    events = batch("a")
    lose_commit(monkeypatch, client_of(acme), events)
    assert store.count(acme.pk) == 7  # ClickHouse holds them
    assert postgres_rollups(acme) == ({}, {})  # PostgreSQL does not
    assert spent_today(acme) == 0
    return events


def outsider_state(outsider) -> tuple[Any, ...]:
    return (*postgres_rollups(outsider), spent_today(outsider))


def test_the_reconcile_repairs_rollups_and_counters_and_a_resend_counts_once(
    store, lost, acme, outsider, told, django_capture_on_commit_callbacks
):
    theirs = outsider_state(outsider)
    assert theirs[2] == sum(cost(i) for i in range(4))
    total = sum(cost(i) for i in range(7))
    with django_capture_on_commit_callbacks(execute=True):
        report = store_reconcile(store=store, since=NOW - timedelta(hours=6))
    assert (report.tenants_repaired, report.hours_repaired, report.hours_kept) == (1, 3, 0)
    assert told == [acme.pk]
    assert postgres_rollups(acme) == expected(lost)
    assert sum(c for _, c in postgres_rollups(acme)[0].values()) == total == 5_409_000
    assert spent_today(acme) == total  # counters rebuilt (budgets' receiver of the signal)
    assert counters_match_postgresql(acme)
    assert_store_rollups_exact(acme)
    assert outsider_state(outsider) == theirs
    # The client's retry: every key held, nothing short any more, counted once.
    with django_capture_on_commit_callbacks(execute=True):
        assert post_usage(client_of(acme), lost).status_code == 201
    assert told == [acme.pk]  # nothing repaired again, nothing more to tell
    assert store.count(acme.pk) == 7
    assert postgres_rollups(acme) == expected(lost)
    assert spent_today(acme) == total
    assert outsider_state(outsider) == theirs


def test_a_reconcile_with_nothing_to_do_changes_nothing(
    store, acme, outsider, told, django_capture_on_commit_callbacks
):
    assert post_usage(client_of(acme), batch("a")).status_code == 201
    assert post_usage(client_of(outsider), batch("o", 4)).status_code == 201
    before = (postgres_rollups(acme), postgres_rollups(outsider))
    with django_capture_on_commit_callbacks(execute=True):
        report = store_reconcile(store=store, since=NOW - timedelta(hours=6))
    assert (report.tenants_repaired, report.hours_repaired, report.hours_kept) == (0, 0, 0)
    assert told == []  # counters neither marked stale nor rebuilt
    assert (postgres_rollups(acme), postgres_rollups(outsider)) == before
    assert postgres_rollups(acme) == expected(batch("a"))


def test_the_retry_of_a_lost_batch_repairs_at_once(
    store, lost, acme, outsider, told, django_capture_on_commit_callbacks
):
    theirs = outsider_state(outsider)
    with django_capture_on_commit_callbacks(execute=True):
        response = post_usage(client_of(acme), lost)
    assert response.status_code == 201
    assert told == [acme.pk]
    assert postgres_rollups(acme) == expected(lost)
    assert spent_today(acme) == sum(cost(i) for i in range(7))
    assert counters_match_postgresql(acme)
    assert outsider_state(outsider) == theirs
    with django_capture_on_commit_callbacks(execute=True):  # and again: counted once
        assert post_usage(client_of(acme), lost).status_code == 201
        report = store_reconcile(store=store, since=NOW - timedelta(hours=6))
    assert (report.hours_repaired, told) == (0, [acme.pk])
    assert postgres_rollups(acme) == expected(lost)
    assert spent_today(acme) == sum(cost(i) for i in range(7))


def test_the_command_repairs_recent_hours_and_older_ones_when_asked(
    store, lost, acme, outsider, monkeypatch, django_capture_on_commit_callbacks
):
    older = batch("y", 3, day=20)  # yesterday morning: outside the last 6 hours
    lose_commit(monkeypatch, client_of(acme), older)
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("clickhouse_reconcile", stdout=out)
    assert "acme: 3 hours repaired (2026-11-21 08:00 to 2026-11-21 10:00 UTC)" in out.getvalue()
    assert "Done: 1 tenants, 3 hours repaired." in out.getvalue()
    assert postgres_rollups(acme)[0] == expected(lost)[0]
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command(
            "clickhouse_reconcile", "--since", "2026-11-20", "--tenant", "acme", stdout=out
        )
    assert "Done: 1 tenants, 3 hours repaired." in out.getvalue()
    assert postgres_rollups(acme) == expected([*lost, *older])
    assert counters_match_postgresql(acme)
    out = StringIO()
    call_command("clickhouse_reconcile", "--since", "2026-11-20", stdout=out)
    assert out.getvalue().endswith("Done: 0 tenants, 0 hours repaired.\n")


def test_hours_where_postgresql_holds_more_are_left_alone(store, acme, outsider):
    assert post_usage(client_of(acme), batch("a")).status_code == 201
    with unscoped():
        store.delete_tenant(acme.pk)  # as events a ClickHouse buffer lost: still counted here
    report = store_reconcile(store=store, since=NOW - timedelta(hours=6), tenant=acme)
    assert (report.hours_repaired, report.hours_kept) == (0, 3)
    assert postgres_rollups(acme) == expected(batch("a"))


def test_a_retry_with_new_events_beside_the_lost_ones_repairs_and_counts_each_once(
    store, lost, acme, outsider, told, django_capture_on_commit_callbacks
):
    theirs = outsider_state(outsider)
    more = [*lost, *batch("b", 2)]  # the client's next batch carries the lost events again
    with django_capture_on_commit_callbacks(execute=True):
        assert post_usage(client_of(acme), more).status_code == 201
    assert told == [acme.pk]
    assert store.count(acme.pk) == 9
    assert postgres_rollups(acme) == expected(more)
    assert spent_today(acme) == sum(cost(i) for i in range(7)) + cost(0) + cost(1)
    assert counters_match_postgresql(acme)
    assert outsider_state(outsider) == theirs


@pytest.mark.django_db(transaction=True)
def test_reconciles_during_ingest_count_every_event_once(store, acme, outsider, monkeypatch):
    """Reconciles run while new batches of the same hours are stored and the lost batch is
    resent: every event is counted once, as each repair holds the tenant's ingest lock."""
    for tenant in (acme, outsider):
        counters.counters_reconcile(tenant=tenant)
    lost = batch("a")
    lose_commit(monkeypatch, client_of(acme), lost)
    clients = [client_of(acme) for _ in range(3)]
    fresh = [batch(prefix, 5) for prefix in ("b", "c")]
    barrier = threading.Barrier(4)
    errors: list[Exception] = []

    def run(work: Any) -> None:
        from django.db import connection as thread_connection

        try:
            barrier.wait()
            work()
        except Exception as exc:  # noqa: BLE001 - the assertion below reports it
            errors.append(exc)
        finally:
            thread_connection.close()

    def reconcile() -> None:
        for _ in range(3):
            store_reconcile(store=store, since=NOW - timedelta(hours=6))

    statuses: list[int] = []
    works = [
        *(
            lambda client=client, events=events: statuses.append(
                post_usage(client, events).status_code
            )
            for client, events in zip(clients, [*fresh, lost], strict=True)
        ),
        reconcile,
    ]
    threads = [threading.Thread(target=run, args=(w,)) for w in works]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (errors, statuses) == ([], [201] * 3)
    store_reconcile(store=store, since=NOW - timedelta(hours=6))
    everything = [*lost, *fresh[0], *fresh[1]]
    assert store.count(acme.pk) == 17
    assert postgres_rollups(acme) == expected(everything)
    assert counters_match_postgresql(acme)
    assert spent_today(acme) == sum(cost(i) for i in range(7)) + 2 * sum(cost(i) for i in range(5))
    assert postgres_rollups(outsider) == ({}, {})


def test_the_periodic_task_repairs_the_recent_hours_and_waits_out_an_unreachable_store(
    store, lost, acme, settings, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        assert reconcile_store_rollups() == 3
    assert postgres_rollups(acme) == expected(lost)
    assert spent_today(acme) == sum(cost(i) for i in range(7))
    settings.COSTMON_EVENT_STORE_URL = f"clickhouse://127.0.0.1:{free_port()}/costmon_test"
    current.forget()
    assert reconcile_store_rollups() == 0  # ClickHouse restarting: the next run tries again


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--hours", "0"], "--hours must be 1 or more."),
        (["--since", "yesterday"], "--since: not an ISO date or time: 'yesterday'"),
        (["--tenant", "nobody"], "No tenant 'nobody'."),
    ],
)
def test_the_command_says_what_is_wrong_with_its_options(store, acme, options, message):
    with pytest.raises(CommandError, match=message):
        call_command("clickhouse_reconcile", *options, stdout=StringIO())
