"""Raw events in ClickHouse, sharded by tenant: `tenant_id % shards` picks the one server that
holds all of a tenant's events (reads are always one tenant's, so no Distributed table; see the
README, "Scaling out").

Exactly-once: ClickHouse deduplicates a ReplacingMergeTree's rows only when parts merge, some
time later. So ingest, under the tenant's exclusive PostgreSQL advisory lock (held until the
batch's PostgreSQL transaction ends), asks the tenant's shard which of the batch's keys it holds,
adds only the others to the rollups and inserts only those, then their sums into the store's own
hourly rollups (`chrollups`: what a failure between leaves); every read takes one row per key
(`LIMIT 1 BY`), which stays right before merges too. An insert is visible to the next query on
that server as soon as it returns.

Buffer (on with `COSTMON_CLICKHOUSE_BUFFER`; off, every insert goes to the table and the buffer
stays empty): a MergeTree insert makes a part (a directory of files), so single events would
each make one, and the server merges them afterwards. Inserts of fewer than `chrows.DIRECT_ROWS`
rows go to a Buffer table in front (`chrows.BUFFER`), which writes a part per flush (every
`BUFFER_SECONDS` at most); reads name the buffer, which reads the table and the rows not flushed
yet. A read of a Buffer table takes the table's parts before the buffer's rows, so rows flushed
at that moment can be missing from that one answer: the duplicate check asks the table again
(`_key_states`); sums, rewrites, a tenant's reset and retention flush the buffer first (`flush`;
under the tenant's ingest lock, as rewrites and the counters' rebuild are, that is exact). A
list, export or lookup of events can, rarely, miss for that one answer rows sent within the
last moment. What the buffer holds is lost if ClickHouse
stops abnormally (a normal stop flushes it): those events, up to `BUFFER_SECONDS` of small
inserts, stay counted in PostgreSQL's rollups (see the README, "Buffer"); the store's own
are repaired by `manage.py clickhouse_rollups_rebuild` (`chrebuild`).

The SQL is what ClickHouse 18.16 (Debian's package) and current releases both accept: times as
`DateTime` (seconds) plus a `micros` column, compared with `toDateTime(<unix seconds>)`; money
as integer nano-dollars; every query's tenant filter from `tenant_where`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from django.db import connection
from django.utils import timezone

from costmon.core.models import Tenant
from costmon.core.periods import EARLIEST, LATEST
from usage.event_queries import FILTER_FIELDS, EventPage, TagValue
from usage.eventstore.base import (
    GROUP_COLUMNS,
    EventQuery,
    EventStore,
    EventSums,
    checked_grouping,
)
from usage.eventstore.chrollups import (
    ROLLUPS,
    ingest_sums_insert,
    rollup_event_sums,
    sums_of_rows,
)
from usage.eventstore.chrows import (
    BUCKET_SQL,
    BUFFER,
    CH_INGEST_LOCK_NAMESPACE,
    COLUMNS,
    DIRECT_ROWS,
    IDS_PER_QUERY,
    KINDS,
    LOOK_BACK,
    META_COLUMNS,
    NEWEST_FIRST,
    ONE_PER_KEY,
    SUM_SQL,
    TABLE,
    ch_columns,
    ch_row,
    current_sql,
    decode_cursor,
    encode_cursor,
    event_of,
    key_of,
    seconds_of,
    tenant_where,
    with_names,
)
from usage.eventstore.chschema import (
    buffer_flush,
    months_drop_before,
    mutations_wait,
    schema_create,
)
from usage.eventstore.chserver import Connections, Shard
from usage.models import Dimension, TagSet, UsageEvent
from usage.rollups import SUMMED_EVENT_COLUMNS, aggregate
from usage.storage import rollups_add, tag_rollups_add
from usage.tagsets import with_tag_set_ids


class ClickHouseStore(EventStore):
    name = "clickhouse"
    label = "ClickHouse"
    # Rewrites insert newer versions of rows, or tombstones (`usage.storerewrites`).
    rewrites_events = True
    keeps_user_rollups = True

    def __init__(self, shards: Sequence[Shard], *, buffered: bool = False) -> None:
        self.shards = list(shards)
        self.connections = Connections(self.shards)
        # Small inserts go to the buffer (COSTMON_CLICKHOUSE_BUFFER); else every insert to the
        # table, and the buffer, still made and read, stays empty.
        self.buffered = buffered

    def shard_of(self, tenant_id: int) -> int:
        """The index of the shard that holds all of the tenant's events."""
        return int(tenant_id) % len(self.shards)

    def run(self, tenant_id: int, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """One statement on the tenant's shard."""
        return self.connections.execute(self.shard_of(tenant_id), sql, params)

    # --- schema ---------------------------------------------------------------------------

    def create_schema(self) -> None:
        """The database, the table and its buffer on every shard (idempotent)."""
        for index, shard in enumerate(self.shards):
            schema_create(self.connections, index, shard.database)

    def flush(self, tenant_id: int) -> None:
        """Write the buffer of the tenant's shard to the table now (`chschema.buffer_flush`)."""
        buffer_flush(self.connections, self.shard_of(tenant_id))

    # --- writes ---------------------------------------------------------------------------

    def insert_new(self, rows: Sequence[dict[str, Any]], *, direct: bool = False) -> set[str]:
        if not rows:
            return set()
        tenant_id = int(rows[0]["tenant_id"])
        assert all(r["tenant_id"] == tenant_id for r in rows), "one tenant per batch"
        self._lock(tenant_id)
        held, buried = self._key_states(tenant_id, rows, locked=True, direct=direct)
        fresh = [r for r in rows if key_of(r) not in held]
        if not fresh:
            return set()
        with_tag_set_ids([r for r in fresh if r["tags"] and r.get("tag_set_id") is None])
        # PostgreSQL first (rollups), ClickHouse last: a failed insert rolls the rollups back.
        sums = aggregate(fresh)
        rollups_add(sums)
        tagged = [r for r in fresh if r["tags"]]
        if tagged:
            tag_rollups_add(tagged)
        # A resend of a deleted event comes back: one version above its tombstone.
        versions = [buried.get(key_of(r), -1) + 1 for r in fresh]
        if direct:  # a bulk load's block, by column (faster to build and to send)
            small = self._insert(tenant_id, ch_columns(fresh, versions), direct=True, columnar=True)
        else:
            small = self._insert(
                tenant_id, [ch_row(r, v) for r, v in zip(fresh, versions, strict=True)]
            )
        # The store's rollups after the events (`chrollups`: what a failure between leaves).
        ingest_sums_insert(self.connections, self.shard_of(tenant_id), sums, buffered=small)
        return {r["event_id"] for r in fresh}

    @staticmethod
    def key(row: dict[str, Any]) -> tuple[str, int, int]:
        """A row's key as `keys_held` gives it: (event id, unix seconds, microseconds)."""
        return key_of(row)

    def insert_rows(
        self, tenant_id: int, rows: Sequence[dict[str, Any]], version: int = 0, deleted: int = 0
    ) -> None:
        """Plain insert of rows of one tenant into the table itself, past the buffer (no
        duplicate check: see `insert_new`). Rewrites flush the buffer first (`flush`), so their
        rows reach the table after the versions they replace."""
        self._insert(tenant_id, [ch_row(r, version, deleted) for r in rows], direct=True)

    def _insert(
        self, tenant_id: int, values: list[Any], direct: bool = False, columnar: bool = False
    ) -> bool:
        """Insert; whether into the buffer."""
        names = [*COLUMNS, *(c for c, _, _ in META_COLUMNS)]
        small = self.buffered and not direct and len(values) < DIRECT_ROWS
        sql = f"INSERT INTO {BUFFER if small else TABLE} ({', '.join(names)}) VALUES"
        self.connections.execute(self.shard_of(tenant_id), sql, values, columnar=columnar)
        return small

    def _lock(self, tenant_id: int) -> None:
        if connection.vendor != "postgresql":
            raise RuntimeError("The ClickHouse event store needs PostgreSQL as the main database.")
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)",
                [CH_INGEST_LOCK_NAMESPACE, tenant_id % 2_000_000_000],
            )

    def keys_held(
        self, tenant_id: int, rows: Sequence[dict[str, Any]]
    ) -> set[tuple[str, int, int]]:
        """The keys of `rows` the tenant's shard holds (`key`), as events or as tombstones."""
        held, buried = self._key_states(tenant_id, rows)
        return held | set(buried)

    def _key_states(
        self,
        tenant_id: int,
        rows: Sequence[dict[str, Any]],
        *,
        locked: bool = False,
        direct: bool = False,
    ) -> tuple[set[tuple[str, int, int]], dict[tuple[str, int, int], int]]:
        """The keys of `rows` held as events, and the version of those held as tombstones, in a
        few queries: ids in groups, as ClickHouse limits a query's text (256 kB by default).

        Each group is read through the buffer, then from the table: a query of a Buffer table
        takes the table's parts first and the buffer's rows later, so rows flushed in between
        are in neither; the second query, begun after the first read the buffer, finds them.
        Each key's newest version of the two answers counts. A large batch of ingest (`locked`:
        under the tenant's lock, which keeps its other inserts out) flushes the buffer instead
        and asks the table alone: none of the tenant's rows can be in the buffer then. A bulk
        load's rows (`direct`, sorted by time) skip each group whose time span the table holds
        no row of (as a load into new time does): one cheap query instead of the ids'."""
        tables: tuple[str, ...] = (BUFFER, TABLE)
        if not self.buffered:
            tables = (TABLE,)  # the buffer holds nothing: nothing inserted goes there
        elif locked and (direct or len(rows) >= DIRECT_ROWS):
            self.flush(tenant_id)
            tables = (TABLE,)
        newest: dict[tuple[str, int, int], tuple[int, int]] = {}
        for start in range(0, len(rows), IDS_PER_QUERY):
            part = rows[start : start + IDS_PER_QUERY]
            times = [r["occurred_at"] for r in part]
            params: dict[str, Any] = {"lo": seconds_of(min(times)), "hi": seconds_of(max(times))}
            if direct and not self._any_between(tenant_id, params):
                continue
            params["ids"] = tuple({r["event_id"] for r in part})
            for table in tables:
                found = self.run(
                    tenant_id,
                    f"SELECT event_id, toUInt32(occurred_at), micros, version, deleted "
                    f"FROM {table} WHERE {tenant_where(tenant_id)} "
                    "AND occurred_at >= toDateTime(%(lo)s) AND occurred_at <= toDateTime(%(hi)s) "
                    f"AND event_id IN %(ids)s ORDER BY version DESC {ONE_PER_KEY}",
                    params,
                )
                for eid, seconds, micros, version, deleted in found:
                    key = (eid, int(seconds), int(micros))
                    if key not in newest or int(version) > newest[key][0]:
                        newest[key] = (int(version), int(deleted))
        held = {key for key, (_, deleted) in newest.items() if not deleted}
        buried = {key: version for key, (version, deleted) in newest.items() if deleted}
        return held, buried

    def _any_between(self, tenant_id: int, span: dict[str, Any]) -> bool:
        """Whether the table holds a row of the tenant from `lo` to `hi` (unix seconds)."""
        where = "occurred_at >= toDateTime(%(lo)s) AND occurred_at <= toDateTime(%(hi)s)"
        found = self.run(
            tenant_id,
            f"SELECT 1 FROM {TABLE} WHERE {tenant_where(tenant_id)} AND {where} LIMIT 1",
            span,
        )
        return bool(found)

    # --- reads ----------------------------------------------------------------------------

    def stored_costs(
        self, tenant_id: int, times: dict[str, datetime]
    ) -> dict[str, tuple[int, int]]:
        if not times:
            return {}
        found = self.run(
            tenant_id,
            current_sql(
                ("event_id", "toUInt32(occurred_at)", "micros", "cost_nanos", "cost_source"),
                f"{tenant_where(tenant_id)} AND event_id IN %(ids)s",
            ),
            {"ids": tuple(times)},
        )
        stored = {}
        for eid, seconds, micros, cost, source in found:
            at = times[eid]
            if (seconds_of(at), at.microsecond) == (int(seconds), int(micros)):
                stored[eid] = (int(cost), int(source))
        return stored

    def filters_where(
        self, tenant: Tenant, query: EventQuery
    ) -> tuple[list[str], dict[str, Any]] | None:
        return self._where(tenant, query)

    def _where(self, tenant: Tenant, query: EventQuery) -> tuple[list[str], dict[str, Any]] | None:
        """The conditions of the query on what rewrites keep (None: nothing can match); the cost
        source's is `_after`'s, as a rewrite changes it."""
        where = [tenant_where(tenant.pk)]
        params: dict[str, Any] = {}
        tr = query.time_range
        if tr is not None:
            # Whole seconds in ClickHouse's `occurred_at`; the sub-second part in `micros`.
            where.append(
                "(occurred_at > toDateTime(%(s0)s) OR (occurred_at = toDateTime(%(s0)s) "
                "AND micros >= %(m0)s))"
            )
            where.append(
                "(occurred_at < toDateTime(%(s1)s) OR (occurred_at = toDateTime(%(s1)s) "
                "AND micros < %(m1)s))"
            )
            params.update(
                s0=seconds_of(tr.start),
                m0=tr.start.microsecond,
                s1=seconds_of(tr.end),
                m1=tr.end.microsecond,
            )
        for name in FILTER_FIELDS:
            value = getattr(query.filters, name)
            if value is not None:
                ids = self._ids(
                    Dimension.objects.for_tenant(tenant).filter(kind=KINDS[name], value=value)
                )
                if not ids:
                    return None
                where.append(f"{name}_id IN %({name})s")
                params[name] = ids
        if query.session_id is not None:
            ids = self._ids(
                Dimension.objects.for_tenant(tenant).filter(
                    kind=Dimension.Kind.SESSION, value=query.session_id
                )
            )
            if not ids:
                return None
            where.append("session_id IN %(session)s")
            params["session"] = ids
        if query.filters.tag is not None:
            tag_name, tag_value = query.filters.tag
            set_ids = self._ids(
                TagSet.objects.for_tenant(tenant)
                .alias(tag_filter=TagValue(tag_name, source="tags"))
                .filter(tag_filter=tag_value)
            )
            if not set_ids:
                return None
            where.append("tag_set_id IN %(tag_sets)s")
            params["tag_sets"] = set_ids
        if query.is_error is not None:
            where.append(f"is_error = {1 if query.is_error else 0}")
        return where, params

    @staticmethod
    def _after(query: EventQuery) -> str:
        if query.cost_source is None:
            return ""
        return f" AND cost_source = {int(query.cost_source)}"

    @staticmethod
    def _ids(qs: Any) -> tuple[int, ...]:
        return tuple(int(i) for i in qs.values_list("pk", flat=True))

    def page(self, tenant: Tenant, query: EventQuery, cursor: str | None, limit: int) -> EventPage:
        events = self._select(tenant, query, cursor, limit + 1)
        next_cursor = encode_cursor(events[limit - 1]) if len(events) > limit else None
        return EventPage(events=events[:limit], next_cursor=next_cursor)

    def _select(
        self, tenant: Tenant, query: EventQuery, cursor: str | None, limit: int
    ) -> list[UsageEvent]:
        built = self._where(tenant, query)
        if built is None:
            return []
        where, params = built
        anchor = query.time_range.end if query.time_range is not None else timezone.now()
        if cursor:
            seconds, micros, event_id = decode_cursor(cursor)
            where.append(
                "(occurred_at < toDateTime(%(cs)s) OR (occurred_at = toDateTime(%(cs)s) AND "
                "(micros < %(cm)s OR (micros = %(cm)s AND event_id < %(ce)s))))"
            )
            params.update(cs=seconds, cm=micros, ce=event_id)
            anchor = datetime.fromtimestamp(seconds + 1, UTC)
        # 18.16 sorts every matching row before the LIMIT: look back a day first, then wider,
        # and stop at the first window that fills the page (all newer rows are in it).
        for window in LOOK_BACK:
            since = anchor - window if window is not None else None
            if (
                since is not None
                and query.time_range is not None
                and since <= query.time_range.start
            ):
                since = None  # the range's own start bounds it already
            bounded = [*where, "occurred_at >= toDateTime(%(since)s)"] if since else where
            rows = self.run(
                tenant.pk,
                current_sql(
                    COLUMNS,
                    " AND ".join(bounded),
                    order=f"{NEWEST_FIRST.removeprefix('ORDER BY ')}, ",
                    after=f"{self._after(query)} {NEWEST_FIRST} LIMIT {int(limit)}",
                ),
                {**params, "since": seconds_of(since)} if since else params,
            )
            if since is None or len(rows) >= limit:
                return with_names(tenant, [event_of(r) for r in rows])
        raise AssertionError("unreachable: the last window is unbounded")

    def iter_events(self, tenant: Tenant, query: EventQuery) -> Iterator[UsageEvent]:
        cursor = None
        while True:
            page = self.page(tenant, query, cursor, 2000)
            yield from page.events
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def lookup(
        self, tenant: Tenant, event_id: str, occurred_at: datetime | None
    ) -> UsageEvent | None:
        where = [tenant_where(tenant.pk), "event_id = %(id)s"]
        params: dict[str, Any] = {"id": event_id}
        if occurred_at is not None and not EARLIEST <= occurred_at < LATEST:
            return None  # no event has that time (and DateTime could not hold it)
        if occurred_at is not None:
            where.append("occurred_at = toDateTime(%(s)s) AND micros = %(m)s")
            params.update(s=seconds_of(occurred_at), m=occurred_at.microsecond)
        rows = self.run(
            tenant.pk,
            current_sql(COLUMNS, " AND ".join(where), after=f" {NEWEST_FIRST} LIMIT 1"),
            params,
        )
        events = with_names(tenant, [event_of(r) for r in rows])
        return events[0] if events else None

    def event_sums(
        self,
        tenant: Tenant,
        query: EventQuery,
        *,
        by: Sequence[str] = (),
        bucket: str | None = None,
    ) -> list[EventSums]:
        checked_grouping(by, bucket, query)
        answered = rollup_event_sums(self, tenant, query, by, bucket)
        if answered is not None:
            return answered  # from the hourly rollups (`chrollups.answerable`)
        built = self._where(tenant, query)
        if built is None:
            return []
        # Sums feed budgets (the counters' rebuild runs under the tenant's ingest lock): the
        # buffer flushed first, none of the tenant's earlier rows can be in flight meanwhile.
        self.flush(tenant.pk)
        where, params = built
        keys = [GROUP_COLUMNS[k] for k in by]
        if bucket is not None:
            assert query.time_range is not None
            keys.append(BUCKET_SQL[bucket])
            params["zone"] = str(query.time_range.tz)
        inner = list(dict.fromkeys(["occurred_at", *SUMMED_EVENT_COLUMNS, *keys[: len(by)]]))
        sums = ", ".join(sql for _, sql in SUM_SQL)
        group = f" GROUP BY {', '.join(keys)}" if keys else ""
        rows = self.run(
            tenant.pk,
            f"SELECT {', '.join([*keys, sums])} FROM "
            f"({current_sql(inner, ' AND '.join(where), after=self._after(query))}){group}",
            params,
        )
        zone = query.time_range.tz if query.time_range is not None else UTC
        return sums_of_rows(rows, len(by), bucket, zone)

    def repeated_prompts(self, tenant: Tenant, query: EventQuery) -> list[tuple[int, int]]:
        built = self._where(tenant, query)
        if built is None:
            return []
        where, params = built
        where.append("prompt_hash != ''")
        rows = self.run(
            tenant.pk,
            "SELECT count() AS n, sum(cost_nanos) FROM ("
            + current_sql(
                ("prompt_hash", "cost_nanos"), " AND ".join(where), after=self._after(query)
            )
            + ") GROUP BY prompt_hash HAVING n > 1",
            params,
        )
        return [(int(n), int(cost)) for n, cost in rows]

    def count(self, tenant_id: int) -> int:
        """The tenant's events (each key once)."""
        rows = self.run(
            tenant_id,
            f"SELECT count() FROM ({current_sql(('event_id',), tenant_where(tenant_id))})",
        )
        return int(rows[0][0])

    def totals(self, tenant_id: int) -> tuple[int, int]:
        """(events, cost in nano-dollars) of the tenant, each key once."""
        rows = self.run(
            tenant_id,
            "SELECT count(), sum(cost_nanos) FROM "
            f"({current_sql(('cost_nanos',), tenant_where(tenant_id))})",
        )
        return int(rows[0][0]), int(rows[0][1] or 0)

    # --- deletes --------------------------------------------------------------------------

    def delete_tenant(self, tenant_id: int) -> int:
        """The tenant's events and rollups (those too of months retention dropped)."""
        count = self.count(tenant_id)
        index = self.shard_of(tenant_id)
        # Flushed first: rows the buffers hold would reach the tables after the mutations.
        buffer_flush(self.connections, index)
        for table in (TABLE, ROLLUPS):
            self.run(tenant_id, f"ALTER TABLE {table} DELETE WHERE {tenant_where(tenant_id)}")
        # A mutation runs in the background: wait for it, so the reset is done on return.
        mutations_wait(self.connections, index, self.shards[index].database)
        return count

    def drop_before(self, before: datetime) -> list[tuple[str, int]] | None:
        """Every shard: drop the monthly partitions that end at or before `before`."""
        dropped: list[tuple[str, int]] = []
        for index, shard in enumerate(self.shards):
            dropped += months_drop_before(
                self.connections, index, shard.database, shard.address, before
            )
        return dropped
