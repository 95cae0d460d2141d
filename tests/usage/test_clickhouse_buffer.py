"""The ClickHouse store's Buffer table (`chrows.BUFFER`): small inserts wait in memory and reach
the events table a part per flush; reads, the duplicate check, rewrites and resets see the rows
it holds. Its own database on both test servers as two shards, the buffer made to hold rows for
ten minutes, so nothing is flushed but by the code under test."""

from __future__ import annotations

import pytest
import time_machine
from django.db.models import Sum

from costmon.core.tenancy import unscoped
from tests.helpers import event, post_usage, stored_events
from tests.usage.test_clickhouse_store import client_of
from tests.usage.test_rewrites_in_stores import assert_rollups_equal_events
from usage.bulk import usage_bulk_load
from usage.eventstore import chrows, current
from usage.eventstore.chrows import BUFFER, TABLE
from usage.eventstore.clickhouse import ClickHouseStore, tenant_where
from usage.ingest import parse_batch
from usage.maintenance import usage_events_delete, usage_tenant_reset
from usage.models import ModelHourlyRollup

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices"), pytest.mark.clickhouse]
DATABASE = "costmon_buffer"
HAIKU = 1_350_000  # 450 in x $1 + 180 out x $5 per million tokens


@pytest.fixture(autouse=True)
def _frozen_clock():
    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        yield


@pytest.fixture
def store(clickhouse_servers, settings, monkeypatch):
    monkeypatch.setattr(chrows, "BUFFER_SECONDS", 600)
    settings.COSTMON_EVENT_STORE_URL = (
        f"clickhouse://127.0.0.1:{clickhouse_servers[0].port}/{DATABASE}"
    )
    settings.COSTMON_CLICKHOUSE_SHARDS = f"127.0.0.1:{clickhouse_servers[1].port}"
    settings.COSTMON_CLICKHOUSE_BUFFER = True
    current.forget()
    chosen = current.event_store()
    assert isinstance(chosen, ClickHouseStore)
    for index in range(2):
        chosen.connections.execute(index, f"DROP DATABASE IF EXISTS {DATABASE}", database=False)
    chosen.create_schema()
    yield chosen
    for index in range(2):
        chosen.connections.execute(index, f"DROP DATABASE IF EXISTS {DATABASE}", database=False)
    chosen.connections.close()
    current.forget()


def in_table(store: ClickHouseStore, tenant) -> int:
    """The tenant's rows in the events table itself (not the buffer), every version."""
    sql = f"SELECT count() FROM {TABLE} WHERE {tenant_where(tenant.pk)}"
    return int(store.run(tenant.pk, sql)[0][0])


def parts(store: ClickHouseStore, tenant) -> int:
    sql = "SELECT count() FROM system.parts WHERE active AND database = %(db)s AND table = %(t)s"
    return int(store.run(tenant.pk, sql, {"db": DATABASE, "t": TABLE})[0][0])


def test_without_the_setting_every_insert_goes_to_the_table(store, settings, acme, outsider):
    settings.COSTMON_CLICKHOUSE_BUFFER = False  # the default
    current.forget()
    direct = current.event_store()
    assert isinstance(direct, ClickHouseStore) and not direct.buffered
    client = client_of(acme)
    for i in range(3):
        assert post_usage(client, event(event_id=f"e{i}")).status_code == 201
    post_usage(client_of(outsider), event(event_id="e0"))
    # Durable once answered: each event is in the table itself, nothing waits in the buffer.
    assert (in_table(direct, acme), direct.count(acme.pk)) == (3, 3)
    for index in range(2):  # a read of the buffer is the table's rows and its own: none
        through, table = (f"SELECT count() FROM {t}" for t in (BUFFER, TABLE))
        assert direct.connections.execute(index, through) == direct.connections.execute(
            index, table
        )
    again = post_usage(client, [event(event_id="e1"), event(event_id="e9")])
    assert [e["duplicate"] for e in again.json()["events"]] == [True, False]
    assert direct.count(acme.pk) == 4 and direct.count(outsider.pk) == 1
    direct.connections.close()


def test_single_events_wait_in_the_buffer_are_read_and_counted_once(store, acme, outsider):
    client = client_of(acme)
    for i in range(5):
        assert post_usage(client, event(event_id=f"e{i}")).status_code == 201
    post_usage(client_of(outsider), event(event_id="e0"))

    assert (in_table(store, acme), store.count(acme.pk)) == (0, 5)
    listed = client.get("/api/v1/usage/").json()["results"]
    assert sorted(e["event_id"] for e in listed) == [f"e{i}" for i in range(5)]
    assert client.get("/api/v1/usage/e3/").status_code == 200
    # Retries of buffered events are duplicates.
    again = post_usage(client, [event(event_id="e1"), event(event_id="e2")])
    assert [e["duplicate"] for e in again.json()["events"]] == [True, True]
    with unscoped():
        assert ModelHourlyRollup.objects.for_tenant(acme).aggregate(c=Sum("calls"))["c"] == 5
    # A flush writes them as one part.
    store.flush(acme.pk)
    assert (in_table(store, acme), parts(store, acme)) == (5, 1)


def test_a_large_batch_flushes_the_buffer_checks_the_table_and_goes_there(store, acme, outsider):
    client = client_of(acme)
    for i in range(3):
        post_usage(client, event(event_id=f"e{i}"))
    assert in_table(store, acme) == 0
    size = chrows.DIRECT_ROWS
    batch = [event(event_id=f"e{i}") for i in range(2)] + [
        event(event_id=f"b{i}") for i in range(size)
    ]

    sent = post_usage(client, batch).json()["events"]

    assert sum(e["duplicate"] for e in sent) == 2
    assert (in_table(store, acme), store.count(acme.pk)) == (size + 3, size + 3)
    with unscoped():
        assert ModelHourlyRollup.objects.for_tenant(acme).aggregate(c=Sum("calls"))["c"] == size + 3
    assert store.count(outsider.pk) == 0


def test_the_duplicate_check_finds_rows_flushed_while_it_read_the_buffer(store, acme, monkeypatch):
    """A Buffer table's query takes the table's parts, then the buffer's rows: rows flushed in
    between are in neither. Such a miss is made here on purpose; the check's second query, of
    the table, finds them, and the resend counts once."""
    client = client_of(acme)
    assert post_usage(client, event(event_id="x")).status_code == 201
    real_run = store.run

    def run(tenant_id, sql, params=None):
        if f"micros, version, deleted FROM {BUFFER}" in sql:  # the check's first query
            store.flush(tenant_id)  # the row moves to the table: this answer missed it
            return []
        return real_run(tenant_id, sql, params)

    monkeypatch.setattr(store, "run", run)
    again = post_usage(client, event(event_id="x"))

    assert again.json()["events"][0]["duplicate"] is True
    assert store.count(acme.pk) == 1
    with unscoped():
        assert ModelHourlyRollup.objects.for_tenant(acme).get().calls == 1


def test_deletes_and_resets_reach_buffered_events(store, acme, outsider):
    client = client_of(acme)
    for name in ("keep", "gone"):
        post_usage(client, event(event_id=name))
    post_usage(client_of(outsider), event(event_id="gone"))
    gone = next(e for e in stored_events(acme) if e.event_id == "gone")
    assert in_table(store, acme) == 0

    with unscoped():
        assert usage_events_delete(tenant=acme, keys=[("gone", gone.occurred_at)]) == 1
    assert [e.event_id for e in stored_events(acme)] == ["keep"]
    assert_rollups_equal_events(acme)
    with unscoped():
        assert ModelHourlyRollup.objects.for_tenant(acme).get().cost_nanos == HAIKU
    # Resent after its delete, it is new again (a version above its tombstone), in the buffer.
    assert post_usage(client, event(event_id="gone")).json()["events"][0]["duplicate"] is False
    assert sorted(e.event_id for e in stored_events(acme)) == ["gone", "keep"]
    assert_rollups_equal_events(acme)
    # A reset flushes first: nothing of the tenant comes back from the buffer later.
    usage_tenant_reset(tenant=acme)
    store.flush(acme.pk)
    assert (store.count(acme.pk), in_table(store, acme)) == (0, 0)
    assert [e.event_id for e in stored_events(outsider)] == ["gone"]
    assert_rollups_equal_events(outsider)


def test_a_buffer_made_before_new_columns_is_made_again_with_its_rows_kept(store, acme):
    post_usage(client_of(acme), event(event_id="kept"))
    index = store.shard_of(acme.pk)
    store.connections.execute(index, f"DROP TABLE {BUFFER}")  # flushes it
    store.connections.execute(
        index,
        f"CREATE TABLE {BUFFER} (tenant_id Int64, event_id String) "
        f"ENGINE = Buffer({DATABASE}, {TABLE}, 1, 1, 600, 1000, 100000, 1000000, 64000000)",
    )

    store.create_schema()

    columns = store.connections.execute(
        index,
        "SELECT count() FROM system.columns WHERE database = %(db)s AND table = %(t)s",
        {"db": DATABASE, "t": BUFFER},
    )
    assert columns[0][0] == len(chrows.COLUMNS) + len(chrows.META_COLUMNS)
    assert [e.event_id for e in stored_events(acme)] == ["kept"]
    assert post_usage(client_of(acme), event(event_id="new")).status_code == 201
    assert store.count(acme.pk) == 2


def test_a_bulk_load_goes_past_the_buffer_and_skips_events_waiting_in_it(store, acme, outsider):
    client = client_of(acme)
    for i in range(3):  # single events: in the buffer
        assert post_usage(client, event(event_id=f"e{i}")).status_code == 201
    post_usage(client_of(outsider), event(event_id="e0"))
    assert in_table(store, acme) == 0
    events = parse_batch([event(event_id=f"e{i}") for i in range(5)])
    report = usage_bulk_load(tenant=acme, events=events)
    # The buffer flushed for the check, the 2 new events straight into the table.
    assert (report.inserted, report.cost_nanos) == (2, 2 * HAIKU)
    assert (in_table(store, acme), store.count(acme.pk)) == (5, 5)
    with unscoped():
        assert ModelHourlyRollup.objects.for_tenant(acme).aggregate(c=Sum("calls"))["c"] == 5
        assert ModelHourlyRollup.objects.for_tenant(outsider).aggregate(c=Sum("calls"))["c"] == 1
