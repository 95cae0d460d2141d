"""Migration 0012 on a copy with data: events written under 0011 (a plain table) come through
into monthly partitions (PostgreSQL) or the re-keyed table (SQLite) unchanged, with their
rollups, and stay idempotent."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor

from costmon.core.tenancy import tenant_context, unscoped
from tests.conftest import restore_test_partitions
from usage.dimensions import dimension_ids
from usage.models import Dimension, HourlyRollup, ModelHourlyRollup, TagHourlyRollup, UsageEvent
from usage.partitions import partitions
from usage.rollups import aggregate, aggregate_tags
from usage.rows import EVENT_COLUMNS
from usage.storage import events_insert, rollups_add

BEFORE = [("usage", "0011_tag_hourly_rollup")]
# Every column, and the tags as JSON last: 0011 stores them on the event, 0013 on in its set.
COLUMNS = tuple(c for c in ("id", *EVENT_COLUMNS) if c != "tag_set_id")
TAGS_THEN = "tags"
TAGS_NOW = "(SELECT s.tags FROM usage_tagset s WHERE s.id = tag_set_id)"
Kind = Dimension.Kind


def _rows(tenant: Any, prefix: str, count: int) -> list[dict[str, Any]]:
    dims = dimension_ids(
        tenant=tenant,
        wanted=[(Kind.PROVIDER, "openai"), (Kind.MODEL, "gpt-4o"), (Kind.OPERATION, "chat")]
        + [(Kind.END_USER, f"u{i}") for i in range(3)],
    )
    start = datetime(2026, 7, 30, 22, tzinfo=UTC)
    rows = []
    for i in range(count):
        row: dict[str, Any] = dict.fromkeys(EVENT_COLUMNS)
        row.update(
            tenant_id=tenant.pk,
            event_id=f"{prefix}{i}",
            # Every 17 hours from late July: five months, month ends crossed.
            occurred_at=start + timedelta(hours=17 * i, microseconds=i),
            provider_id=dims[(Kind.PROVIDER, "openai")],
            model_id=dims[(Kind.MODEL, "gpt-4o")],
            operation_id=dims[(Kind.OPERATION, "chat")],
            end_user_id=dims[(Kind.END_USER, f"u{i % 3}")],
            api_key_id=i % 2,
            tags={"team": f"t{i % 4}", "env": "prod"} if i % 3 else None,
            input_tokens=100 + i,
            output_tokens=50 + i,
            cached_input_tokens=i % 5,
            cache_write_tokens=0,
            reasoning_tokens=i % 7,
            web_search_calls=(i % 11) or None,
            cost_nanos=1_000_003 * i,
            cost_source=0,
            price_id=None,
            latency_ms=(i * 13) or None,
            is_error=i % 10 == 0,
            cache_hit=False,
            prompt_hash=f"{i:064x}" if i % 9 == 0 else None,
        )
        rows.append(row)
    return rows


def _events(tags: str) -> list[tuple[Any, ...]]:
    columns = ", ".join((*COLUMNS, tags))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {columns} FROM usage_usageevent ORDER BY id")  # noqa: S608
        rows = [list(r) for r in cursor.fetchall()]
    for r in rows:
        if isinstance(r[-1], str):  # SQLite: JSON text, its keys in any order
            r[-1] = json.loads(r[-1])
    return [tuple(v.isoformat() if isinstance(v, datetime) else v for v in r) for r in rows]


def _rollups() -> list[list[tuple[Any, ...]]]:
    return [
        sorted(model.objects.unscoped().values_list()[:10_000])  # type: ignore[attr-defined]
        for model in (HourlyRollup, ModelHourlyRollup, TagHourlyRollup)
    ]


@pytest.mark.django_db(transaction=True)
def test_events_under_0011_come_through_0012_unchanged(acme, outsider):
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate(BEFORE)
    try:
        old = executor.loader.project_state(BEFORE).apps.get_model("usage", "UsageEvent")
        with unscoped():
            acme_rows, outsider_rows = _rows(acme, "e", 60), _rows(outsider, "e", 5)
        with unscoped(), transaction.atomic():
            rows = acme_rows + outsider_rows
            old.objects.bulk_create(
                [old(**{k: v for k, v in r.items() if k != "tag_set_id"}) for r in rows]
            )
            # `replace`: set, as adding to empty tables does, the tables 0011 has (the daily
            # sums by end user came later: 0018 fills them from the hourly rollups).
            tags = aggregate_tags(r for r in rows if r["tags"])
            rollups_add(aggregate(rows), replace=True, tags=tags)
            events, rollups = _events(TAGS_THEN), _rollups()
        assert len(events) == 65
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(latest)
        restore_test_partitions()
    with unscoped():
        assert _events(TAGS_NOW) == events  # every column of every row, ids included
        assert _rollups() == rollups
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            names = {name for name, _ in partitions(cursor)}
        assert {f"usage_usageevent_p2026{m:02d}" for m in range(7, 13)} <= names
    with tenant_context(acme):
        assert UsageEvent.objects.count() == 60
        assert UsageEvent.objects.filter(tag_set__tags__team="t1").count() == 10
    with tenant_context(outsider):
        assert UsageEvent.objects.count() == 5
    # Idempotent after the move: the same events again add nothing, a new one is counted.
    with unscoped():
        fresh = _rows(acme, "new", 1)
    fresh[0]["occurred_at"] += timedelta(minutes=1)
    with tenant_context(acme), transaction.atomic():
        assert events_insert(acme_rows[:30]) == set()
        assert events_insert(acme_rows[30:] + fresh) == {"new0"}
    with unscoped():
        assert HourlyRollup.objects.filter(tenant=acme).count() > 0
        assert sum(HourlyRollup.objects.filter(tenant=acme).values_list("calls", flat=True)) == 61
        assert UsageEvent.objects.unscoped().filter(tenant=outsider).count() == 5
