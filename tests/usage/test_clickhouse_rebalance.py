"""`manage.py clickhouse_rebalance`: tenants whose shard changes when a shard is added are
copied to their new server (every version and tombstone), once, and removed from the old one
only when asked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from costmon.core.services import api_key_create, tenant_create
from costmon.core.tenancy import unscoped
from tests.helpers import event, post_usage, stored_events
from usage.eventstore import current
from usage.eventstore.chrollups import ROLLUPS, buffers_flush, rollup_sums_by_key
from usage.eventstore.chrows import BUFFER, TABLE
from usage.eventstore.clickhouse import ClickHouseStore
from usage.eventstore.rebalance import NAMES
from usage.maintenance import usage_events_delete, usage_reprice
from usage.models import ModelPrice
from usage.rollups import ROLLUP_SUMS

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
DATABASE = "costmon_rebalance"


def client_of(tenant: Any) -> APIClient:
    client = APIClient()
    secret = api_key_create(tenant=tenant, scopes="ingest,read").secret
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def use(settings: Any, servers: list[Any], count: int) -> ClickHouseStore:
    settings.COSTMON_EVENT_STORE_URL = f"clickhouse://127.0.0.1:{servers[0].port}/{DATABASE}"
    settings.COSTMON_CLICKHOUSE_SHARDS = f"127.0.0.1:{servers[1].port}" if count == 2 else ""
    current.forget()
    store = current.event_store()
    assert isinstance(store, ClickHouseStore)
    return store


def drop(store: ClickHouseStore) -> None:
    for index in range(2):
        if store.connections.execute(index, f"EXISTS TABLE {DATABASE}.{TABLE}", database=False)[0][
            0
        ]:
            store.connections.execute(index, f"SYSTEM START MERGES {DATABASE}.{TABLE}")
        store.connections.execute(index, f"DROP DATABASE IF EXISTS {DATABASE}", database=False)
    store.connections.close()


def rows_on(store: ClickHouseStore, index: int, tenant_id: int) -> list[tuple[Any, ...]]:
    """Every row of the tenant in shard `index`'s table, versions and tombstones too."""
    store.connections.execute(index, f"OPTIMIZE TABLE {BUFFER}")
    return store.connections.execute(
        index,
        f"SELECT {', '.join(NAMES)} FROM {TABLE} WHERE tenant_id = {int(tenant_id)} "
        "ORDER BY occurred_at, micros, event_id, version",
    )


def newest(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Each key's row of the highest version (what a merge keeps), in `rows_on`'s order."""
    version = NAMES.index("version")
    best: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in rows:
        key = row[: NAMES.index("micros") + 1]
        if key not in best or row[version] > best[key][version]:
            best[key] = row
    return [r for r in rows if best[r[: NAMES.index("micros") + 1]] is r]


def view(store: ClickHouseStore, tenant: Any) -> tuple[Any, ...]:
    """What reads of the tenant give: its events, and (events, exact nano-dollars)."""
    with unscoped():
        events = [(e.event_id, e.occurred_at, e.cost_nanos) for e in stored_events(tenant)]
    # The store's rollups on the tenant's shard sum exactly its events there (calls, cost).
    index = store.shard_of(tenant.pk)
    buffers_flush(store.connections, index)
    held = rollup_sums_by_key(store.connections, index, tenant.pk, 0, 2**32 - 1).values()
    calls, cost = (ROLLUP_SUMS.index(n) for n in ("calls", "cost_nanos"))
    assert (sum(v[calls] for v in held), sum(v[cost] for v in held)) == store.totals(tenant.pk)
    return events, store.totals(tenant.pk)


def rebalance(servers: list[Any], *extra: str) -> str:
    out = StringIO()
    call_command(
        "clickhouse_rebalance", "--from-shards", f"127.0.0.1:{servers[0].port}", *extra, stdout=out
    )
    return out.getvalue()


@pytest.mark.clickhouse
@time_machine.travel("2026-11-21T12:00:00Z", tick=False)
def test_adding_a_shard_moves_tenants_with_every_version_once(clickhouse_servers, settings):
    with unscoped():
        tenants = [tenant_create(slug=f"t{i}", name=f"T {i}") for i in range(4)]
    movers = [t for t in tenants if t.pk % 2 == 1]
    stayers = [t for t in tenants if t.pk % 2 == 0]  # outsiders: they stay on shard 0
    assert movers and stayers
    try:
        drop(use(settings, clickhouse_servers, 2))
        both = use(settings, clickhouse_servers, 2)
        both.create_schema()
        for index in range(2):  # every version stays, so rows can be compared exactly
            both.connections.execute(index, f"SYSTEM STOP MERGES {DATABASE}.{TABLE}")
        old = use(settings, clickhouse_servers, 1)
        for n, tenant in enumerate(tenants):
            payload = [
                event(
                    event_id=f"e{i}",
                    occurred_at=f"2026-{10 + i % 2}-{1 + i:02d}T0{i}:00:00.{i:06d}Z",
                    input_tokens=100 * (n + 1) + i,
                )
                for i in range(6)
            ]
            assert post_usage(client_of(tenant), payload).status_code == 201
        mover = movers[0]
        with unscoped():
            haiku = ModelPrice.objects.unscoped().get(model="claude-haiku-4-5")
            haiku.output_per_mtok = 4
            haiku.save()
            start = datetime(2026, 11, 1, tzinfo=UTC)
            assert usage_reprice(tenant=mover, start=start, end=start + timedelta(days=30)).changed
            gone = stored_events(mover)[-1]  # in October
            assert usage_events_delete(tenant=mover, keys=[(gone.event_id, gone.occurred_at)]) == 1
        before = {t.pk: view(old, t) for t in tenants}
        assert gone.event_id not in [e[0] for e in before[mover.pk][0]]
        stored = {t.pk: rows_on(old, 0, t.pk) for t in tenants}
        version, deleted = NAMES.index("version"), NAMES.index("deleted")
        assert any(r[version] and not r[deleted] for r in stored[mover.pk])  # re-priced
        assert any(r[deleted] for r in stored[mover.pk])  # a tombstone
        assert before[mover.pk][1][1] == sum(e[2] for e in before[mover.pk][0])

        new = use(settings, clickhouse_servers, 2)
        new.create_schema()
        # What a run stopped half-way left on the new shard: three of the mover's rows.
        insert = f"INSERT INTO {TABLE} ({', '.join(NAMES)}) VALUES"
        new.connections.execute(1, insert, stored[mover.pk][:3])
        out = rebalance(clickhouse_servers, "--chunk", "4")
        assert "The store's rollups: 0 keys changed." not in out
        read = sum(len(stored[t.pk]) for t in movers)
        assert f"{len(movers)} of 4 tenants change shard (1 shards before, 2 now)." in out
        assert f"Done: {len(movers)} tenants moved, {read} rows read, {read - 3} copied" in out
        assert f"{movers[0].slug} (127.0.0.1:" in out  # progress
        assert {t.pk: view(new, t) for t in tenants} == before
        for tenant in movers:
            assert rows_on(new, 1, tenant.pk) == stored[tenant.pk]  # exactly as stored
        for tenant in stayers:
            assert rows_on(new, 1, tenant.pk) == []

        # Copy first, switch later: rows that reach the old shard meanwhile (a process still on
        # the old list: an event, a tombstone) are copied by the next run, and only they.
        old = use(settings, clickhouse_servers, 1)
        late = event(event_id="late", occurred_at="2026-11-20T09:00:00Z")
        assert post_usage(client_of(mover), [late]).status_code == 201
        with unscoped():
            gone = stored_events(mover)[-1]
            assert usage_events_delete(tenant=mover, keys=[(gone.event_id, gone.occurred_at)]) == 1
        before[mover.pk] = view(old, mover)
        stored[mover.pk] = rows_on(old, 0, mover.pk)
        new = use(settings, clickhouse_servers, 2)
        assert ", 2 copied, " in rebalance(clickhouse_servers)
        assert {t.pk: view(new, t) for t in tenants} == before
        assert rows_on(new, 1, mover.pk) == stored[mover.pk]

        again = rebalance(clickhouse_servers)
        assert f"0 rows read, 0 copied, {2 * len(movers)} tenant-months already complete." in again
        assert "The store's rollups: 0 keys changed." in again  # nothing to add

        # Merges (needed by the deletion, a mutation) keep only each key's newest version, on
        # either side: still nothing to copy.
        for index in range(2):
            new.connections.execute(index, f"SYSTEM START MERGES {DATABASE}.{TABLE}")
            new.connections.execute(index, f"OPTIMIZE TABLE {TABLE} FINAL")
        assert ", 0 rows read, 0 copied, " in rebalance(clickhouse_servers)
        merged = {t.pk: rows_on(new, 0, t.pk) for t in tenants}
        assert merged[mover.pk] == newest(stored[mover.pk]) != stored[mover.pk]

        out = rebalance(clickhouse_servers, "--delete-moved")
        assert ", 0 copied, " in out and f"Deleted {len(movers)} tenants" in out
        for tenant in movers:
            assert rows_on(new, 0, tenant.pk) == []
            rollups = f"SELECT count() FROM {ROLLUPS} WHERE tenant_id = {tenant.pk}"
            assert new.connections.execute(0, rollups) == [(0,)]
            assert rows_on(new, 1, tenant.pk) == newest(stored[tenant.pk])
        for tenant in stayers:
            assert rows_on(new, 0, tenant.pk) == merged[tenant.pk]
        assert {t.pk: view(new, t) for t in tenants} == before
    finally:
        drop(use(settings, clickhouse_servers, 2))
        current.forget()


def test_the_rebalance_needs_a_clickhouse_store_and_a_shard_list(settings):
    settings.COSTMON_EVENT_STORE_URL = ""
    current.forget()
    with pytest.raises(CommandError, match="COSTMON_EVENT_STORE_URL"):
        call_command("clickhouse_rebalance", "--from-shards", "127.0.0.1:9000")
    settings.COSTMON_EVENT_STORE_URL = "clickhouse://127.0.0.1:1/db"
    current.forget()
    try:
        for bad in ("", "nohost", "127.0.0.1:9000,:x", "127.0.0.1:x"):
            with pytest.raises(CommandError, match="--from-shards"):
                call_command("clickhouse_rebalance", "--from-shards", bad)
        with pytest.raises(CommandError, match="cannot be reached"):
            call_command("clickhouse_rebalance", "--from-shards", "127.0.0.1:2", stdout=StringIO())
    finally:
        current.forget()
