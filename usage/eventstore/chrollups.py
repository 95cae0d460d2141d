"""The hourly rollups the ClickHouse store keeps beside its events: one table per shard,
`usage_rollups_hourly`, with the sums of `usage.rollups.ROLLUP_SUMS` per tenant, UTC hour and
every dimension (PostgreSQL's `HourlyRollup` key, with the same dictionary ids; 0 for none).

A SummingMergeTree: rows are only ever added, each a difference (negative sums allowed), and
merges add up rows of the same key, eventually; every read therefore sums (`GROUP BY`). A key
whose sums all reach 0 disappears at a merge. Partitioned by month, as the events: retention
drops event months only, the rollups stay (`chschema.months_drop_before`).

Writes, and what a failure leaves:
- Ingest (`ClickHouseStore.insert_new`, under the tenant's lock): the new events' sums are
  inserted right after the events themselves, into the table or, when the events went to the
  events' buffer, into a Buffer table in front of it (`ROLLUPS_BUFFER`, flushed alike). Events
  first: a failure in between leaves events stored without their sums (never sums without
  events); the batch fails (503), and a retry finds its events held and adds nothing, so the
  sums stay missing until `manage.py clickhouse_rollups_rebuild` runs over those hours (the
  failure is logged with them: `clickhouse_rollups_missing`). The same command repairs the
  other gap: with the buffers on, a server that stops abnormally loses what each buffer holds,
  and the two buffers flush at different moments.
- Rewrites (re-price, delete), the rebuild, the migration and the rebalance all `reconcile`:
  under the tenant's lock, buffers flushed, the sums of the events of a range are computed
  from the events table and compared, key by key, with the rollup table's; the difference is
  inserted. Doing it twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

import structlog

from costmon.core.models import Tenant
from costmon.core.periods import TimeRange
from usage.eventstore.base import GROUP_COLUMNS, EventQuery, EventSums
from usage.eventstore.chrows import (
    BUCKET_SQL,
    BUFFER,
    SUM_SQL,
    TABLE,
    current_sql,
    seconds_of,
    tenant_where,
)
from usage.eventstore.chserver import Connections
from usage.rollups import ROLLUP_SUMS, SUMMED_EVENT_COLUMNS, Sums

if TYPE_CHECKING:
    from usage.eventstore.clickhouse import ClickHouseStore

log = structlog.get_logger(__name__)

ROLLUPS = "usage_rollups_hourly"
ROLLUPS_BUFFER = "usage_rollups_hourly_buffer"
DIMENSIONS = ("provider_id", "model_id", "operation_id", "end_user_id", "api_key_id")
ROLLUP_TYPES = (
    ("tenant_id", "Int64"),
    ("hour", "DateTime('UTC')"),
    ("provider_id", "Int32"),
    ("model_id", "Int32"),
    ("operation_id", "Int32"),
    ("end_user_id", "Int32"),
    ("api_key_id", "Int64"),
    *((name, "Int64") for name in ROLLUP_SUMS),
)
ROLLUP_COLUMNS = tuple(c for c, _ in ROLLUP_TYPES)
_SUMMED = ", ".join(f"sum({name})" for name in ROLLUP_SUMS)
_HOUR = "toUInt32(toStartOfHour(occurred_at))"


def rollups_table_sql(database: str) -> str:
    columns = ",\n    ".join(f"{c} {t}" for c, t in ROLLUP_TYPES)
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{ROLLUPS} (\n    {columns}\n) "
        "ENGINE = SummingMergeTree() PARTITION BY toYYYYMM(hour) "
        f"ORDER BY (tenant_id, hour, {', '.join(DIMENSIONS)})"
    )


def rollups_buffer_sql(database: str) -> str:
    """The Buffer in front of the rollups, flushed as the events' (`chrows.buffer_sql`)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{ROLLUPS_BUFFER} AS {database}.{ROLLUPS} "
        f"ENGINE = Buffer({database}, {ROLLUPS}, 1, 1, 2, 1000, 100000, 1000000, 64000000)"
    )


def rollup_rows(sums: Sums) -> list[tuple[Any, ...]]:
    """Sums keyed as `usage.rollups.aggregate`'s (tenant, UTC hour, ids; None: 0) as rows."""
    rows = []
    for (tenant_id, hour, *ids), values in sums.items():
        at = datetime.fromtimestamp(int(hour.timestamp()), UTC).replace(tzinfo=None)
        rows.append((int(tenant_id), at, *(int(i or 0) for i in ids), *map(int, values)))
    return rows


def rollups_insert(
    connections: Connections, index: int, sums: Sums, *, buffered: bool = False
) -> None:
    rows = rollup_rows(sums)
    if rows:
        table = ROLLUPS_BUFFER if buffered else ROLLUPS
        connections.execute(
            index, f"INSERT INTO {table} ({', '.join(ROLLUP_COLUMNS)}) VALUES", rows
        )


def _keyed(tenant_id: int, found: Iterable[Sequence[Any]]) -> Sums:
    sums: Sums = {}
    for row in found:
        hour = datetime.fromtimestamp(int(row[0]), UTC)
        key = (int(tenant_id), hour, *(int(v) for v in row[1:6]))
        sums[key] = [int(v) for v in row[6:]]
    return sums


def _hours_where(column: str, lo: int, hi: int, hours: Sequence[int] | None) -> str:
    where = f"{column} >= toDateTime({int(lo)}) AND {column} < toDateTime({int(hi)})"
    if hours is not None:
        where += f" AND intDiv(toUInt32({column}), 3600) IN ({', '.join(map(str, hours))})"
    return where


def event_sums_by_key(
    connections: Connections,
    index: int,
    tenant_id: int,
    lo: int,
    hi: int,
    hours: Sequence[int] | None = None,
) -> Sums:
    """The tenant's events from `lo` to `hi` (unix seconds; only `hours`, hour numbers, when
    given) summed by the rollup key, each key's current version once."""
    ids = ", ".join(DIMENSIONS)
    inner = current_sql(
        ("occurred_at", *DIMENSIONS, *SUMMED_EVENT_COLUMNS),
        f"{tenant_where(tenant_id)} AND {_hours_where('occurred_at', lo, hi, hours)}",
    )
    found = connections.execute(
        index,
        f"SELECT {_HOUR} AS h, {ids}, {', '.join(sql for _, sql in SUM_SQL)} FROM ({inner}) "
        f"GROUP BY h, {ids}",
    )
    return _keyed(tenant_id, found)


def rollup_sums_by_key(
    connections: Connections,
    index: int,
    tenant_id: int,
    lo: int,
    hi: int,
    hours: Sequence[int] | None = None,
    *,
    table: str = ROLLUPS_BUFFER,
) -> Sums:
    """What the rollup table holds for the same (merged or not: summed here)."""
    ids = ", ".join(DIMENSIONS)
    found = connections.execute(
        index,
        f"SELECT toUInt32(hour) AS h, {ids}, {_SUMMED} FROM {table} "
        f"WHERE {tenant_where(tenant_id)} AND {_hours_where('hour', lo, hi, hours)} "
        f"GROUP BY h, {ids}",
    )
    return _keyed(tenant_id, found)


def rollup_sums_by_model(
    connections: Connections, index: int, lo: int, hi: int, *, tenant_id: int | None = None
) -> list[tuple[Any, ...]]:
    """The rollups of shard `index` from `lo` to `hi` (unix seconds) by tenant, hour number
    and model key (`ModelHourlyRollup`'s), then the sums: one tenant's, or (staff code, None)
    every tenant's there, read through the buffer (`usage.storereconcile` compares them)."""
    where = _hours_where("hour", lo, hi, None)
    if tenant_id is not None:
        where = f"{tenant_where(tenant_id)} AND {where}"
    return connections.execute(
        index,
        "SELECT tenant_id, intDiv(toUInt32(hour), 3600) AS h, provider_id, model_id, "
        f"operation_id, {_SUMMED} FROM {ROLLUPS_BUFFER} WHERE {where} "
        "GROUP BY tenant_id, h, provider_id, model_id, operation_id",
    )


def difference(wanted: Sums, held: Sums) -> Sums:
    """`wanted` minus `held`, per key; keys whose difference is all zeros are left out."""
    diff: Sums = {}
    for key in wanted.keys() | held.keys():
        a, b = wanted.get(key), held.get(key)
        values = [(a[i] if a else 0) - (b[i] if b else 0) for i in range(len(ROLLUP_SUMS))]
        if any(values):
            diff[key] = values
    return diff


def buffers_flush(connections: Connections, index: int) -> None:
    """Both buffers of shard `index` to their tables (events first, as ingest writes them)."""
    connections.execute(index, f"OPTIMIZE TABLE {BUFFER}")
    connections.execute(index, f"OPTIMIZE TABLE {ROLLUPS_BUFFER}")


def reconcile(
    connections: Connections,
    index: int,
    tenant_id: int,
    lo: int,
    hi: int,
    hours: Sequence[int] | None = None,
    *,
    wanted: Sums | None = None,
) -> int:
    """Make the tenant's rollups from `lo` to `hi` (`hours` only, when given) equal the sums of
    its events there (`wanted`, when the caller has them: keyed as `rollup_rows` takes), by
    inserting the difference; the number of keys changed. The caller holds the tenant's ingest
    lock and flushed the buffers (`buffers_flush`): nothing of the tenant is in flight."""
    if wanted is None:
        wanted = event_sums_by_key(connections, index, tenant_id, lo, hi, hours)
    else:
        wanted = {
            (int(k[0]), k[1], *(int(i or 0) for i in k[2:])): list(v) for k, v in wanted.items()
        }
    held = rollup_sums_by_key(connections, index, tenant_id, lo, hi, hours, table=ROLLUPS)
    diff = difference(wanted, held)
    rollups_insert(connections, index, diff)
    return len(diff)


def months_of(connections: Connections, index: int, tenant_id: int) -> tuple[set[int], set[int]]:
    """The months (YYYYMM) in which shard `index` holds events of the tenant (any version), and
    those in which it holds rollup rows."""
    where = tenant_where(tenant_id)
    events = connections.execute(
        index, f"SELECT DISTINCT toYYYYMM(occurred_at) FROM {TABLE} WHERE {where}"
    )
    rollups = connections.execute(
        index, f"SELECT DISTINCT toYYYYMM(hour) FROM {ROLLUPS} WHERE {where}"
    )
    return {int(m) for (m,) in events}, {int(m) for (m,) in rollups}


def month_totals(connections: Connections, index: int, tenant_id: int) -> dict[int, list[int]]:
    """The tenant's rollup sums per month (YYYYMM) on shard `index`: a cheap comparison."""
    found = connections.execute(
        index,
        f"SELECT toYYYYMM(hour) AS m, {_SUMMED} FROM {ROLLUPS} "
        f"WHERE {tenant_where(tenant_id)} GROUP BY m",
    )
    return {int(row[0]): [int(v) for v in row[1:]] for row in found}


def month_span(month: int) -> tuple[int, int]:
    """A month (YYYYMM) as unix seconds [start, end)."""
    year, number = divmod(month, 100)
    start = datetime(year, number, 1, tzinfo=UTC)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()), int(end.timestamp())


def copy_sums(
    connections: Connections, index: int, tenant_id: int, month: int, source: Sums
) -> int:
    """Make the tenant's rollups of a month without events on this shard (retention dropped
    them) equal `source` (another shard's, or PostgreSQL's), by adding the difference."""
    lo, hi = month_span(month)
    held = rollup_sums_by_key(connections, index, tenant_id, lo, hi, table=ROLLUPS)
    diff = difference(source, held)
    rollups_insert(connections, index, diff)
    return len(diff)


def ingest_sums_insert(connections: Connections, index: int, sums: Sums, *, buffered: bool) -> None:
    """The sums of a batch's new events, inserted after the events (see the module's
    docstring): a failure is logged with the hours to rebuild, then raised."""
    try:
        rollups_insert(connections, index, sums, buffered=buffered)
    except Exception:
        hours = sorted({key[1] for key in sums})
        log.error(
            "clickhouse_rollups_missing",
            tenant=next(iter(sums))[0],
            first_hour=hours[0].isoformat(),
            last_hour=hours[-1].isoformat(),
            fix="manage.py clickhouse_rollups_rebuild --tenant <slug> --since --until",
        )
        raise


def hours_align(query: EventQuery, bucket: str | None) -> bool:
    """Whether the query's hours or days begin on UTC hours over its range (its zone's offset
    is whole hours at each boundary), so that the rollups' hours fall in one bucket each."""
    tr = query.time_range
    if tr is None or bucket is None:
        return True
    if tr.end - tr.start > timedelta(days=3700):
        return False  # not worth checking each boundary: the raw events answer
    zone = tr.tz
    if bucket == "hour":
        hour = _hour_up(tr.start)
        while hour < tr.end:
            offset = hour.astimezone(zone).utcoffset() or timedelta()
            if offset.total_seconds() % 3600:
                return False
            hour += timedelta(hours=1)
    else:
        day = tr.start.astimezone(zone).date()
        while (midnight := datetime.combine(day, time(), zone)) < tr.end:
            if int(midnight.timestamp()) % 3600:
                return False
            day += timedelta(days=1)
    return True


def _hour_up(at: datetime) -> datetime:
    """The first UTC hour boundary at or after `at`."""
    down = _hour_down(at)
    return down if down == at else down + timedelta(hours=1)


def _hour_down(at: datetime) -> datetime:
    return datetime.fromtimestamp(int(at.timestamp()) // 3600 * 3600, UTC)


def answerable(query: EventQuery, by: Sequence[str], bucket: str | None) -> bool:
    """Whether `event_sums` may read the rollups: no filter they lack, groups they have,
    buckets that hold whole UTC hours."""
    return (
        query.session_id is None
        and query.filters.tag is None
        and query.is_error is None
        and query.cost_source is None
        and all(GROUP_COLUMNS[k] in DIMENSIONS for k in by)
        and hours_align(query, bucket)
    )


def rollup_event_sums(
    store: ClickHouseStore,
    tenant: Tenant,
    query: EventQuery,
    by: Sequence[str],
    bucket: str | None,
) -> list[EventSums] | None:
    """`event_sums` from the rollups, or None when they cannot answer it (`answerable`, and a
    range that holds a whole UTC hour). The range's whole hours are read from the rollups, the
    parts of an hour at its ends (a range ending now) from the events (`event_sums` of each,
    which has no whole hour), and the groups added up."""
    if not answerable(query, by, bucket):
        return None
    tr = query.time_range
    edges: list[TimeRange] = []
    if tr is not None:
        first, last = _hour_up(tr.start), _hour_down(tr.end)
        if first >= last:
            return None  # no whole hour: the events answer
        edges = [
            replace(tr, start=a, end=b) for a, b in ((tr.start, first), (last, tr.end)) if a < b
        ]
        tr = replace(tr, start=first, end=last)
    built = store.filters_where(tenant, replace(query, time_range=None))
    if built is None:
        return []
    where, params = built
    if tr is not None:
        where.append(_hours_where("hour", seconds_of(tr.start), seconds_of(tr.end), None))
    store.flush(tenant.pk)  # exact sums: see `ClickHouseStore.event_sums`
    keys = [GROUP_COLUMNS[k] for k in by]
    if bucket is not None:
        assert tr is not None
        keys.append(BUCKET_SQL[bucket].replace("occurred_at", "hour"))
        params["zone"] = str(tr.tz)
    group = f" GROUP BY {', '.join(keys)}" if keys else ""
    rows = store.run(
        tenant.pk,
        f"SELECT {', '.join([*keys, _SUMMED])} FROM {ROLLUPS_BUFFER} "
        f"WHERE {' AND '.join(where)}{group}",
        params,
    )
    found = sums_of_rows(rows, len(by), bucket, tr.tz if tr is not None else UTC)
    for edge in edges:
        part = store.event_sums(tenant, replace(query, time_range=edge), by=by, bucket=bucket)
        found = added(found, part)
    return found


def added(a: list[EventSums], b: list[EventSums]) -> list[EventSums]:
    """Two answers of `event_sums` as one: the sums of a group (key and bucket) in both added."""
    merged = {(s.key, s.bucket): s for s in a}
    for s in b:
        was = merged.get((s.key, s.bucket))
        if was is not None:
            s = replace(s, sums={name: v + was.sums[name] for name, v in s.sums.items()})
        merged[(s.key, s.bucket)] = s
    return list(merged.values())


def sums_of_rows(
    rows: Iterable[Sequence[Any]], width: int, bucket: str | None, zone: tzinfo
) -> list[EventSums]:
    """`event_sums`'s answer from rows of `width` group ids, the bucket's unix seconds (with
    `bucket`) and the sums; groups whose sums are all 0 (deleted) are left out."""
    found = []
    for row in rows:
        key = tuple(int(v) or None for v in row[:width])  # 0: none, as in PostgreSQL
        at = datetime.fromtimestamp(int(row[width]), zone) if bucket else None
        values = row[width + (1 if bucket else 0) :]
        if values[0]:
            found.append(
                EventSums(
                    key=key,
                    bucket=at,
                    sums={name: int(v) for (name, _), v in zip(SUM_SQL, values, strict=True)},
                )
            )
    return found
