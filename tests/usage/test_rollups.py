"""The by-model rollups (what the dashboard reads) stay equal to the full hourly rollups, and
both to the events, through every path that writes usage."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.db import connection, transaction

from costmon.core.tenancy import tenant_context, unscoped
from tests.helpers import event, post_usage, stored_events
from usage.bulk import usage_bulk_load
from usage.demo import demo_events
from usage.maintenance import usage_events_delete, usage_reprice, usage_tenant_reset
from usage.models import HourlyRollup, ModelHourlyRollup, ModelPrice, UsageEvent
from usage.rollups import ROLLUP_SUMS
from usage.storage import insert_statement

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
NOW = "2026-11-21T12:00:00Z"
MODEL_KEY = ("hour", "provider_id", "model_id", "operation_id")


@pytest.fixture(autouse=True)
def _frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


def by_model_rows(tenant) -> dict[tuple[Any, ...], tuple[int, ...]]:
    with unscoped():
        rows = ModelHourlyRollup.objects.for_tenant(tenant).values_list(*MODEL_KEY, *ROLLUP_SUMS)
        return {tuple(r[:4]): tuple(r[4:]) for r in rows}


def folded_hourly_rows(tenant) -> dict[tuple[Any, ...], tuple[int, ...]]:
    folded: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * len(ROLLUP_SUMS))
    with unscoped():
        rows = list(HourlyRollup.objects.for_tenant(tenant).values_list(*MODEL_KEY, *ROLLUP_SUMS))
    for r in rows:
        acc = folded[tuple(r[:4])]
        for i, v in enumerate(r[4:]):
            acc[i] += v
    return {k: tuple(v) for k, v in folded.items()}


def assert_consistent(tenant) -> dict[tuple[Any, ...], tuple[int, ...]]:
    """The by-model rollups are exactly the full rollups without end user and key, and both
    total the events."""
    rows = by_model_rows(tenant)
    assert rows == folded_hourly_rows(tenant)
    with unscoped():
        events = UsageEvent.objects.for_tenant(tenant)
        assert sum(r[ROLLUP_SUMS.index("calls")] for r in rows.values()) == events.count()
        assert sum(r[ROLLUP_SUMS.index("cost_nanos")] for r in rows.values()) == sum(
            events.values_list("cost_nanos", flat=True)
        )
    return rows


def spread(count: int = 60) -> list[dict[str, Any]]:
    """Events over three hours, five end users, two models and two operations."""
    return [
        event(
            event_id=f"e{i}",
            occurred_at=f"2026-11-20T{10 + i % 3:02d}:{i % 60:02d}:00Z",
            end_user=f"u{i % 5}",
            provider="anthropic" if i % 2 else "openai",
            model="claude-haiku-4-5" if i % 2 else "gpt-4o",
            operation="chat" if i % 4 < 2 else "summarize",
            latency_ms=100 + i,
        )
        for i in range(count)
    ]


def test_ingest_fills_both_tables_with_one_row_per_model_and_operation_an_hour(
    ingest_client, outsider_client, acme, outsider
):
    assert post_usage(ingest_client, spread()).status_code == 201
    assert post_usage(ingest_client, spread()).status_code == 201  # resent: counted once
    assert post_usage(outsider_client, event(event_id="g1", end_user="ceo")).status_code == 201
    rows = assert_consistent(acme)
    with unscoped():
        assert HourlyRollup.objects.for_tenant(acme).count() > len(rows)
    assert len(rows) == 3 * 4  # hours x (model, operation) in use
    calls = ROLLUP_SUMS.index("calls")
    cost = ROLLUP_SUMS.index("cost_nanos")
    assert sum(r[calls] for r in rows.values()) == 60
    # 30 haiku calls at $0.00135 and 30 gpt-4o calls at $0.002925 (450 in, 180 out each).
    assert sum(r[cost] for r in rows.values()) == 30 * 1_350_000 + 30 * 2_925_000
    assert sum(r[ROLLUP_SUMS.index("latency_count")] for r in rows.values()) == 60
    # The outsider's by-model rows are its own, and it sees none of acme's.
    assert sum(r[calls] for r in by_model_rows(outsider).values()) == 1
    assert_consistent(outsider)


def test_repricing_rebuilds_both_tables(ingest_client, acme, outsider_client, outsider):
    assert post_usage(ingest_client, spread()).status_code == 201
    assert post_usage(outsider_client, event(event_id="g1")).status_code == 201
    with unscoped():
        haiku = ModelPrice.objects.unscoped().get(model="claude-haiku-4-5")
        haiku.output_per_mtok = Decimal(4)
        haiku.save()
    report = usage_reprice(
        tenant=acme,
        start=datetime(2026, 11, 20, 11, tzinfo=UTC),
        end=datetime(2026, 11, 20, 12, tzinfo=UTC),
    )
    assert report.changed == 10  # hour 11 holds 20 events, half of them haiku
    rows = assert_consistent(acme)
    cost = ROLLUP_SUMS.index("cost_nanos")
    assert sum(r[cost] for r in rows.values()) == 20 * 1_350_000 + 10 * 1_170_000 + 30 * 2_925_000
    # The outsider's event was priced before the change and is not acme's to re-price.
    assert by_model_rows(outsider)[next(iter(by_model_rows(outsider)))][cost] == 1_350_000


def test_deleting_events_rebuilds_both_tables_and_drops_emptied_hours(ingest_client, acme):
    assert post_usage(ingest_client, spread()).status_code == 201
    with unscoped():
        hour_10 = UsageEvent.objects.filter(tenant=acme, occurred_at__hour=10)
        assert usage_events_delete(events=hour_10) == 20
    rows = assert_consistent(acme)
    assert {k[0].astimezone(UTC).hour for k in rows} == {11, 12}


def test_a_bulk_load_fills_both_tables_and_a_second_load_adds_nothing(acme, outsider):
    events = list(demo_events(count=3000, days=3, end=datetime(2026, 11, 21, tzinfo=UTC), users=50))
    first = usage_bulk_load(tenant=acme, events=events, chunk=1000)
    assert first.inserted == 3000
    before = assert_consistent(acme)
    assert usage_bulk_load(tenant=acme, events=events, chunk=1000).inserted == 0
    assert assert_consistent(acme) == before
    assert by_model_rows(outsider) == {}


def test_a_tenant_reset_empties_both_tables_of_that_tenant_only(
    ingest_client, outsider_client, acme, outsider, store
):
    assert post_usage(ingest_client, spread()).status_code == 201
    assert post_usage(outsider_client, event(event_id="g1")).status_code == 201
    assert stored_events(acme)
    usage_tenant_reset(tenant=acme)
    assert by_model_rows(acme) == {}
    assert len(by_model_rows(outsider)) == 1
    assert stored_events(acme) == []
    assert [e.event_id for e in stored_events(outsider)] == ["g1"]


def test_the_migration_backfill_rebuilds_the_table_from_the_hourly_rollups(
    ingest_client, outsider_client, acme, outsider
):
    import importlib

    backfill = importlib.import_module("usage.migrations.0005_model_hourly_rollup").BACKFILL
    assert post_usage(ingest_client, spread()).status_code == 201
    assert post_usage(outsider_client, event(event_id="g1")).status_code == 201
    expected = (by_model_rows(acme), by_model_rows(outsider))
    with unscoped(), transaction.atomic():
        ModelHourlyRollup.objects.unscoped().all().delete()
        with connection.cursor() as cursor:
            cursor.execute(backfill)
    assert (by_model_rows(acme), by_model_rows(outsider)) == expected
    with tenant_context(outsider):
        assert sum(r[0] for r in by_model_rows(outsider).values()) == 1


def test_the_insert_statement_is_short_enough_for_psycopg_to_keep_it_parsed():
    # psycopg parses a longer statement again on every call (about 1 ms for this one).
    from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

    assert len(insert_statement().encode()) <= MAX_CACHED_STATEMENT_LENGTH
