"""The ClickHouse events table: its columns and types, and rows to and from it (PostgreSQL's
event rows in, `UsageEvent` instances out, with their names from PostgreSQL), and the event
list's cursor. The statements are in `usage.eventstore.clickhouse`."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from costmon.core.errors import DomainError
from costmon.core.models import Tenant
from costmon.core.periods import EARLIEST, LATEST
from usage.ingest import PART_FIELDS
from usage.models import CostSource, Dimension, TagSet, UsageEvent

TABLE = "usage_events"
# A Buffer table in front of it: small inserts (single events) land in memory and reach the
# table a part per flush, not a part per insert; reads name the buffer, which reads both
# (`usage.eventstore.clickhouse`, "Buffer"). Flushed after `BUFFER_SECONDS` at most (or at
# 100,000 rows / 64 MB), after 1 s once it holds 1,000 rows and 1 MB, on a normal shutdown,
# on `OPTIMIZE TABLE` (`flush`) and on `DROP TABLE`. One layer: a flush keeps insert order.
BUFFER = "usage_events_buffer"
BUFFER_SECONDS = 2
# Inserts of this many rows or more go to the table itself (a part of their own is right).
DIRECT_ROWS = 100
# A second advisory-lock namespace beside `usage.storage.INGEST_LOCK_NAMESPACE`: ingest holds
# that one shared; this one exclusively, around the check-then-insert of a batch.
CH_INGEST_LOCK_NAMESPACE = 7402

# (column, ClickHouse type). Optional counts are 0 for none (ClickHouse stores a run of zeros
# in almost nothing); ids 0 for none, as dictionary and catalog ids start at 1.
COLUMN_TYPES = (
    ("tenant_id", "Int64"),
    ("event_id", "String"),
    ("occurred_at", "DateTime('UTC')"),
    ("micros", "UInt32"),
    ("provider_id", "Int32"),
    ("model_id", "Int32"),
    ("operation_id", "Int32"),
    ("end_user_id", "Int32"),
    ("session_id", "Int32"),
    ("api_key_id", "Int64"),
    ("tag_set_id", "Int32"),
    ("input_tokens", "Int32"),
    ("output_tokens", "Int32"),
    ("cached_input_tokens", "Int32"),
    ("cache_write_tokens", "Int32"),
    ("reasoning_tokens", "Int32"),
    ("cache_write_1h_tokens", "Int32"),
    ("input_audio_tokens", "Int32"),
    ("output_audio_tokens", "Int32"),
    ("input_image_tokens", "Int32"),
    ("output_image_tokens", "Int32"),
    ("web_search_calls", "Int32"),
    ("output_images", "Int32"),
    ("service_tier", "Int16"),
    ("cost_nanos", "Int64"),
    ("cost_source", "Int16"),
    ("price_id", "Int32"),
    ("latency_ms", "Nullable(Int32)"),
    ("is_error", "UInt8"),
    ("cache_hit", "UInt8"),
    ("prompt_hash", "String"),
)
COLUMNS = tuple(c for c, _ in COLUMN_TYPES)
# Rewrites (`usage.eventstore.chrewrite`): a key's row with the highest version is the event,
# unless it is a tombstone (`deleted`). Ingest writes version 0; tables made before these
# columns get them added (`migrate_sql`).
META_COLUMNS = (("version", "UInt64", "0"), ("deleted", "UInt8", "0"))
# The rollup sums (`usage.rollups.ROLLUP_SUMS`) over events, and the columns each reads.
SUM_SQL = (
    ("calls", "count()"),
    ("errors", "sum(is_error)"),
    ("cache_hits", "sum(cache_hit)"),
    ("unpriced_calls", f"countIf(cost_source = {int(CostSource.UNPRICED)})"),
    ("input_tokens", "sum(input_tokens)"),
    ("output_tokens", "sum(output_tokens)"),
    ("cached_input_tokens", "sum(cached_input_tokens)"),
    ("cache_write_tokens", "sum(cache_write_tokens)"),
    ("reasoning_tokens", "sum(reasoning_tokens)"),
    ("cost_nanos", "sum(cost_nanos)"),
    ("latency_ms_sum", "sum(ifNull(latency_ms, 0))"),
    ("latency_count", "countIf(isNotNull(latency_ms))"),
)
# A bucket's start in the range's time zone, as unix seconds (the zone is a parameter).
BUCKET_SQL = {
    "hour": "toUInt32(toStartOfHour(occurred_at, %(zone)s))",
    "day": "toUInt32(toStartOfDay(occurred_at, %(zone)s))",
}
# Columns whose 0 (or "") reads back as None, as PostgreSQL stores them.
_NONE_IF_ZERO = frozenset(
    {
        "session_id",
        "tag_set_id",
        *PART_FIELDS,
        "service_tier",
        "price_id",
        "prompt_hash",
    }
)
# How far back a page of the event list looks first (then wider; None: no bound).
LOOK_BACK = (timedelta(days=1), timedelta(days=8), timedelta(days=64), None)
# Event ids per duplicate check (ids are at most 128 characters).
IDS_PER_QUERY = 1000
KEY = ("tenant_id", "occurred_at", "micros", "event_id")
KINDS = {
    "provider": Dimension.Kind.PROVIDER,
    "model": Dimension.Kind.MODEL,
    "operation": Dimension.Kind.OPERATION,
    "end_user": Dimension.Kind.END_USER,
}
ONE_PER_KEY = "LIMIT 1 BY tenant_id, occurred_at, micros, event_id"
NEWEST_FIRST = "ORDER BY occurred_at DESC, micros DESC, event_id DESC"


def table_sql(database: str) -> str:
    columns = ",\n    ".join(
        [f"{c} {t}" for c, t in COLUMN_TYPES] + [f"{c} {t} DEFAULT {d}" for c, t, d in META_COLUMNS]
    )
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{TABLE} (\n    {columns}\n) "
        "ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(occurred_at) "
        f"ORDER BY ({', '.join(KEY)})"
    )


def buffer_sql(database: str) -> str:
    """The Buffer table in front of the events table, with its columns (`CREATE ... AS`)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{BUFFER} AS {database}.{TABLE} "
        f"ENGINE = Buffer({database}, {TABLE}, 1, 1, {BUFFER_SECONDS}, 1000, 100000, "
        "1000000, 64000000)"
    )


def migrate_sql(present: set[str]) -> list[str]:
    """The statements that add the rewrite columns to a table made before them. Its engine stays
    `ReplacingMergeTree()`, whose merges keep the last row inserted: a rewrite's, inserted later.
    """
    return [
        f"ALTER TABLE {TABLE} ADD COLUMN {c} {t} DEFAULT {d}"
        for c, t, d in META_COLUMNS
        if c not in present
    ]


def current_sql(columns: Sequence[str], where: str, *, order: str = "", after: str = "") -> str:
    """The rows of `where` that are events now: each key's newest version, tombstones skipped,
    read through the buffer (the table's rows and those not flushed yet).
    `order` (ending in ", ") sorts before the version; `after` filters, sorts, limits the events
    (conditions on what a rewrite changes, e.g. the cost source, go there)."""
    inner = ", ".join(dict.fromkeys([*KEY, *columns, "cost_source", "version", "deleted"]))
    return (
        f"SELECT {', '.join(columns)} FROM (SELECT {inner} FROM {BUFFER} WHERE {where} "
        f"ORDER BY {order}version DESC {ONE_PER_KEY}) WHERE deleted = 0{after}"
    )


def tenant_where(tenant_id: int) -> str:
    """The tenant filter of every query: one place, so none can forget it. The id is an int."""
    return f"tenant_id = {int(tenant_id)}"


def seconds_of(at: datetime) -> int:
    return int(at.replace(microsecond=0).timestamp())


def ch_row(row: dict[str, Any], version: int = 0, deleted: int = 0) -> tuple[Any, ...]:
    """An event row (`usage.rows.event_row`) as `COLUMNS` then version and deleted."""
    at: datetime = row["occurred_at"]
    values: list[Any] = []
    for column in COLUMNS:
        if column == "occurred_at":
            values.append(datetime.fromtimestamp(seconds_of(at), UTC).replace(tzinfo=None))
        elif column == "micros":
            values.append(at.microsecond)
        elif column == "latency_ms":
            values.append(row[column])
        elif column == "prompt_hash":
            values.append(row[column] or "")
        elif column in ("is_error", "cache_hit"):
            values.append(1 if row[column] else 0)
        else:
            values.append(row[column] or 0)
    return (*values, version, deleted)


def ch_columns(rows: Sequence[dict[str, Any]], versions: Sequence[int]) -> list[list[Any]]:
    """`ch_row` of each row (deleted 0; `versions` in row order) by column, for a columnar
    insert: the same values, built a column at a time."""
    columns: list[list[Any]] = []
    for column in COLUMNS:
        if column == "occurred_at":
            columns.append(
                [
                    datetime.fromtimestamp(seconds_of(r["occurred_at"]), UTC).replace(tzinfo=None)
                    for r in rows
                ]
            )
        elif column == "micros":
            columns.append([r["occurred_at"].microsecond for r in rows])
        elif column == "latency_ms":
            columns.append([r[column] for r in rows])
        elif column == "prompt_hash":
            columns.append([r[column] or "" for r in rows])
        elif column in ("is_error", "cache_hit"):
            columns.append([1 if r[column] else 0 for r in rows])
        else:
            columns.append([r[column] or 0 for r in rows])
    return [*columns, list(versions), [0] * len(rows)]


def row_of(event: UsageEvent) -> dict[str, Any]:
    """An event read back (`event_of`) as the row `ch_row` takes."""
    row = {c: getattr(event, c) for c in COLUMNS if c != "micros"}
    row["occurred_at"] = event.occurred_at
    return row


def event_of(values: Sequence[Any]) -> UsageEvent:
    data = dict(zip(COLUMNS, values, strict=True))
    seconds: datetime = data.pop("occurred_at")
    micros = data.pop("micros")
    fields: dict[str, Any] = {}
    for column, value in data.items():
        if column in _NONE_IF_ZERO and not value:
            value = None
        elif column in ("is_error", "cache_hit"):
            value = bool(value)
        fields[column] = value
    fields["occurred_at"] = seconds.replace(tzinfo=UTC, microsecond=micros)
    return UsageEvent(**fields)


def encode_cursor(event: UsageEvent) -> str:
    at = event.occurred_at.astimezone(UTC)
    raw = f"ch|{seconds_of(at)}|{at.microsecond}|{event.event_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        mark, seconds, micros, event_id = raw.split("|", 3)
        at = datetime.fromtimestamp(int(seconds), UTC)
        if mark != "ch" or not EARLIEST <= at < LATEST or not 0 <= int(micros) < 1_000_000:
            raise ValueError(raw)
        return int(seconds), int(micros), event_id
    except (ValueError, UnicodeDecodeError, OverflowError, OSError):
        raise DomainError(
            "The cursor is not valid; use next_cursor from a previous page.", field="cursor"
        ) from None


def key_of(row: dict[str, Any]) -> tuple[str, int, int]:
    at: datetime = row["occurred_at"]
    return row["event_id"], seconds_of(at), at.microsecond


def with_names(tenant: Tenant, events: list[UsageEvent]) -> list[UsageEvent]:
    """Attach the dictionary names and tag sets from PostgreSQL (two queries), as the
    PostgreSQL store's `select_related` does."""
    if not events:
        return events
    dim_ids: set[int] = set()
    for e in events:
        dim_ids.update((e.provider_id, e.model_id, e.operation_id, e.end_user_id))
        if e.session_id:
            dim_ids.add(e.session_id)
    dims = {d.pk: d for d in Dimension.objects.for_tenant(tenant).filter(pk__in=dim_ids)}
    set_ids = {e.tag_set_id for e in events if e.tag_set_id}
    sets = (
        {s.pk: s for s in TagSet.objects.for_tenant(tenant).filter(pk__in=set_ids)}
        if set_ids
        else {}
    )
    for e in events:
        e.tenant = tenant
        e.provider = dims[e.provider_id]
        e.model = dims[e.model_id]
        e.operation = dims[e.operation_id]
        e.end_user = dims[e.end_user_id]
        e.session = dims[e.session_id] if e.session_id else None
        e.tag_set = sets.get(e.tag_set_id) if e.tag_set_id else None
    return events
