"""Reads and writes of the ClickHouse store that rewrites need (`usage.storerewrites`): events by
key, new versions and tombstones, the bounds of a tenant's unpriced events, and the sums of
whole hours to rebuild PostgreSQL's rollups and the store's own (`store_rollups_match`) from.

A rewrite never changes a row: it inserts the key again with a higher `version` (re-priced) or
with `deleted = 1` (a tombstone), and every read takes each key's newest row
(`chrows.current_sql`). Inserting the same rows again is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from costmon.core.models import Tenant
from usage.eventstore.chrollups import reconcile
from usage.eventstore.chrows import (
    COLUMNS,
    SUM_SQL,
    current_sql,
    event_of,
    row_of,
    seconds_of,
    with_names,
)
from usage.eventstore.clickhouse import ClickHouseStore, tenant_where
from usage.models import CostSource, TagSet, UsageEvent
from usage.rollups import ROLLUP_SUMS, SUMMED_EVENT_COLUMNS, Sums

assert tuple(name for name, _ in SUM_SQL) == ROLLUP_SUMS  # the rebuild's sums, in order

# The rollup keys' id columns: 0 in ClickHouse is none (None in PostgreSQL's rows).
_KEY_IDS = ("provider_id", "model_id", "operation_id", "end_user_id", "api_key_id")


def events_by_key(
    store: ClickHouseStore, tenant: Tenant, keys: Sequence[tuple[str, datetime]]
) -> list[UsageEvent]:
    """The tenant's events with these keys (event id, time) that exist now."""
    wanted = {(eid, seconds_of(at), at.microsecond) for eid, at in keys}
    found: list[UsageEvent] = []
    ordered = sorted(keys, key=lambda k: k[1])
    for start in range(0, len(ordered), 1000):
        part = ordered[start : start + 1000]
        rows = store.run(
            tenant.pk,
            current_sql(
                COLUMNS,
                f"{tenant_where(tenant.pk)} AND occurred_at >= toDateTime(%(lo)s) "
                "AND occurred_at <= toDateTime(%(hi)s) AND event_id IN %(ids)s",
            ),
            {
                "lo": seconds_of(part[0][1]),
                "hi": seconds_of(part[-1][1]),
                "ids": tuple({eid for eid, _ in part}),
            },
        )
        for event in map(event_of, rows):
            at = event.occurred_at
            if (event.event_id, seconds_of(at), at.microsecond) in wanted:
                found.append(event)
    return with_names(tenant, found)


def events_write(
    store: ClickHouseStore,
    tenant_id: int,
    events: Sequence[UsageEvent],
    *,
    version: int,
    deleted: bool = False,
) -> None:
    """Insert the events as they are now at `version` (a tombstone of each with `deleted`)."""
    if events:
        store.insert_rows(tenant_id, [row_of(e) for e in events], version, int(deleted))


def unpriced_bounds(store: ClickHouseStore, tenant_id: int) -> tuple[datetime, datetime] | None:
    """The first and last time of the tenant's unpriced events, or None."""
    rows = store.run(
        tenant_id,
        "SELECT count(), min(occurred_at), max(occurred_at) FROM ("
        + current_sql(
            ("occurred_at",),
            tenant_where(tenant_id),
            after=f" AND cost_source = {int(CostSource.UNPRICED)}",
        )
        + ")",
    )
    count, first, last = rows[0]
    if not count:
        return None
    return first.replace(tzinfo=UTC), last.replace(tzinfo=UTC) + timedelta(seconds=1)


def tenants_with_unpriced(store: ClickHouseStore) -> set[int]:
    """Every tenant (all shards) that has unpriced events now. Staff code: across tenants."""
    found: set[int] = set()
    for index in range(len(store.shards)):
        rows = store.connections.execute(
            index,
            "SELECT DISTINCT tenant_id FROM ("
            + current_sql(
                ("tenant_id",), "1 = 1", after=f" AND cost_source = {int(CostSource.UNPRICED)}"
            )
            + ")",
        )
        found.update(int(t) for (t,) in rows)
    return found


def hour_sums(
    store: ClickHouseStore, tenant: Tenant, hours: Sequence[datetime]
) -> tuple[Sums, Sums]:
    """The rollup sums of the tenant's events in these UTC hours, by the full rollup key and by
    the tag rollup's key (each tag of an event's tag set, whose tags are in PostgreSQL)."""
    numbers = sorted({int(h.timestamp()) // 3600 for h in hours})
    sums: Sums = {}
    by_set: dict[tuple[Any, ...], list[int]] = {}
    for start in range(0, len(numbers), 500):
        part = numbers[start : start + 500]
        rows = store.run(
            tenant.pk,
            f"SELECT intDiv(toUInt32(occurred_at), 3600) AS h, {', '.join(_KEY_IDS)}, tag_set_id, "
            f"{', '.join(sql for _, sql in SUM_SQL)} FROM ("
            + current_sql(
                ("occurred_at", *_KEY_IDS, "tag_set_id", *SUMMED_EVENT_COLUMNS),
                f"{tenant_where(tenant.pk)} AND occurred_at >= toDateTime(%(lo)s) "
                "AND occurred_at < toDateTime(%(hi)s) "
                "AND intDiv(toUInt32(occurred_at), 3600) IN %(hours)s",
            )
            + f") GROUP BY h, {', '.join(_KEY_IDS)}, tag_set_id",
            {"lo": part[0] * 3600, "hi": (part[-1] + 1) * 3600, "hours": tuple(part)},
        )
        for row in rows:
            hour = datetime.fromtimestamp(int(row[0]) * 3600, UTC)
            ids = tuple(int(v) or None for v in row[1:6])
            values = [int(v) for v in row[7:]]
            _add(sums, (tenant.pk, hour, *ids), values)
            if row[6]:
                _add(by_set, (hour, ids[0], ids[1], ids[2], int(row[6])), values)
    tags: Sums = {}
    if by_set:
        sets = dict(
            TagSet.objects.for_tenant(tenant)
            .filter(pk__in={key[-1] for key in by_set})
            .values_list("pk", "tags")
        )
        for (hour, provider_id, model_id, operation_id, set_id), values in by_set.items():
            for name, value in (sets.get(set_id) or {}).items():
                _add(
                    tags,
                    (tenant.pk, hour, provider_id, model_id, operation_id, name, value),
                    values,
                )
    return sums, tags


def store_rollups_match(
    store: ClickHouseStore, tenant_id: int, hours: Sequence[datetime], sums: Sums
) -> int:
    """Make the store's rollups of these UTC hours equal `sums` (`hour_sums`' first: the events
    there now) by adding the difference: the deltas of a rewrite, negative ones included. Under
    the tenant's exclusive ingest lock, the buffers flushed (as `hour_sums` is called)."""
    if not hours:
        return 0
    numbers = sorted({int(h.timestamp()) // 3600 for h in hours})
    return reconcile(
        store.connections,
        store.shard_of(tenant_id),
        tenant_id,
        numbers[0] * 3600,
        (numbers[-1] + 1) * 3600,
        numbers,
        wanted=sums,
    )


def _add(sums: dict[tuple[Any, ...], list[int]], key: tuple[Any, ...], values: list[int]) -> None:
    acc = sums.get(key)
    if acc is None:
        sums[key] = list(values)
    else:
        for i, v in enumerate(values):
            acc[i] += v
