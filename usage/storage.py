"""The statements that store usage, for PostgreSQL and for SQLite, behind one set of functions.

This module and `usage.transactions` (the ingest lock, the events' transaction) are the only
ones of the usage app that ask which database they talk to. PostgreSQL (the production store)
gets array parameters, COPY and advisory locks; SQLite (the embedded default) gets multi-row
INSERTs and needs no locks, as it serialises writers already.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from costmon.core.tenancy import raw_cursor, unscoped
from usage.models import (
    CostSource,
    Dimension,
    EndUserDailyRollup,
    EventStamp,
    HourlyRollup,
    ModelHourlyRollup,
    TagHourlyRollup,
    TagSet,
    UsageEvent,
)
from usage.partitions import (
    KnownMonths,
    create_partition,
    drop_partitions_before,
    month_start,
    next_month,
    partition_exists,
)
from usage.pgarrays import PACKABLE, packed_array
from usage.pgarrays import register as register_packed
from usage.rollup_writes import SQLITE_PARAMS, rollups_add, tag_rollups_add, upsert
from usage.rollups import (
    MODEL_ROLLUP_KEY,
    ROLLUP_KEY,
    ROLLUP_SQL,
    ROLLUP_SUMS,
    SUMMED_EVENT_COLUMNS,
    TAG_ROLLUP_KEY,
    USER_DAY_KEY,
    aggregate,
    by_user_day,
    hours_of,
)
from usage.rows import EVENT_COLUMN_TYPES, EVENT_COLUMNS, EVENT_TYPES
from usage.tagsets import with_tag_set_ids

# The events table's key: a resend (same tenant, time and id) is counted once. On PostgreSQL it
# is the primary key of the partitioned table (a unique key must hold the partition key).
EVENT_KEY = "tenant_id, occurred_at, event_id"


def event_order(tenant: str = "tenant_id", at: str = "occurred_at", event: str = "event_id") -> str:
    """ORDER BY the events' key, the id by code point ("C", as Python sorts): every statement
    that inserts events (ingest's one-trip function, `usage.newevents`, the one that reads which
    are new, the bulk loader) inserts them in this one order. Two transactions storing the same
    events in different orders (a resend of a batch listed otherwise) would otherwise each
    insert one key the other then waits for: a deadlock. In the key's order, the second waits
    for the first's first event and then finds every one stored."""
    return f'{tenant}, {at}, {event} COLLATE "C"'


EVENT_ORDER = event_order()


def _postgresql() -> bool:
    return connection.vendor == "postgresql"


# --- partitions -----------------------------------------------------------------------------

_known_months = KnownMonths()


def events_partitions_ensure(months: Iterable[datetime]) -> list[datetime]:
    """PostgreSQL: create the monthly partitions of the events table that the given months
    (UTC month starts) lack, in the current transaction; return those created. Months this
    process has seen already cost nothing. SQLite: nothing to do."""
    if not _postgresql():
        return []
    missing = _known_months.missing(months)
    if not missing:
        return []
    created = []
    days = settings.COSTMON_RETENTION_DAYS
    # A transaction of their own when called in autocommit (ingest's preparations).
    with transaction.atomic(), connection.cursor() as cursor:
        for month in missing:
            if month not in _known_months.created_here and partition_exists(cursor, month):
                _known_months.remember(month, days)  # committed: no transaction of ours made it
            elif create_partition(cursor, month):
                created.append(month)
                _known_months.created_here.add(month)
                # Trusted once this commits: a rollback also undoes the partition.
                transaction.on_commit(functools.partial(_known_months.remember, month, days))
    return created


def events_partitions_ahead(now: datetime, months: int = 3) -> list[datetime]:
    """PostgreSQL: make sure the partitions of `now`'s month and the following ones exist
    (`months` in all); return those created."""
    wanted = [month_start(now)]
    while len(wanted) < months:
        wanted.append(next_month(wanted[-1]))
    with transaction.atomic():
        return events_partitions_ensure(wanted)


def events_drop_before(before: datetime) -> list[tuple[str, int]] | None:
    """PostgreSQL: drop the events table's monthly partitions that end at or before `before`
    (whole months; rollups stay) and return (partition, rows) of each; no row is deleted one by
    one. SQLite: None, as its events table has no partitions (the caller deletes rows)."""
    if not _postgresql():
        return None
    # Outside a transaction (the nightly task) each partition is detached concurrently: ingest
    # and reads go on meanwhile. Inside one (a caller's, tests) plainly, in that transaction.
    concurrently = not connection.in_atomic_block
    with connection.cursor() as cursor:
        dropped = drop_partitions_before(cursor, before, concurrently=concurrently)
    _known_months.forget()
    return dropped


def events_partitions_forget() -> None:
    """Forget which partitions exist (after dropping some, and in tests)."""
    _known_months.forget()


# --- the dictionary of names -------------------------------------------------------------------

_DIMENSIONS_ADD = (
    "WITH wanted (kind, value) AS (SELECT * FROM unnest(%s::int2[], %s::text[])), "
    "added AS (INSERT INTO {table} (tenant_id, kind, value) SELECT %s, kind, value FROM wanted "
    "ORDER BY kind, value ON CONFLICT (tenant_id, kind, value) DO NOTHING "
    "RETURNING id, kind, value) "
    "SELECT id, kind, value FROM added UNION ALL SELECT d.id, d.kind, d.value FROM {table} d "
    "JOIN wanted w ON d.kind = w.kind AND d.value = w.value WHERE d.tenant_id = %s"
)


def dimensions_add(
    tenant_id: int, keys: Sequence[tuple[int, str]]
) -> dict[tuple[int, str], int] | None:
    """PostgreSQL: the ids of the tenant's dictionary entries `keys` (kind, name), the missing
    ones created, in one statement (inserted in key order, so concurrent batches never
    deadlock). An entry that a concurrent transaction committed while this statement waited
    for it is not in the statement's snapshot: those few are read by a second one. SQLite:
    None (the caller looks up and creates with the ORM)."""
    if not _postgresql():
        return None
    table = Dimension._meta.db_table
    kinds, values = [k for k, _ in keys], [v for _, v in keys]
    with connection.cursor() as cursor:
        cursor.execute(_DIMENSIONS_ADD.format(table=table), [kinds, values, tenant_id, tenant_id])
        found = {(kind, value): pk for pk, kind, value in cursor.fetchall()}
        late = [key for key in keys if key not in found]
        if late:
            cursor.execute(
                f"SELECT d.id, d.kind, d.value FROM {table} d JOIN unnest(%s::int2[], "
                "%s::text[]) AS w(kind, value) ON d.kind = w.kind AND d.value = w.value "
                "WHERE d.tenant_id = %s",
                [[k for k, _ in late], [v for _, v in late], tenant_id],
            )
            found.update({(kind, value): pk for pk, kind, value in cursor.fetchall()})
    return found


# --- events ---------------------------------------------------------------------------------


def stamps_keep(tenant_id: int, stamps: dict[str, datetime]) -> dict[str, datetime]:
    """The time each event id of `stamps` (time-less events: id -> the time they arrived) was
    first stamped with, in the current transaction: new ids are stored with their time, ids
    stored before keep theirs. Concurrent first sends of one id get the same time: the second
    insert waits for the first one's transaction and then does nothing, and the read that
    follows (a new statement) sees the stored time. Ids are inserted in order, so two batches
    never wait for each other crosswise."""
    if not stamps:
        return {}
    ids = sorted(stamps)
    EventStamp.objects.bulk_create(
        [EventStamp(tenant_id=tenant_id, event_id=i, occurred_at=stamps[i]) for i in ids],
        ignore_conflicts=True,  # INSERT ... ON CONFLICT DO NOTHING, on both databases
    )
    return dict(
        EventStamp.objects.for_tenant(tenant_id)
        .filter(event_id__in=ids)
        .values_list("event_id", "occurred_at")
    )


def stamps_forget_before(before: datetime) -> int:
    """Forget the stamps of time-less events whose raw events retention removed before `before`,
    every tenant; a resend of one after that is a new event. A plain DELETE: the table holds one
    small row per time-less event id, nothing else.

    On PostgreSQL retention drops whole months, and the month holding `before` stays: its
    stamps stay with it, or a resend would be stored a second time beside the kept event."""
    if _postgresql():
        before = month_start(before)
    with unscoped():
        deleted, _ = EventStamp.objects.unscoped().filter(occurred_at__lt=before).delete()
    return deleted


def events_prepare(rows: Sequence[dict[str, Any]]) -> None:
    """What `events_insert` needs to exist first, each idempotent and known afterwards without
    a query: the rows' tag-set ids (`usage.tagsets`) and, on PostgreSQL, their months'
    partitions. Ingest does this before the transaction that stores the events (in autocommit
    on PostgreSQL), so that one reads nothing but the insert's answer."""
    if any(r["tags"] and r.get("tag_set_id") is None for r in rows):
        with_tag_set_ids(rows)
    if _postgresql():
        events_partitions_ensure(
            {month_start(hour) for hour in hours_of(r["occurred_at"] for r in rows)}
        )


def events_insert(rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert the rows whose (tenant, time, event id) is new and add exactly those to the
    rollups, in the current transaction; return the event ids inserted. Each row's tags are
    stored as a tag-set id (`usage.tagsets`)."""
    if not rows:
        return set()
    events_prepare(rows)  # nothing to do (no query) when done before
    if _postgresql():
        inserted = _insert_postgresql(rows)
        # The daily sums by end user are not in the insert statement (it stays under psycopg's
        # 4 kB parse cache): a statement of their own, in the pipeline's next round trip.
        fresh = aggregate(r for r in rows if r["event_id"] in inserted)
        upsert(EndUserDailyRollup, USER_DAY_KEY, by_user_day(fresh), replace=False)
    else:
        inserted = _insert_sqlite(rows)
        rollups_add(aggregate(r for r in rows if r["event_id"] in inserted))
    tagged = [r for r in rows if r["tags"] and r["event_id"] in inserted]
    if tagged:
        tag_rollups_add(tagged)
    return inserted


@functools.cache
def insert_statement() -> str:
    """PostgreSQL: one array parameter per column, new events added to the rollups in the same
    statement; the ids of the events inserted come back."""
    unnest = ", ".join(f"%b::{t}[]" for t in EVENT_TYPES)
    assert EVENT_COLUMNS[:3] == ("tenant_id", "event_id", "occurred_at")  # t, i, o below
    return (
        with_rollups(
            f"INSERT INTO {UsageEvent._meta.db_table} ({', '.join(EVENT_COLUMNS)}) "
            # Named by letters (the rest keep unnest's): the text stays under psycopg's limit.
            f"SELECT * FROM unnest({unnest}) AS e(t, i, o) ORDER BY {event_order('t', 'o', 'i')} "
            f"ON CONFLICT ({EVENT_KEY}) DO NOTHING"
        )
        + " SELECT event_id FROM fresh"
    )


_ROW_VALUES = operator.itemgetter(*EVENT_COLUMNS)


def _insert_postgresql(rows: Sequence[dict[str, Any]]) -> set[str]:
    # One statement, one array parameter per column: the fastest bulk path short of COPY, and
    # unlike COPY it can skip duplicates.
    with raw_cursor(connection) as cursor:
        register_packed(cursor)
        cursor.execute(
            insert_statement(),
            event_arrays(rows),
            binary=True,
            prepare=True,  # the same text every time: planned once per connection
        )
        return {r[0] for r in cursor.fetchall()}


def event_arrays(rows: Sequence[dict[str, Any]]) -> list[Any]:
    """PostgreSQL: the rows as one array parameter per column (`EVENT_COLUMN_TYPES`), sent
    in binary (`usage.pgarrays.register` on the cursor)."""
    arrays: list[Any] = []
    # Rows to columns in C (one itemgetter call per row, one zip): a third of the time of a
    # list per column.
    columns = zip(*map(_ROW_VALUES, rows), strict=True)
    for (_, type_name), values in zip(EVENT_COLUMN_TYPES, columns, strict=True):
        if type_name in PACKABLE:
            arrays.append(packed_array(values, type_name))
        else:
            # A column with no value in the batch goes as a NULL array, which unnest pads with
            # NULLs (so does packed_array): nothing to encode per row.
            arrays.append(list(values) if any(v is not None for v in values) else None)
    return arrays


def _insert_sqlite(rows: Sequence[dict[str, Any]]) -> set[str]:
    table = UsageEvent._meta.db_table
    columns = ", ".join(EVENT_COLUMNS)
    marks = "(" + ", ".join(["%s"] * len(EVENT_COLUMNS)) + ")"
    ops = connection.ops
    chunk = max(1, SQLITE_PARAMS // len(EVENT_COLUMNS))
    inserted: set[str] = set()
    with connection.cursor() as cursor:
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            params: list[Any] = []
            for r in part:
                for col in EVENT_COLUMNS:
                    value = r[col]
                    if col == "occurred_at":
                        value = ops.adapt_datetimefield_value(value)
                    params.append(value)
            cursor.execute(
                f"INSERT INTO {table} ({columns}) VALUES {', '.join([marks] * len(part))} "
                f"ON CONFLICT ({EVENT_KEY}) DO NOTHING RETURNING event_id",
                params,
            )
            inserted.update(r[0] for r in cursor.fetchall())
    return inserted


def events_set_prices(events: Sequence[UsageEvent]) -> None:
    """Write the events' cost, cost source and catalog row (re-pricing). PostgreSQL: one
    statement matched on the key (tenant, time, id), which finds each row in its partition by
    the primary key; `id` has no index there. SQLite: by primary key."""
    if not events:
        return
    if not _postgresql():
        UsageEvent.objects.bulk_update(list(events), ["cost_nanos", "cost_source", "price_id"])
        return
    columns = ("tenant_id", "occurred_at", "event_id", "cost_nanos", "cost_source", "price_id")
    arrays = [[getattr(e, c) for e in events] for c in columns]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {UsageEvent._meta.db_table} e SET cost_nanos = v.cost_nanos, "
            "cost_source = v.cost_source, price_id = v.price_id FROM unnest(%s::int8[], "
            "%s::timestamptz[], %s::text[], %s::int8[], %s::int2[], %s::int4[]) "
            f"AS v({', '.join(columns)}) WHERE e.tenant_id = v.tenant_id "
            "AND e.occurred_at = v.occurred_at AND e.event_id = v.event_id",
            arrays,
        )


def copy_supported() -> bool:
    """Whether `events_copy` can be used (PostgreSQL); elsewhere load through ingest."""
    return _postgresql()


def events_copy(rows: Iterable[dict[str, Any]]) -> tuple[int, int, int]:
    """PostgreSQL only, in a transaction: COPY the rows into a temporary table, then move the new
    ones into the events table and the rollups in one statement. Returns (events inserted, their
    cost in nano-dollars, how many of them are unpriced). The rows' tag sets are resolved
    first (`usage.tagsets`: no query can run while the COPY does)."""
    events = UsageEvent._meta.db_table
    columns = ", ".join(EVENT_COLUMNS)
    rows = list(rows)
    with_tag_set_ids(rows)
    with raw_cursor(connection) as cursor:
        cursor.execute(
            f"CREATE TEMP TABLE usage_bulk_stage ON COMMIT DROP AS "
            f"SELECT {columns} FROM {events} WITH NO DATA"
        )
        with cursor.copy(f"COPY usage_bulk_stage ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[c] for c in EVENT_COLUMNS])
        cursor.execute(
            "SELECT DISTINCT date_trunc('month', occurred_at AT TIME ZONE 'UTC') "
            "FROM usage_bulk_stage"
        )
        months = [m.replace(tzinfo=UTC) for (m,) in cursor.fetchall()]
        events_partitions_ensure(months)
        cursor.execute(
            with_rollups(
                f"INSERT INTO {events} ({columns}) SELECT {columns} FROM usage_bulk_stage"
                f" ORDER BY {EVENT_ORDER} ON CONFLICT ({EVENT_KEY}) DO NOTHING",
                tags=True,
            )
            + " SELECT count(*), coalesce(sum(cost_nanos), 0),"
            f" count(*) FILTER (WHERE cost_source = {CostSource.UNPRICED}) FROM fresh"
        )
        inserted, cost, unpriced = cursor.fetchone()
        cursor.execute("DROP TABLE usage_bulk_stage")  # inside an outer transaction too
    return int(inserted), int(cost), int(unpriced)


def parallel_writers_supported() -> bool:
    """Whether several processes can write usage at once (not SQLite's one writer)."""
    return _postgresql()


def usage_analyze() -> None:
    """Fresh planner statistics after a large load (PostgreSQL; SQLite needs none)."""
    if not _postgresql():
        return
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {UsageEvent._meta.db_table}, {HourlyRollup._meta.db_table}")


# The events' columns the rollups are summed from (`with_rollups`): the keys but the hour, the
# time (hour and day), the tag set and the summed columns.
_ROLLED_UP_COLUMNS = tuple(
    dict.fromkeys(
        (
            *(c for c in ROLLUP_KEY if c != "hour"),
            "occurred_at",
            "tag_set_id",
            *SUMMED_EVENT_COLUMNS,
        )
    )
)


def with_rollups(insert: str, *, tags: bool = False) -> str:
    """PostgreSQL: `WITH fresh AS (<insert> RETURNING ...), ...`: the statement that stores
    events also adds exactly the rows it inserted to both rollup tables (and with `tags`, to the
    daily sums by end user and the tag rollups: the bulk loader and ingest's one-trip function,
    `usage.newevents`; ingest's other path adds those with statements of their own). Follow it
    with a SELECT from `fresh`.

    `insert` is an `INSERT INTO usage_usageevent ... ON CONFLICT DO NOTHING` without RETURNING.
    Rows go in key order, as `rollups_add` does, and tables in one order (`_written_in_order`),
    so concurrent batches lock them in the same order and never deadlock. The text stays under psycopg's 4 kB limit for caching a parsed
    statement (a longer one is parsed again on every call, about 1 ms).
    """
    hour = "date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour"
    sums = ", ".join(ROLLUP_SQL[c] for c in ROLLUP_SUMS)
    # Without spaces: the statement stays under psycopg's limit with its coalesces.
    add = ", ".join(f"{c}=r.{c}+excluded.{c}" for c in ROLLUP_SUMS)
    # What the rollups read of the inserted rows: with `tags` just those columns (the CTE holds
    # a third less); without, `*` keeps ingest's other statement under psycopg's limit.
    returned = ", ".join(_ROLLED_UP_COLUMNS) if tags else "*"
    parts = [f"WITH fresh AS ({insert} RETURNING {returned}, {hour})"]
    for name, model, key in (
        ("hourly", HourlyRollup, ROLLUP_KEY),
        ("by_model", ModelHourlyRollup, MODEL_ROLLUP_KEY),
    ):
        columns = ", ".join(key)
        ordinals = ", ".join(str(i) for i in range(1, len(key) + 1))
        parts.append(
            f"{name} AS (INSERT INTO {model._meta.db_table} AS r ({columns}, "
            f"{', '.join(ROLLUP_SUMS)}) SELECT {columns}, {sums} FROM fresh "
            f"GROUP BY {ordinals} ORDER BY {ordinals} "
            f"ON CONFLICT ({columns}) DO UPDATE SET {add})"
        )
    if not tags:
        return _written_in_order(parts)
    # `tags=True` (the bulk loader: one statement per chunk, its length does not matter): the
    # daily sums by end user, and the tag rollups once per tag of each event's tag set.
    day = "date_trunc('day', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    parts.append(
        f"by_user_day AS (INSERT INTO {EndUserDailyRollup._meta.db_table} AS r ("
        f"{', '.join(USER_DAY_KEY)}, {', '.join(ROLLUP_SUMS)}) SELECT tenant_id, {day}, "
        f"end_user_id, {sums} FROM fresh GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 "
        f"ON CONFLICT ({', '.join(USER_DAY_KEY)}) DO UPDATE SET {add})"
    )
    # The tag rollups: the events summed by model and tag set first (a batch has a few tag
    # sets), then each group's sums added once per tag of its set, so a tag set is read and
    # expanded once per group instead of once per event.
    tag_columns = ", ".join(TAG_ROLLUP_KEY)
    model_key = ", ".join(MODEL_ROLLUP_KEY)
    by_set = ", ".join(f"{ROLLUP_SQL[c]} AS {c}" for c in ROLLUP_SUMS)
    parts.append(
        f"by_tag AS (INSERT INTO {TagHourlyRollup._meta.db_table} AS r ({tag_columns}, "
        f"{', '.join(ROLLUP_SUMS)}) SELECT {', '.join(f'g.{c}' for c in MODEL_ROLLUP_KEY)}, "
        f"t.tag_name, t.tag_value, {', '.join(f'sum(g.{c})' for c in ROLLUP_SUMS)} "
        f"FROM (SELECT {model_key}, tag_set_id, {by_set} FROM fresh "
        "WHERE tag_set_id IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6) g "
        f"JOIN {TagSet._meta.db_table} s ON s.id = g.tag_set_id, "
        "jsonb_each_text(s.tags) AS t(tag_name, tag_value) "
        f"GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY {TAG_ORDER} "
        f"ON CONFLICT ({tag_columns}) DO UPDATE SET {add})"
    )
    return _written_in_order(parts)


# The tag rollups' rows in key order, tag names and values by code point ("C", UTF-8's byte
# order) as `usage.rollup_writes` sorts them in Python: in the database's own collation (say
# en_US, where "a" < "B") two batches taking the two paths could lock the same rows crosswise.
TAG_ORDER = '1, 2, 3, 4, 5, t.tag_name COLLATE "C", t.tag_value COLLATE "C"'


def _written_in_order(parts: list[str]) -> str:
    """`fresh`, then the rollups' CTEs last first: PostgreSQL runs a statement's data-modifying
    CTEs that the final SELECT does not read in the reverse of their order in the text. So the
    tables are written hourly, by model, by end user and day, by tag, the order of ingest's
    other path (this insert, then `events_insert`'s upserts): two batches never lock rows of
    two tables crosswise. The rows every concurrent batch of the hour shares (by model, by tag)
    are locked late, held for less of the transaction."""
    return ", ".join([parts[0], *reversed(parts[1:])])
