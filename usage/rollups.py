"""The rollup tables, kept equal to the sum of the events in the transaction that stores them.

`HourlyRollup` has every dimension (end user and API key included): budgets and anything about
end users read it. `ModelHourlyRollup` has the same sums without end user and key: the
dashboard's totals, series and model breakdowns read it, since with thousands of end users the
first table holds nearly a row per event. Both are written together, in the transaction that
stores or changes the events: by `with_rollups` inside the insert statement on PostgreSQL
(ingest, bulk load), by `rollups_add` on SQLite, and by `rollups_rebuild` (re-pricing, deletes).

`TagHourlyRollup` has the by-model sums once per tag of the events (name and value), written in
the same three places: the overview's spend by tag reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Count, Model, Q, Sum
from django.db.models.functions import TruncHour

from costmon.core.models import Tenant
from costmon.core.tenancy import raw_cursor
from usage.models import CostSource, HourlyRollup, ModelHourlyRollup, TagHourlyRollup, UsageEvent

ROLLUP_KEY = (
    "tenant_id",
    "hour",
    "provider_id",
    "model_id",
    "operation_id",
    "end_user_id",
    "api_key_id",
)
MODEL_ROLLUP_KEY = ROLLUP_KEY[:5]
TAG_ROLLUP_KEY = (*MODEL_ROLLUP_KEY, "tag_name", "tag_value")
_PG_TYPES = {"hour": "timestamptz", "tag_name": "text", "tag_value": "text"}
ROLLUP_SUMS = (
    "calls",
    "errors",
    "cache_hits",
    "unpriced_calls",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_nanos",
    "latency_ms_sum",
    "latency_count",
)
# The same sums in SQL over event rows (the bulk loader aggregates in the database).
ROLLUP_SQL = {
    "calls": "count(*)",
    "errors": "count(*) FILTER (WHERE is_error)",
    "cache_hits": "count(*) FILTER (WHERE cache_hit)",
    "unpriced_calls": f"count(*) FILTER (WHERE cost_source = {CostSource.UNPRICED})",
    "input_tokens": "sum(input_tokens)",
    "output_tokens": "sum(output_tokens)",
    "cached_input_tokens": "sum(cached_input_tokens)",
    "cache_write_tokens": "sum(cache_write_tokens)",
    "reasoning_tokens": "sum(reasoning_tokens)",
    "cost_nanos": "sum(cost_nanos)",
    "latency_ms_sum": "coalesce(sum(latency_ms), 0)",
    "latency_count": "count(latency_ms)",
}

Sums = dict[tuple[Any, ...], list[int]]
# What `aggregate_tags` reads of an event besides its tenant and time.
_TAG_EVENT_FIELDS = (
    "provider_id",
    "model_id",
    "operation_id",
    "tags",
    "is_error",
    "cache_hit",
    "cost_source",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_nanos",
    "latency_ms",
)


def hour_of(value: datetime) -> datetime:
    """The UTC hour a moment falls in: the rollup bucket."""
    return value.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def aggregate(rows: Iterable[dict[str, Any]]) -> Sums:
    """Event rows (as stored) summed by the full rollup key."""
    sums: Sums = {}
    for r in rows:
        key = (
            r["tenant_id"],
            hour_of(r["occurred_at"]),
            r["provider_id"],
            r["model_id"],
            r["operation_id"],
            r["end_user_id"],
            r["api_key_id"],
        )
        _add(sums, key, r)
    return sums


def aggregate_tags(rows: Iterable[dict[str, Any]]) -> Sums:
    """Event rows (as stored) summed by the tag rollup's key, once per tag of each event."""
    sums: Sums = {}
    for r in rows:
        for name, value in (r["tags"] or {}).items():
            key = (
                r["tenant_id"],
                hour_of(r["occurred_at"]),
                r["provider_id"],
                r["model_id"],
                r["operation_id"],
                name,
                value,
            )
            _add(sums, key, r)
    return sums


def _add(sums: Sums, key: tuple[Any, ...], r: dict[str, Any]) -> None:
    acc = sums.get(key)
    if acc is None:
        acc = sums[key] = [0] * len(ROLLUP_SUMS)
    acc[0] += 1
    acc[1] += r["is_error"]
    acc[2] += r["cache_hit"]
    acc[3] += r["cost_source"] == CostSource.UNPRICED
    acc[4] += r["input_tokens"]
    acc[5] += r["output_tokens"]
    acc[6] += r["cached_input_tokens"]
    acc[7] += r["cache_write_tokens"]
    acc[8] += r["reasoning_tokens"]
    acc[9] += r["cost_nanos"]
    if r["latency_ms"] is not None:
        acc[10] += r["latency_ms"]
        acc[11] += 1


def by_model(sums: Sums) -> Sums:
    """Full-key sums folded onto the model rollup's key (end user and API key dropped)."""
    folded: Sums = {}
    width = len(MODEL_ROLLUP_KEY)
    for key, values in sums.items():
        acc = folded.get(key[:width])
        if acc is None:
            folded[key[:width]] = list(values)
        else:
            for i, v in enumerate(values):
                acc[i] += v
    return folded


def rollups_add(sums: Sums, *, replace: bool = False, tags: Sums | None = None) -> None:
    """Add (or with `replace`, set) full-key sums to both rollup tables, and `tags` (sums by
    the tag key, `aggregate_tags`) to the tag rollups. Call in a transaction.

    `replace` is only right when `sums` holds every row of its hours (a rebuild).
    """
    _upsert(HourlyRollup, ROLLUP_KEY, sums, replace=replace)
    _upsert(ModelHourlyRollup, MODEL_ROLLUP_KEY, by_model(sums), replace=replace)
    if tags:
        _upsert(TagHourlyRollup, TAG_ROLLUP_KEY, tags, replace=replace)


def tag_rollups_add(rows: Sequence[dict[str, Any]]) -> None:
    """Add event rows just stored (as `aggregate` reads them) to the tag rollups, once per tag.
    Call in the transaction that stored them; nothing to do for events without tags."""
    _upsert(TagHourlyRollup, TAG_ROLLUP_KEY, aggregate_tags(rows), replace=False)


def _upsert(model: type[Model], key: Sequence[str], sums: Sums, *, replace: bool) -> None:
    """One statement per chunk, rows in key order (concurrent batches never deadlock)."""
    if not sums:
        return
    table = model._meta.db_table
    columns = (*key, *ROLLUP_SUMS)
    keys = sorted(sums)
    if connection.vendor == "postgresql":
        updates = ", ".join(
            f"{c} = excluded.{c}" if replace else f"{c} = r.{c} + excluded.{c}" for c in ROLLUP_SUMS
        )
        arrays: list[list[Any]] = [[] for _ in columns]
        for k in keys:
            for i, value in enumerate((*k, *sums[k])):
                arrays[i].append(value)
        types = [_PG_TYPES.get(c, "bigint") for c in columns]
        unnest = ", ".join(f"%b::{t}[]" for t in types)
        with raw_cursor(connection) as cursor:
            cursor.execute(
                f"INSERT INTO {table} AS r ({', '.join(columns)}) SELECT * FROM unnest({unnest}) "
                f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}",
                arrays,
                binary=True,
            )
        return
    updates = ", ".join(
        f"{c} = excluded.{c}" if replace else f"{c} = {table}.{c} + excluded.{c}"
        for c in ROLLUP_SUMS
    )
    chunk = max(1, 30000 // len(columns))
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


def with_rollups(insert: str, *, tags: bool = False) -> str:
    """`WITH fresh AS (<insert> RETURNING ...), ...`: the statement that stores events also adds
    exactly the rows it inserted to both rollup tables (and with `tags`, to the tag rollups;
    ingest adds those with `tag_rollups_add`). Follow it with a SELECT from `fresh`.

    `insert` is an `INSERT INTO usage_usageevent ... ON CONFLICT DO NOTHING` without RETURNING.
    Rows go in key order, as `rollups_add` does, so concurrent batches lock them in the same
    order and never deadlock. The text stays under psycopg's 4 kB limit for caching a parsed
    statement (a longer one is parsed again on every call, about 1 ms).
    """
    hour = "date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour"
    sums = ", ".join(ROLLUP_SQL[c] for c in ROLLUP_SUMS)
    add = ", ".join(f"{c} = r.{c} + excluded.{c}" for c in ROLLUP_SUMS)
    parts = [f"WITH fresh AS ({insert} RETURNING *, {hour})"]
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
        return ", ".join(parts)
    # `tags=True` (the bulk loader: one statement per chunk, its length does not matter):
    # the tag rollups too, once per tag of each event; an event without tags yields none.
    tag_columns = ", ".join(TAG_ROLLUP_KEY)
    parts.append(
        f"by_tag AS (INSERT INTO {TagHourlyRollup._meta.db_table} AS r ({tag_columns}, "
        f"{', '.join(ROLLUP_SUMS)}) SELECT {tag_columns}, {sums} FROM fresh, "
        "jsonb_each_text(fresh.tags) AS t(tag_name, tag_value) "
        "GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, 6, 7 "
        f"ON CONFLICT ({tag_columns}) DO UPDATE SET {add})"
    )
    return ", ".join(parts)


def rollups_rebuild(*, tenant: Tenant, hours: Sequence[datetime]) -> int:
    """Recompute both rollup tables for the given hours from the events. Call inside a
    transaction that holds the tenant's exclusive ingest lock."""
    if not hours:
        return 0
    rebuilt = 0
    for i in range(0, len(hours), 500):
        part = list(hours[i : i + 500])
        HourlyRollup.objects.for_tenant(tenant).filter(hour__in=part).delete()
        ModelHourlyRollup.objects.for_tenant(tenant).filter(hour__in=part).delete()
        TagHourlyRollup.objects.for_tenant(tenant).filter(hour__in=part).delete()
        window = Q()
        for hour in part:
            window |= Q(occurred_at__gte=hour, occurred_at__lt=hour + timedelta(hours=1))
        # Tags live in each event's JSON: the tagged events of these hours, summed per tag.
        tagged = (
            UsageEvent.objects.for_tenant(tenant)
            .filter(window, tags__isnull=False)
            .values("tenant_id", "occurred_at", *_TAG_EVENT_FIELDS)
        )
        rows = (
            UsageEvent.objects.for_tenant(tenant)
            .filter(window)
            .annotate(bucket=TruncHour("occurred_at", tzinfo=UTC))
            .values(
                "bucket", "provider_id", "model_id", "operation_id", "end_user_id", "api_key_id"
            )
            .annotate(
                calls=Count("pk"),
                errors=Count("pk", filter=Q(is_error=True)),
                cache_hits=Count("pk", filter=Q(cache_hit=True)),
                unpriced_calls=Count("pk", filter=Q(cost_source=CostSource.UNPRICED)),
                input_tokens_sum=Sum("input_tokens"),
                output_tokens_sum=Sum("output_tokens"),
                cached_input_tokens_sum=Sum("cached_input_tokens"),
                cache_write_tokens_sum=Sum("cache_write_tokens"),
                reasoning_tokens_sum=Sum("reasoning_tokens"),
                cost_nanos_sum=Sum("cost_nanos"),
                latency_ms_sum=Sum("latency_ms"),
                latency_count=Count("latency_ms"),
            )
        )
        sums = {
            (
                tenant.pk,
                r["bucket"],
                r["provider_id"],
                r["model_id"],
                r["operation_id"],
                r["end_user_id"],
                r["api_key_id"],
            ): [
                r["calls"],
                r["errors"],
                r["cache_hits"],
                r["unpriced_calls"],
                r["input_tokens_sum"] or 0,
                r["output_tokens_sum"] or 0,
                r["cached_input_tokens_sum"] or 0,
                r["cache_write_tokens_sum"] or 0,
                r["reasoning_tokens_sum"] or 0,
                r["cost_nanos_sum"] or 0,
                r["latency_ms_sum"] or 0,
                r["latency_count"],
            ]
            for r in rows
        }
        rollups_add(sums, replace=True, tags=aggregate_tags(tagged.iterator(chunk_size=5000)))
        rebuilt += len(part)
    return rebuilt
