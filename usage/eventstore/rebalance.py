"""Moving tenants when ClickHouse shards are added (`manage.py clickhouse_rebalance`).

A tenant's events live on shard `tenant_id % shards`, so a new shard list moves every tenant
whose server changes. For each of those, every row on its old server (each version and each
tombstone, as stored) is copied to its new server, month by month and in chunks; rows are
read from the old table after its buffer is flushed and inserted into the new table itself.

Idempotent and resumable: a row is known by its key and version. A month is skipped when both
servers give each key of the tenant the same newest version (tombstones too), judged without
reading them: how many keys, and the sum of a 64-bit hash of each (key, version), computed alike
on both servers; merges (which drop older versions) change neither. Any other month is read
from the old server in key and version order, in chunks, and each chunk's rows are inserted
unless the new server holds that version of the key or a newer one. A month in which the new
server also holds rows the old one lacks (events sent after the switch) is read again on each
run, copying nothing.

The tenant's rollups follow its events (`chrebuild.rollups_move`): on the new server, months
with events recomputed from the copies, months with rollups only (retention dropped their
events) copied from the old server's by adding the difference.

With `delete`, a moved tenant's rows (events and rollups) are deleted from its old server
(mutations, waited for) once a last pass over them finds nothing left to copy; a tenant whose
pass copied something is left in place (run again).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from costmon.core.models import Tenant
from usage.eventstore.chrebuild import rollups_move
from usage.eventstore.chrollups import ROLLUPS, month_span
from usage.eventstore.chrows import COLUMNS, IDS_PER_QUERY, META_COLUMNS, TABLE
from usage.eventstore.chschema import buffer_flush, mutations_wait
from usage.eventstore.chserver import Connections, Shard, parse_shards
from usage.eventstore.clickhouse import ClickHouseStore, tenant_where

CHUNK = 10_000
NAMES = (*COLUMNS, *(c for c, _, _ in META_COLUMNS))
# A row's identity: its key and version (a tombstone is a version of its own).
_IDENTITY = "occurred_at, micros, event_id, version"
_EVENT_ID, _MICROS, _VERSION = (NAMES.index(c) for c in ("event_id", "micros", "version"))
_HASH = "sipHash64(event_id, toUInt32(occurred_at), micros, version)"


@dataclass
class RebalanceReport:
    tenants_moved: int = 0  # tenants whose server changes
    read: int = 0  # rows read from old servers
    copied: int = 0  # of them, inserted into new servers
    months_skipped: int = 0  # tenant-months the new server held complete already
    deleted: list[int] = field(default_factory=list)  # tenants removed from their old server
    kept: list[int] = field(default_factory=list)  # not removed: their last pass copied rows
    pending: list[int] = field(default_factory=list)  # their deletion still runs after a minute
    rollup_keys: int = 0  # rollup keys on the new servers whose sums changed


@dataclass(frozen=True)
class Move:
    tenant: Tenant
    source: int  # index among the old shards
    target: int  # index among the new shards
    source_address: str
    target_address: str


def old_shards(addresses: str, database: str) -> list[Shard]:
    """`host:port[,host:port...]`, shard 0 first, as the shards were (same database)."""
    if not addresses.strip():
        raise ValueError("No shard address given.")
    # Each address checked alike (after a placeholder shard 0, dropped).
    return parse_shards(f"clickhouse://placeholder/{database}", addresses)[1:]


def moves(old: Sequence[Shard], new: Sequence[Shard], tenants: Sequence[Tenant]) -> list[Move]:
    """The tenants whose server (host:port) differs between the two lists."""
    found = []
    for tenant in tenants:
        source, target = tenant.pk % len(old), tenant.pk % len(new)
        if old[source].address != new[target].address:
            found.append(Move(tenant, source, target, old[source].address, new[target].address))
    return found


def _months(connections: Connections, index: int, tenant_id: int) -> dict[int, tuple[int, int]]:
    """Each key of the tenant with its newest version (the row reads take, tombstones too), per
    month, in shard `index`'s table: (how many, sum of their hashes mod 2^64). Merges keep a
    key's newest version, so they change neither."""
    rows = connections.execute(
        index,
        f"SELECT toYYYYMM(occurred_at) AS month, count(), sum({_HASH}) FROM "
        f"(SELECT {_IDENTITY} FROM {TABLE} WHERE {tenant_where(tenant_id)} "
        "ORDER BY version DESC LIMIT 1 BY occurred_at, micros, event_id) GROUP BY month",
    )
    return {int(m): (int(n), int(h)) for m, n, h in rows}


class Rebalance:
    """Copies moved tenants from the old shards (`old`) to the store's shards."""

    def __init__(
        self,
        store: ClickHouseStore,
        old: Sequence[Shard],
        *,
        chunk: int = CHUNK,
        progress: Callable[[Move, RebalanceReport], None] | None = None,
    ) -> None:
        self.store = store
        self.old = Connections(old)
        self.chunk = chunk
        self.progress = progress
        self.report = RebalanceReport()
        self.complete: dict[int, set[int]] = {}  # per tenant, months the new server held whole

    def run(self, move_list: Sequence[Move], *, delete: bool = False) -> RebalanceReport:
        self.report.tenants_moved = len(move_list)
        try:
            for index in sorted({m.source for m in move_list}):
                buffer_flush(self.old, index)
            for move in move_list:
                self.copy(move)
                complete = self.complete.pop(move.tenant.pk, set())
                self.report.rollup_keys += rollups_move(
                    self.store, self.old, move.source, move.target, move.tenant.pk, complete
                ).keys_changed
                if delete:
                    self.delete(move)
        finally:
            self.old.close()
        return self.report

    def copy(self, move: Move) -> int:
        """Copy the tenant's rows the new server lacks; how many were copied."""
        tenant_id = move.tenant.pk
        held = _months(self.store.connections, move.target, tenant_id)
        copied = 0
        for month, pairs in sorted(_months(self.old, move.source, tenant_id).items()):
            if held.get(month) == pairs:
                self.complete.setdefault(tenant_id, set()).add(month)
                self.report.months_skipped += 1
                continue
            copied += self._copy_month(move, month)
        return copied

    def _copy_month(self, move: Move, month: int) -> int:
        tenant_id = move.tenant.pk
        start, end = month_span(month)
        where = (
            f"{tenant_where(tenant_id)} AND occurred_at >= toDateTime({start}) "
            f"AND occurred_at < toDateTime({end})"
        )
        copied = 0
        last: dict[str, Any] | None = None
        while True:
            after = ""
            if last is not None:
                after = (
                    " AND (occurred_at > toDateTime(%(s)s) OR (occurred_at = toDateTime(%(s)s) "
                    "AND (micros > %(m)s OR (micros = %(m)s AND (event_id > %(e)s "
                    "OR (event_id = %(e)s AND version > %(v)s))))))"
                )
            rows = self.old.execute(
                move.source,
                f"SELECT {', '.join(NAMES)}, toUInt32(occurred_at) FROM {TABLE} "
                f"WHERE {where}{after} ORDER BY {_IDENTITY} "
                f"LIMIT 1 BY {_IDENTITY} LIMIT {int(self.chunk)}",
                last,
            )
            if not rows:
                return copied
            self.report.read += len(rows)
            have = self._held(move, rows)
            fresh = [r[:-1] for r in rows if _identity(r) not in have]
            if fresh:
                self.store.connections.execute(
                    move.target, f"INSERT INTO {TABLE} ({', '.join(NAMES)}) VALUES", fresh
                )
                self.report.copied += len(fresh)
                copied += len(fresh)
            if self.progress:
                self.progress(move, self.report)
            event_id, micros, version, seconds = _identity(rows[-1])
            last = {"s": seconds, "m": micros, "e": event_id, "v": version}

    def _held(self, move: Move, rows: list[tuple[Any, ...]]) -> set[tuple[str, int, int, int]]:
        """The identities (`_identity`) of `rows` the new server's table holds, or supersedes
        with a newer version of the key (a rewrite there, or a merge that dropped the copy's
        older versions): copying those would change nothing any read sees."""
        newest: dict[tuple[str, int, int], int] = {}
        for start in range(0, len(rows), IDS_PER_QUERY):
            part = rows[start : start + IDS_PER_QUERY]
            seconds = [int(r[-1]) for r in part]
            found = self.store.connections.execute(
                move.target,
                f"SELECT event_id, micros, max(version), toUInt32(occurred_at) AS s FROM {TABLE} "
                f"WHERE {tenant_where(move.tenant.pk)} AND occurred_at >= toDateTime(%(lo)s) "
                "AND occurred_at <= toDateTime(%(hi)s) AND event_id IN %(ids)s "
                "GROUP BY event_id, micros, s",
                {
                    "lo": min(seconds),
                    "hi": max(seconds),
                    "ids": tuple({r[_EVENT_ID] for r in part}),
                },
            )
            for e, m, v, at in found:
                key = (str(e), int(m), int(at))
                newest[key] = max(int(v), newest.get(key, -1))
        identities = (_identity(row) for row in rows)
        return {i for i in identities if newest.get((i[0], i[1], i[3]), -1) >= i[2]}

    def delete(self, move: Move) -> None:
        """Remove the tenant's rows from its old server, if a last pass copies nothing."""
        buffer_flush(self.old, move.source)
        if self.copy(move):
            self.report.kept.append(move.tenant.pk)
            return
        for table in (TABLE, ROLLUPS):
            self.old.execute(
                move.source, f"ALTER TABLE {table} DELETE WHERE {tenant_where(move.tenant.pk)}"
            )
        mutations_wait(self.old, move.source, self.old.shards[move.source].database)
        left = self.old.execute(
            move.source, f"SELECT count() FROM {TABLE} WHERE {tenant_where(move.tenant.pk)}"
        )
        (self.report.pending if left[0][0] else self.report.deleted).append(move.tenant.pk)


def _identity(row: tuple[Any, ...]) -> tuple[str, int, int, int]:
    """(event id, micros, version, unix seconds) of a row read by `_copy_month`."""
    return str(row[_EVENT_ID]), int(row[_MICROS]), int(row[_VERSION]), int(row[-1])
