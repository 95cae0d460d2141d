"""Writes of the PostgreSQL (or SQLite) rollup tables: sums added (or set, by a rebuild) one
statement per table, rows in key order.

`HourlyRollup` and `EndUserDailyRollup` (the sums by end user and API key) are left alone while
the configured event store keeps those sums itself (`EventStore.keeps_user_rollups`): the store
is above this module (it calls `rollups_add`), so `usage.apps` tells this module how to ask it
(`ask_store_keeps_users`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.db import connection
from django.db.models import Model

from costmon.core.tenancy import raw_cursor
from usage.models import (
    EndUserDailyRollup,
    HourlyRollup,
    ModelHourlyRollup,
    TagHourlyRollup,
)
from usage.pgarrays import PACKABLE, packed_array
from usage.pgarrays import register as register_packed
from usage.rollups import (
    MODEL_ROLLUP_KEY,
    ROLLUP_KEY,
    ROLLUP_SUMS,
    TAG_ROLLUP_KEY,
    USER_DAY_KEY,
    Sums,
    aggregate_tags,
    by_model,
    by_user_day,
)

# SQLite's limit on parameters per statement, with room to spare.
SQLITE_PARAMS = 30_000
# PostgreSQL array types of rollup key columns that are not bigint (`usage.pgarrays` names).
_PG_TYPES = {"hour": "timestamptz", "day": "timestamptz", "tag_name": "text", "tag_value": "text"}


def _never() -> bool:
    return False


_store_keeps_users: Callable[[], bool] = _never


def ask_store_keeps_users(check: Callable[[], bool]) -> None:
    """How to learn whether the configured event store keeps the sums by end user itself
    (`usage.apps` sets it once the apps are loaded; until then, and without it, it does not)."""
    global _store_keeps_users
    _store_keeps_users = check


def store_keeps_users() -> bool:
    """Whether `HourlyRollup` and `EndUserDailyRollup` are left to the event store."""
    return _store_keeps_users()


def _postgresql() -> bool:
    return connection.vendor == "postgresql"


def rollups_add(sums: Sums, *, replace: bool = False, tags: Sums | None = None) -> None:
    """Add (or with `replace`, set) full-key sums to both rollup tables, and `tags` (sums by
    the tag key, `aggregate_tags`) to the tag rollups. Call in a transaction.

    `replace` is only right when `sums` holds every row of its hours (a rebuild); it leaves the
    daily sums by end user to the rebuild (`usage.storerewrites.user_days_rebuild`). Neither
    `HourlyRollup` nor the daily sums by end user are written while the event store keeps the
    sums by end user itself (`EventStore.keeps_user_rollups`).
    """
    users = not _store_keeps_users()
    if users:
        upsert(HourlyRollup, ROLLUP_KEY, sums, replace=replace)
    upsert(ModelHourlyRollup, MODEL_ROLLUP_KEY, by_model(sums), replace=replace)
    if users and not replace:
        upsert(EndUserDailyRollup, USER_DAY_KEY, by_user_day(sums), replace=False)
    if tags:
        upsert(TagHourlyRollup, TAG_ROLLUP_KEY, tags, replace=replace)


def tag_rollups_add(rows: Sequence[dict[str, Any]]) -> None:
    """Add event rows just stored to the tag rollups, once per tag. Call in the transaction
    that stored them, on every database: ingest's insert statement does not write them (it
    stays under psycopg's 4 kB parse cache). Nothing to do for events without tags."""
    upsert(TagHourlyRollup, TAG_ROLLUP_KEY, aggregate_tags(rows), replace=False)


def upsert(model: type[Model], key: Sequence[str], sums: Sums, *, replace: bool) -> None:
    """One statement per chunk, rows in key order (concurrent batches never deadlock)."""
    if not sums:
        return
    if _postgresql():
        _upsert_postgresql(model._meta.db_table, key, sums, replace=replace)
    else:
        _upsert_sqlite(model._meta.db_table, key, sums, replace=replace)


def _upsert_postgresql(table: str, key: Sequence[str], sums: Sums, *, replace: bool) -> None:
    columns = (*key, *ROLLUP_SUMS)
    updates = ", ".join(
        f"{c} = excluded.{c}" if replace else f"{c} = r.{c} + excluded.{c}" for c in ROLLUP_SUMS
    )
    keys = sorted(sums)
    # Key columns, then sum columns, each as one sequence (zip transposes in C).
    values = [*zip(*keys, strict=True), *zip(*map(sums.__getitem__, keys), strict=True)]
    types = [_PG_TYPES.get(c, "int8") for c in columns]
    # Columns packed in one call each (`usage.pgarrays`) where that beats psycopg (not times).
    arrays = [
        packed_array(v, t) if t in PACKABLE else list(v) for v, t in zip(values, types, strict=True)
    ]
    unnest = ", ".join(f"%b::{t}[]" for t in types)
    with raw_cursor(connection) as cursor:
        register_packed(cursor)
        cursor.execute(
            f"INSERT INTO {table} AS r ({', '.join(columns)}) SELECT * FROM unnest({unnest}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}",
            arrays,
            binary=True,
        )


def _upsert_sqlite(table: str, key: Sequence[str], sums: Sums, *, replace: bool) -> None:
    columns = (*key, *ROLLUP_SUMS)
    updates = ", ".join(
        f"{c} = excluded.{c}" if replace else f"{c} = {table}.{c} + excluded.{c}"
        for c in ROLLUP_SUMS
    )
    keys = sorted(sums)
    chunk = max(1, SQLITE_PARAMS // len(columns))
    ops = connection.ops
    marks = "(" + ", ".join(["%s"] * len(columns)) + ")"
    with connection.cursor() as cursor:
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            params: list[Any] = []
            for k in part:
                tenant_id, hour, *rest = k
                params.extend([tenant_id, ops.adapt_datetimefield_value(hour), *rest, *sums[k]])
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([marks] * len(part))} "
                f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}",
                params,
            )
