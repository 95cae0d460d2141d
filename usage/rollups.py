"""The rollup tables, kept equal to the sum of the events in the transaction that stores them.

`HourlyRollup` has every dimension (end user and API key included): budgets and anything about
end users read it. `ModelHourlyRollup` has the same sums without end user and key: the
dashboard's totals, series and model breakdowns read it, since with thousands of end users the
first table holds nearly a row per event. Both are written together, in the transaction that
stores or changes the events: by `usage.storage` (inside the insert statement on PostgreSQL, by
`rollups_add` on SQLite) and by `usage.maintenance.rollups_rebuild` (re-pricing, deletes).

`TagHourlyRollup` has the by-model sums once per tag of the events (name and value), written in
the same places: the overview's spend by tag reads it.

`EndUserDailyRollup` has the sums of `HourlyRollup` per end user and UTC day, written in the
same places (a rebuild recomputes its days from the hourly rows: `user_days_rebuild`): the
overview's end users table reads whole days there.

With an event store that keeps the sums by end user itself (`EventStore.keeps_user_rollups`,
ClickHouse) neither `HourlyRollup` nor `EndUserDailyRollup` is written (`usage.rollup_writes`):
questions about end users and API keys are asked of the store (`usage.user_sums`).

This module holds what the rollups are (keys and sums) and how rows are summed in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from usage.models import CostSource

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
USER_DAY_KEY = ("tenant_id", "day", "end_user_id")
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
# The columns of an event the sums read (rebuilds and stores that sum events select these).
SUMMED_EVENT_COLUMNS = (
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
# The same sums in SQL over event rows (the bulk loader aggregates in the database).
ROLLUP_SQL = {
    "calls": "count(*)",
    "errors": "count(*) FILTER (WHERE is_error)",
    "cache_hits": "count(*) FILTER (WHERE cache_hit)",
    "unpriced_calls": f"count(*) FILTER (WHERE cost_source = {CostSource.UNPRICED})",
    "input_tokens": "sum(input_tokens)",
    "output_tokens": "sum(output_tokens)",
    "cached_input_tokens": "coalesce(sum(cached_input_tokens), 0)",
    "cache_write_tokens": "coalesce(sum(cache_write_tokens), 0)",
    "reasoning_tokens": "coalesce(sum(reasoning_tokens), 0)",
    "cost_nanos": "sum(cost_nanos)",
    "latency_ms_sum": "coalesce(sum(latency_ms), 0)",
    "latency_count": "count(latency_ms)",
}

Sums = dict[tuple[Any, ...], list[int]]


def hour_of(value: datetime) -> datetime:
    """The UTC hour a moment falls in: the rollup bucket."""
    return value.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hours_of(moments: Iterable[datetime]) -> frozenset[datetime]:
    """The distinct UTC hours the moments fall in (three times faster than `hour_of` on each:
    ingest calls it per batch)."""
    return frozenset(
        datetime.fromtimestamp(h * 3600, UTC) for h in {int(m.timestamp()) // 3600 for m in moments}
    )


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
    """Event rows (as stored) summed by the tag rollup's key, once per tag of each event.

    Events are first summed by their model key and whole tag set (most events of a batch share
    a few tag sets), then each group is spread over its tags: one addition per event, not one
    per tag."""
    grouped: Sums = {}
    hours: dict[int, datetime] = {}
    for r in rows:
        tags = r["tags"]
        if tags:
            number = int(r["occurred_at"].timestamp()) // 3600
            hour = hours.get(number)
            if hour is None:
                hour = hours[number] = datetime.fromtimestamp(number * 3600, UTC)
            key = (
                r["tenant_id"],
                hour,
                r["provider_id"],
                r["model_id"],
                r["operation_id"],
                tuple(tags.items()),
            )
            _add(grouped, key, r)
    sums: Sums = {}
    for (tenant_id, hour, provider_id, model_id, operation_id, items), acc in grouped.items():
        for name, value in items:
            tag_key = (tenant_id, hour, provider_id, model_id, operation_id, name, value)
            total = sums.get(tag_key)
            if total is None:
                sums[tag_key] = list(acc)
            else:
                for i, amount in enumerate(acc):
                    total[i] += amount
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
    acc[6] += r["cached_input_tokens"] or 0
    acc[7] += r["cache_write_tokens"] or 0
    acc[8] += r["reasoning_tokens"] or 0
    acc[9] += r["cost_nanos"]
    if r["latency_ms"] is not None:
        acc[10] += r["latency_ms"]
        acc[11] += 1


def day_of(value: datetime) -> datetime:
    """The UTC midnight starting the day a moment falls in: the daily rollup's bucket."""
    return datetime.fromtimestamp(int(value.timestamp()) // 86400 * 86400, UTC)


def by_user_day(sums: Sums) -> Sums:
    """Full-key sums folded onto the daily end-user rollup's key (`USER_DAY_KEY`)."""
    folded: Sums = {}
    days: dict[datetime, datetime] = {}
    for (tenant_id, hour, _, _, _, end_user_id, _), values in sums.items():
        day = days.get(hour)
        if day is None:
            day = days[hour] = day_of(hour)
        key = (tenant_id, day, end_user_id)
        acc = folded.get(key)
        if acc is None:
            folded[key] = list(values)
        else:
            for i, v in enumerate(values):
                acc[i] += v
    return folded


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
