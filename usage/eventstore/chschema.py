"""The ClickHouse store's statements about tables rather than a tenant's rows: creating and
migrating the events table and its buffer, flushing the buffer, waiting for a mutation, and
dropping whole months (`usage.eventstore.clickhouse` calls these, shard by shard)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from usage.eventstore.chrollups import (
    ROLLUPS,
    buffers_flush,
    rollups_buffer_sql,
    rollups_table_sql,
)
from usage.eventstore.chrows import (
    BUFFER,
    COLUMNS,
    META_COLUMNS,
    TABLE,
    buffer_sql,
    migrate_sql,
    table_sql,
)
from usage.eventstore.chserver import Connections

_COLUMNS_SQL = "SELECT name FROM system.columns WHERE database = %(db)s AND table = %(t)s"


def schema_create(connections: Connections, index: int, database: str) -> None:
    """The database, the table (with the rewrite columns) and its buffer on shard `index`
    (idempotent). A buffer whose columns are not the table's is dropped, which flushes it, and
    made again: a Buffer table keeps the columns it was made with."""
    connections.execute(index, f"CREATE DATABASE IF NOT EXISTS {database}", database=False)
    connections.execute(index, table_sql(database))
    present = {
        str(n) for (n,) in connections.execute(index, _COLUMNS_SQL, {"db": database, "t": TABLE})
    }
    for statement in migrate_sql(present):
        connections.execute(index, statement)
    buffered = {
        str(n) for (n,) in connections.execute(index, _COLUMNS_SQL, {"db": database, "t": BUFFER})
    }
    if buffered and buffered != {*COLUMNS, *(c for c, _, _ in META_COLUMNS)}:
        connections.execute(index, f"DROP TABLE {BUFFER}")
    connections.execute(index, buffer_sql(database))
    connections.execute(index, rollups_table_sql(database))
    connections.execute(index, rollups_buffer_sql(database))


def buffer_flush(connections: Connections, index: int) -> None:
    """Write what shard `index`'s buffers hold (events, then rollups) to their tables now. A
    buffer is locked while it writes, so every row inserted before this call is in the table
    when it returns."""
    buffers_flush(connections, index)


def mutations_wait(connections: Connections, index: int, database: str) -> None:
    """Wait (a minute at most) for the mutations of the events and rollup tables on shard
    `index` to finish: 18.16 runs them in the background and has no `mutations_sync`."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pending = connections.execute(
            index,
            "SELECT count() FROM system.mutations WHERE database = %(db)s "
            "AND table IN %(t)s AND is_done = 0",
            {"db": database, "t": (TABLE, ROLLUPS)},
        )
        if not pending[0][0]:
            return
        time.sleep(0.05)


def months_drop_before(
    connections: Connections, index: int, database: str, address: str, before: datetime
) -> list[tuple[str, int]]:
    """Drop shard `index`'s monthly partitions that end at or before `before` (its buffer
    flushed first, so no row of them arrives later): (partition, rows) of each."""
    buffer_flush(connections, index)
    cutoff = before.astimezone(UTC)
    dropped: list[tuple[str, int]] = []
    parts = connections.execute(
        index,
        "SELECT partition, sum(rows) FROM system.parts WHERE database = %(db)s "
        "AND table = %(t)s AND active GROUP BY partition ORDER BY partition",
        {"db": database, "t": TABLE},
    )
    for partition, rows in parts:
        month = str(partition).strip("'")
        year, number = int(month[:4]), int(month[4:6])
        end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
        if end <= cutoff:
            connections.execute(index, f"ALTER TABLE {TABLE} DROP PARTITION {int(month)}")
            dropped.append((f"{address}/{TABLE}/{month}", int(rows)))
    return dropped
