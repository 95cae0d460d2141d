"""What only the ClickHouse event store has: shards, reads that stay right before ClickHouse
merges duplicates, a 503 when it is down, and the migration from PostgreSQL. The behaviour tests
of raw events (list, CSV, lookup, exactly-once ingest, retention, reset) run on every store
through the `store` fixture (tests/conftest.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from rest_framework.test import APIClient

from costmon.core.services import api_key_create, tenant_create
from costmon.core.tenancy import unscoped
from tests.clickhouse import assert_store_rollups_exact, free_port
from tests.helpers import event, post_usage, stored_events
from usage.eventstore import current
from usage.eventstore.chrows import BUFFER
from usage.eventstore.clickhouse import TABLE, ClickHouseStore, tenant_where
from usage.maintenance import usage_events_delete
from usage.models import ModelHourlyRollup

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
NOW = "2026-11-21T12:00:00Z"
# How statements read the events table (`FROM {table}`: the table or its buffer, in a loop).
READS = ("FROM {TABLE}", "FROM {BUFFER}", "FROM {table}", "FROM {ROLLUPS", "ALTER TABLE {table}")


def truncate(store: ClickHouseStore, index: int) -> None:
    """Empty shard `index`'s table, its buffer flushed first (else it refills it)."""
    store.connections.execute(index, f"OPTIMIZE TABLE {BUFFER}")
    store.connections.execute(index, f"TRUNCATE TABLE {TABLE}")


@pytest.fixture(autouse=True)
def _frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


def client_of(tenant, scopes="ingest,read") -> APIClient:
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Bearer {api_key_create(tenant=tenant, scopes=scopes).secret}"
    )
    return client


def spend(tenant_index: int) -> list[dict]:
    """A tenant's usage: more events, and larger ones, the higher its index."""
    return [
        event(
            event_id=f"t{tenant_index}-{i}",
            occurred_at=f"2026-{10 + i % 2}-{1 + i % 20:02d}T{i % 24:02d}:00:00.{i:06d}Z",
            end_user=f"u{i % 3}",
            input_tokens=100 * (tenant_index + 1) + i,
            output_tokens=i,
        )
        for i in range(5 + 3 * tenant_index)
    ]


@pytest.mark.clickhouse
def test_tenants_on_two_shards_total_as_on_one_node_and_as_postgresql(store, acme, outsider):
    tenants = [acme, outsider]
    with unscoped():
        tenants += [tenant_create(slug=f"extra{i}", name=f"Extra {i}") for i in range(2)]
    totals = {}
    for index, tenant in enumerate(tenants):
        client = client_of(tenant)
        assert post_usage(client, spend(index)).status_code == 201
        assert post_usage(client, spend(index)).status_code == 201  # a resend: no change
        with unscoped():
            events = stored_events(tenant)
        listed = client.get("/api/v1/usage/?limit=1000&start=2026-01-01").json()["results"]
        totals[index] = (
            len(events),
            sum(e.cost_nanos for e in events),
            sum(e.input_tokens for e in events),
            len(listed),
        )
    # The same figures on PostgreSQL, one ClickHouse node and two shards (each run of the
    # parameter checks its own against these, computed from what was sent).
    assert totals == {
        i: (
            5 + 3 * i,
            totals[i][1],
            sum(100 * (i + 1) + n for n in range(5 + 3 * i)),
            5 + 3 * i,
        )
        for i in range(4)
    }
    with unscoped():
        rollups = {
            i: sum(ModelHourlyRollup.objects.for_tenant(t).values_list("cost_nanos", flat=True))
            for i, t in enumerate(tenants)
        }
    assert rollups == {i: totals[i][1] for i in range(4)}
    if isinstance(store, ClickHouseStore):
        # Each tenant's events are on its shard only; with two shards, both hold some.
        for index in range(len(store.shards)):
            held = {
                tenant_id
                for (tenant_id,) in store.connections.execute(
                    index, f"SELECT DISTINCT tenant_id FROM {BUFFER}"
                )
            }
            assert held == {t.pk for t in tenants if store.shard_of(t.pk) == index}
            assert held


@pytest.mark.clickhouse
@pytest.mark.parametrize("store", ["ch", "ch2"], indirect=True)  # merges are ClickHouse's alone
def test_reads_count_a_duplicate_once_before_clickhouse_merges_it(store, acme, outsider):
    assert isinstance(store, ClickHouseStore)
    client = client_of(acme)
    post_usage(
        client, [event(event_id="a"), event(event_id="b", occurred_at="2026-11-20T11:00:00Z")]
    )
    post_usage(client_of(outsider), event(event_id="a"))
    with unscoped():
        (row,) = [e for e in stored_events(acme) if e.event_id == "a"]
        # The same row written again, as a retried insert could: two copies until a merge.
        store.insert_rows(
            acme.pk,
            [
                {
                    **{f.attname: getattr(row, f.attname) for f in row._meta.concrete_fields},
                    "tags": None,
                }
            ],
        )
    raw = store.connections.execute(
        store.shard_of(acme.pk), f"SELECT count() FROM {BUFFER} WHERE {tenant_where(acme.pk)}"
    )
    assert raw[0][0] == 3
    assert store.count(acme.pk) == 2
    listed = client.get("/api/v1/usage/").json()["results"]
    assert [e["event_id"] for e in listed] == ["b", "a"]
    csv_body = b"".join(client.get("/api/v1/usage/?format=csv").streaming_content).decode()
    assert len(csv_body.strip().splitlines()) == 3
    again = post_usage(client, event(event_id="a"))
    assert again.json()["events"][0]["duplicate"] is True
    assert store.count(outsider.pk) == 1


@pytest.mark.clickhouse
def test_clickhouse_down_is_a_503_with_retry_after_and_nothing_stored(
    clickhouse_servers, acme, settings
):
    settings.COSTMON_EVENT_STORE_URL = f"clickhouse://127.0.0.1:{free_port()}/costmon_test"
    settings.COSTMON_CLICKHOUSE_SHARDS = ""
    current.forget()
    try:
        client = client_of(acme)
        for response in (
            client.get("/api/v1/usage/"),
            client.get("/api/v1/usage/?format=csv"),
            client.get("/api/v1/usage/evt-1/"),
            post_usage(client, [event(event_id="x"), event(event_id="y")]),
        ):
            assert response.status_code == 503, response.content
            assert response["Retry-After"] == "5"
            assert "ClickHouse event store" in response.json()["detail"]
        with unscoped():
            assert not ModelHourlyRollup.objects.for_tenant(acme).exists()
    finally:
        current.forget()


@pytest.mark.clickhouse
def test_events_migrate_copies_postgresql_events_once_and_resumes(
    clickhouse_servers, acme, outsider, settings
):
    settings.COSTMON_EVENT_STORE_URL = ""
    current.forget()
    post_usage(client_of(acme), spend(3))
    post_usage(client_of(outsider), spend(1))
    with unscoped():
        expected = {
            t.pk: sorted((e.event_id, e.occurred_at, e.cost_nanos) for e in stored_events(t))
            for t in (acme, outsider)
        }
        # What a run stopped half-way left in ClickHouse: five of acme's events.
        first = [
            {**{f.attname: getattr(e, f.attname) for f in e._meta.concrete_fields}, "tags": None}
            for e in stored_events(acme)[:5]
        ]
    settings.COSTMON_EVENT_STORE_URL = (
        f"clickhouse://127.0.0.1:{clickhouse_servers[0].port}/costmon_migrate"
    )
    settings.COSTMON_CLICKHOUSE_SHARDS = f"127.0.0.1:{clickhouse_servers[1].port}"
    current.forget()
    store = current.event_store()
    assert isinstance(store, ClickHouseStore)
    try:
        store.create_schema()
        for index in range(2):
            truncate(store, index)
        store.insert_rows(acme.pk, first)
        out = StringIO()
        call_command("events_migrate", "--to", "clickhouse", "--chunk", "4", stdout=out)
        assert "Done: 17 events read, 17 copied, 5 tenant-days already complete." in out.getvalue()
        assert "acme:" in out.getvalue()  # progress
        with unscoped():
            got = {
                t.pk: sorted((e.event_id, e.occurred_at, e.cost_nanos) for e in stored_events(t))
                for t in (acme, outsider)
            }
        assert got == expected
        again = StringIO()
        call_command("events_migrate", "--to", "clickhouse", stdout=again)
        assert "Done: 0 events read, 0 copied, 22 tenant-days already complete." in again.getvalue()
    finally:
        for index in range(2):
            truncate(store, index)
        current.forget()


@pytest.mark.clickhouse
def test_events_migrate_does_not_copy_an_event_deleted_on_clickhouse_again(
    clickhouse_servers, acme, outsider, settings
):
    def use(url: str) -> None:
        settings.COSTMON_EVENT_STORE_URL = url
        settings.COSTMON_CLICKHOUSE_SHARDS = ""
        current.forget()

    def keys(tenant) -> list[str]:
        with unscoped():
            return sorted(e.event_id for e in stored_events(tenant))

    def migrate() -> str:
        out = StringIO()
        call_command("events_migrate", "--to", "clickhouse", stdout=out)
        return next(line for line in out.getvalue().splitlines() if line.startswith("Done:"))

    ch_url = f"clickhouse://127.0.0.1:{clickhouse_servers[0].port}/costmon_migrate_tomb"
    use("")
    post_usage(client_of(acme), spend(1))  # 8 events in two months
    post_usage(client_of(outsider), spend(1))  # the same ids and times
    everything = keys(acme)
    assert keys(outsider) == everything and len(everything) == 8
    use(ch_url)
    store = current.event_store()
    assert isinstance(store, ClickHouseStore)
    try:
        store.create_schema()
        truncate(store, 0)
        assert migrate() == "Done: 16 events read, 16 copied, 0 tenant-days already complete."
        gone = stored_events(acme)[0]
        with unscoped():
            assert usage_events_delete(tenant=acme, keys=[(gone.event_id, gone.occurred_at)]) == 1
        kept = sorted(set(everything) - {gone.event_id})
        for _ in range(2):
            assert migrate() == "Done: 0 events read, 0 copied, 16 tenant-days already complete."
            assert (keys(acme), keys(outsider)) == (kept, everything)
            assert_store_rollups_exact(acme)  # the deleted event's sums stay out
        # A day read again (an event PostgreSQL got meanwhile) copies that one only.
        use("")
        late = event(event_id="late", occurred_at=gone.occurred_at.isoformat())
        post_usage(client_of(acme), [late])
        use(ch_url)
        # 1 + 1 events that day; the deleted one is not copied again.
        assert migrate() == "Done: 2 events read, 1 copied, 15 tenant-days already complete."
        assert (keys(acme), keys(outsider)) == (sorted([*kept, "late"]), everything)
        # As many keys on a day, but not the same ones: ClickHouse got one after the switch,
        # PostgreSQL another before it. Keys are compared (counts alone would skip the day).
        post_usage(client_of(acme), [event(event_id="after", occurred_at="2026-11-20T09:00:00Z")])
        use("")
        post_usage(client_of(acme), [event(event_id="before", occurred_at="2026-11-20T08:00:00Z")])
        use(ch_url)
        assert migrate() == "Done: 1 events read, 1 copied, 16 tenant-days already complete."
        assert keys(acme) == sorted([*kept, "late", "after", "before"])
        assert keys(outsider) == everything
    finally:
        truncate(store, 0)
        current.forget()


def test_every_query_of_the_events_table_carries_the_tenant_filter():
    """Each statement of `usage.eventstore.clickhouse`, `chrewrite` and `chrollups` that reads or
    changes the events or rollup tables (directly or through `current_sql`) names `tenant_where`
    (or `_where`, whose conditions start with it), except the schema, plain inserts of one tenant's rows, the
    whole-partition drops of retention and staff's list of tenants with unpriced events."""
    import ast
    import inspect

    from usage.eventstore import chrewrite, chrollups, clickhouse

    exempt = {"table_sql", "drop_before", "create_schema", "insert_rows", "tenants_with_unpriced"}
    checked = 0
    for module in (clickhouse, chrewrite, chrollups):
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.FunctionDef) and node.name not in exempt:
                text = ast.unparse(node)
                if any(s in text for s in (*READS, "ALTER TABLE {TABLE}", "current_sql(")):
                    assert any(
                        w in text for w in ("tenant_where(", "self._where(", ".filters_where(")
                    ), node.name
                    checked += 1
            if isinstance(node, ast.FunctionDef) and node.name == "_where":
                assert "where = [tenant_where(tenant.pk)]" in ast.unparse(node)
    assert checked >= 15


@pytest.mark.clickhouse
def test_pages_of_the_event_list_reach_far_back_and_keep_their_order(store, acme, outsider):
    """The list looks back a day, then wider (ClickHouse): pages still come newest first, each
    event once, however far apart the events are."""
    days_back = [0, 0.5, 3, 30, 90, 200, 400]
    sent = [
        event(
            event_id=f"d{i}",
            occurred_at=(datetime(2026, 11, 21, 11, tzinfo=UTC) - timedelta(days=d))
            .isoformat()
            .replace("+00:00", "Z"),
        )
        for i, d in enumerate(days_back)
    ]
    client = client_of(acme)
    assert post_usage(client, sent).status_code == 201
    post_usage(client_of(outsider), event(event_id="theirs"))
    for limit in (1, 2, 3):
        seen, cursor = [], None
        while True:
            url = f"/api/v1/usage/?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            page = client.get(url).json()
            seen += [e["event_id"] for e in page["results"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [f"d{i}" for i in range(len(days_back))], limit
    month = client.get("/api/v1/usage/?period=month&limit=2").json()
    assert [e["event_id"] for e in month["results"]] == ["d0", "d1"]


@pytest.mark.clickhouse
def test_a_table_made_before_rewrites_gets_their_columns_and_rewrites_work(
    clickhouse_servers, settings, acme, outsider
):
    """A table of the first release (no `version`, `deleted`; ReplacingMergeTree()) is migrated
    by `create_schema`; its events keep reading as they were, and can be re-priced."""
    from usage.eventstore.chrows import COLUMN_TYPES
    from usage.maintenance import usage_reprice
    from usage.models import ModelPrice

    database = "costmon_old"
    settings.COSTMON_EVENT_STORE_URL = (
        f"clickhouse://127.0.0.1:{clickhouse_servers[0].port}/{database}"
    )
    settings.COSTMON_CLICKHOUSE_SHARDS = ""
    current.forget()
    store = current.event_store()
    assert isinstance(store, ClickHouseStore)
    columns = ", ".join(f"{c} {t}" for c, t in COLUMN_TYPES)
    try:
        store.connections.execute(0, f"DROP DATABASE IF EXISTS {database}", database=False)
        store.connections.execute(0, f"CREATE DATABASE {database}", database=False)
        store.connections.execute(
            0,
            f"CREATE TABLE {database}.{TABLE} ({columns}) ENGINE = ReplacingMergeTree() "
            "PARTITION BY toYYYYMM(occurred_at) ORDER BY (tenant_id, occurred_at, micros, event_id)",
        )
        store.create_schema()
        assert post_usage(client_of(acme), [event(event_id="a")]).status_code == 201
        assert post_usage(client_of(outsider), [event(event_id="a")]).status_code == 201
        store.create_schema()  # again: nothing to add
        names = {
            n
            for (n,) in store.connections.execute(
                0, f"SELECT name FROM system.columns WHERE database = '{database}'"
            )
        }
        assert {"version", "deleted"} <= names
        with unscoped():
            haiku = ModelPrice.objects.unscoped().get(model="claude-haiku-4-5")
            haiku.output_per_mtok = 4
            haiku.save()
            start = datetime(2026, 11, 1, tzinfo=UTC)
            assert (
                usage_reprice(tenant=acme, start=start, end=start + timedelta(days=30)).changed == 1
            )
            assert [e.cost_nanos for e in stored_events(acme)] == [450 * 1_000 + 180 * 4_000]
            assert [e.cost_nanos for e in stored_events(outsider)] == [1_350_000]
            rollup = ModelHourlyRollup.objects.unscoped().filter(tenant=acme).get()
        assert rollup.cost_nanos == 450 * 1_000 + 180 * 4_000
    finally:
        store.connections.execute(0, f"DROP DATABASE IF EXISTS {database}", database=False)
        store.connections.close()
        current.forget()
