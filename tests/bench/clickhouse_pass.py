"""The benchmark's ClickHouse pass (`tests/bench/run.py --event-store clickhouse|both`).

A throwaway clickhouse-server (tests/clickhouse.py, the one the tests start) in a temporary
folder on a free port; a scratch PostgreSQL database of its own for what stays there (tenants,
keys, the catalog, dictionaries, rollups); the data set seeded by `seed_demo`, which with a
ClickHouse store goes through the ingest service in 1,000-event batches (its COPY loader writes
PostgreSQL's table only). Then the figures that depend on the event store: bytes per event,
batch and single-event ingest over HTTP, the dashboard overview and the metrics API. The
pre-flight check, the naive endpoint, the in-process ratios and the rule rounds do not read or
write raw events: they run in the PostgreSQL pass only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from costmon.web.management.launcher import ProcessGroup
from tests.bench.dataset import prepare_database, setup_data
from tests.bench.harness import (
    Context,
    Row,
    Scale,
    costmon_workers,
    free_port,
    say,
    start_costmon,
)
from tests.bench.phases import batch_rows, read_rows, single_rows
from tests.bench.storage import storage_rows

DATABASE = "costmon_bench"  # the ClickHouse database, on the throwaway server


@contextlib.contextmanager
def clickhouse_server() -> Iterator[str]:
    """A clickhouse-server of this run; its URL. Stopped, and its folder removed, at the end."""
    from tests import clickhouse

    if clickhouse.binary() is None:
        raise SystemExit("clickhouse-server is not installed (apt-get install clickhouse-server)")
    folder = Path(tempfile.mkdtemp(prefix="costmon-bench-ch-"))
    server = clickhouse.Server(folder)
    say(f"clickhouse-server on port {server.port}, data in {folder}")
    try:
        yield f"clickhouse://127.0.0.1:{server.port}/{DATABASE}"
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _store() -> Any:
    from usage.eventstore.clickhouse import ClickHouseStore
    from usage.eventstore.current import event_store

    store = event_store()
    if not isinstance(store, ClickHouseStore):
        raise SystemExit("COSTMON_EVENT_STORE_URL does not name a ClickHouse store")
    return store


def clickhouse_storage(store: Any, table: str, buffer: str) -> tuple[int, int]:
    """Bytes on disk of a table's active parts and its rows, over every shard, after its buffer
    is flushed and each partition merged into one part (`OPTIMIZE ... FINAL`)."""
    where = "active AND database = %(db)s AND table = %(table)s"
    total = rows = 0
    for index, shard in enumerate(store.shards):
        params = {"db": shard.database, "table": table}
        store.connections.execute(index, f"OPTIMIZE TABLE {buffer}")  # flushes the buffer
        partitions = store.connections.execute(
            index, f"SELECT DISTINCT partition FROM system.parts WHERE {where}", params
        )
        for (partition,) in partitions:
            store.connections.execute(index, f"OPTIMIZE TABLE {table} PARTITION {partition} FINAL")
        ((size,),) = store.connections.execute(
            index, f"SELECT sum(bytes_on_disk) FROM system.parts WHERE {where}", params
        )
        ((count,),) = store.connections.execute(index, f"SELECT count() FROM {table}")
        total, rows = total + int(size or 0), rows + int(count)
    return total, rows


def clickhouse_storage_rows(context: Context) -> list[Row]:
    from usage.eventstore.chrollups import ROLLUPS, ROLLUPS_BUFFER
    from usage.eventstore.chrows import BUFFER, TABLE

    say("measuring storage in ClickHouse (each partition merged: OPTIMIZE ... FINAL)")
    store = _store()
    size, events = clickhouse_storage(store, TABLE, BUFFER)
    rollup_size, rollup_rows = clickhouse_storage(store, ROLLUPS, ROLLUPS_BUFFER)
    context.events_total = events
    n = max(events, 1)
    per_event = size / n
    # The by-model rollups and the tag-set dictionary stay in PostgreSQL: measured there, as in
    # the PostgreSQL pass (its events table is empty here); the rollups by every dimension are
    # the store's own.
    in_postgres = {r.key or r.what: r for r in storage_rows(context)}
    tag_sets = in_postgres["tag sets"]
    rollups = []
    for row in in_postgres.values():
        if row.what.startswith("hourly rollups, every dimension"):
            row = Row(
                row.what,
                f"{rollup_rows:,} rows, {rollup_size / n:,.1f} bytes per event (in ClickHouse)",
                "",
                None,
            )
        if row.what.startswith("hourly rollups"):
            rollups.append(row)
    return [
        Row(
            f"storage per raw event, ClickHouse parts ({events:,} events)",
            f"{per_event:,.1f} bytes ({per_event * 1e6 / 2**20:,.0f} MB per million)",
            "< 60 bytes",
            per_event < 60,
            key="storage",
        ),
        Row("  of which the table itself", f"{per_event:,.0f} bytes", "", None, key="table"),
        Row(
            tag_sets.what,
            f"{tag_sets.measured} (in PostgreSQL, not in the figure above)",
            "",
            None,
            key="tag sets",
        ),
        *rollups,
    ]


def clickhouse_version() -> str:
    ((version,),) = _store().connections.execute(0, "SELECT version()")
    return str(version)


def clickhouse_pass(
    args: argparse.Namespace, scale: Scale, url: str
) -> tuple[list[Row], Context, str]:
    """Rows of the ClickHouse pass, its context and the server's version; `url` is the
    throwaway server's (COSTMON_EVENT_STORE_URL is set to it before Django starts)."""
    import django
    import redis
    from django.conf import settings

    assert os.environ.get("COSTMON_EVENT_STORE_URL") == url
    fresh = prepare_database(args.database, scale, reuse=False)
    django.setup()
    _store().create_schema()
    context = setup_data(scale, fresh=fresh, jobs=args.jobs, ratios=False)
    rows = clickhouse_storage_rows(context)
    version = clickhouse_version()
    port = free_port()
    say(f"starting gunicorn on ClickHouse: {costmon_workers(args.workers)} workers on port {port}")
    with ProcessGroup(grace=30) as children:
        start_costmon(children, args, port)
        rows += batch_rows(context, scale, port=port, clients=args.clients, naive_rate=None)
        rows += single_rows(context, scale, port=port, clients=args.single_clients, naive_rate=None)
        rows += read_rows(context, scale, port=port)
    # This pass's tenants share ids with the PostgreSQL data set's: leave it no counters of
    # theirs (it rebuilds missing ones from its rollups).
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    return rows, context, version
