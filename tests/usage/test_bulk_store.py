"""The bulk loader in every event store (`store`: PostgreSQL's COPY, ClickHouse on one node and on
two shards): exact costs, rollups equal to the events, a second load adds nothing, a load over
earlier ingest adds only what is new, and a ClickHouse failure leaves no rollups behind."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine

from costmon.core.periods import EARLIEST, LATEST
from costmon.core.tenancy import unscoped
from tests.clickhouse import assert_store_rollups_exact
from tests.helpers import event, post_usage, stored_events
from usage.bulk import usage_bulk_load
from usage.eventstore.chrows import ch_columns, ch_row
from usage.eventstore.current import event_store
from usage.ingest import parse_batch
from usage.models import EndUserDailyRollup, HourlyRollup, ModelHourlyRollup, TagHourlyRollup
from usage.rollups import day_of
from usage.user_sums import user_sums

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
NOW = "2026-11-21T12:00:00Z"
HAIKU = 1_350_000  # 450 input tokens at $1/MTok and 180 output at $5/MTok, in nano-dollars


@pytest.fixture(autouse=True)
def _frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


def batch(count: int, prefix: str = "b") -> list[dict[str, Any]]:
    """`count` haiku events across October and November (two ClickHouse partitions), every
    fifth one with its cost given by the caller, every third one tagged."""
    events = []
    for i in range(count):
        month, day = (10, 25 + i % 7) if i % 2 else (11, 1 + i % 20)
        extra: dict[str, Any] = {"cost_usd": "0.000123456"} if i % 5 == 0 else {}
        if i % 3 == 0:
            extra["tags"] = {"team": f"t{i % 2}"}
        events.append(
            event(
                event_id=f"{prefix}{i}",
                occurred_at=f"2026-{month:02d}-{day:02d}T{i % 24:02d}:{i % 60:02d}:00.{i:06d}Z",
                end_user=f"u{i % 4}",
                **extra,
            )
        )
    return events


def expected_cost(count: int) -> int:
    caller = len(range(0, count, 5))
    return caller * 123_456 + (count - caller) * HAIKU


def sums_of(tenant) -> dict[str, Any]:
    """The tenant's events and every rollup table, each summed the same ways."""
    with unscoped():
        events = stored_events(tenant)
        by_hour = Counter[datetime]()
        by_day = Counter[tuple[datetime, int]]()
        for e in events:
            hour = e.occurred_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
            by_hour[hour] += e.cost_nanos
            by_day[(day_of(hour), e.end_user_id)] += e.cost_nanos
        rollups = {
            model.__name__: Counter[Any]()
            for model in (HourlyRollup, ModelHourlyRollup, EndUserDailyRollup)
        }
        if event_store().keeps_user_rollups:
            # The store keeps the sums by end user (ClickHouse): PostgreSQL's tables stay empty.
            assert not HourlyRollup.objects.for_tenant(tenant).exists()
            assert not EndUserDailyRollup.objects.for_tenant(tenant).exists()
            for g in user_sums(tenant, EARLIEST, LATEST, by=("end_user",), bucket="hour"):
                assert g.bucket is not None
                rollups["HourlyRollup"][g.bucket] += g.sums["cost_nanos"]
                rollups["EndUserDailyRollup"][(day_of(g.bucket), g.key[0])] += g.sums["cost_nanos"]
        for row in HourlyRollup.objects.for_tenant(tenant).values("hour", "cost_nanos"):
            rollups["HourlyRollup"][row["hour"]] += row["cost_nanos"]
        for row in ModelHourlyRollup.objects.for_tenant(tenant).values("hour", "cost_nanos"):
            rollups["ModelHourlyRollup"][row["hour"]] += row["cost_nanos"]
        for row in EndUserDailyRollup.objects.for_tenant(tenant).values(
            "day", "end_user_id", "cost_nanos"
        ):
            rollups["EndUserDailyRollup"][(row["day"], row["end_user_id"])] += row["cost_nanos"]
        tagged = sum(TagHourlyRollup.objects.for_tenant(tenant).values_list("calls", flat=True))
    assert rollups == {
        "HourlyRollup": by_hour,
        "ModelHourlyRollup": by_hour,
        "EndUserDailyRollup": by_day,
    }
    assert_store_rollups_exact(tenant)  # the ClickHouse store's own, key by key
    return {
        "events": len(events),
        "ids": len({e.event_id for e in events}),
        "cost": sum(e.cost_nanos for e in events),
        "tagged_calls": tagged,
    }


def test_a_bulk_load_stores_exact_costs_and_a_second_load_adds_nothing(store, acme, outsider):
    events = parse_batch([*batch(40), batch(40)[3]])  # b3 twice: the first counts
    report = usage_bulk_load(tenant=acme, events=events, chunk=15)
    assert (report.examined, report.inserted, report.cost_nanos) == (41, 40, expected_cost(40))
    first = sums_of(acme)
    # Every third event tagged once with one tag: 14 calls in the tag rollups.
    assert first == {"events": 40, "ids": 40, "cost": expected_cost(40), "tagged_calls": 14}
    again = usage_bulk_load(tenant=acme, events=events, chunk=7)
    assert (again.inserted, again.cost_nanos) == (0, 0)
    assert sums_of(acme) == first
    assert sums_of(outsider) == {"events": 0, "ids": 0, "cost": 0, "tagged_calls": 0}


def test_a_bulk_load_over_earlier_ingest_adds_only_the_new_events(
    store, ingest_client, outsider_client, acme, outsider
):
    events = batch(30)
    assert post_usage(ingest_client, events[:12]).status_code == 201
    assert post_usage(outsider_client, events[:3]).status_code == 201
    outsider_before = sums_of(outsider)
    # A chunk overlapping what ingest stored, in both months.
    report = usage_bulk_load(tenant=acme, events=parse_batch(events), chunk=20)
    assert (report.inserted, report.cost_nanos) == (18, expected_cost(30) - expected_cost(12))
    assert sums_of(acme) == {"events": 30, "ids": 30, "cost": expected_cost(30), "tagged_calls": 10}
    assert (
        sums_of(outsider)
        == outsider_before
        == {
            "events": 3,
            "ids": 3,
            "cost": expected_cost(3),
            "tagged_calls": 1,
        }
    )


@pytest.mark.clickhouse
@pytest.mark.parametrize("store", ["ch", "ch2"], indirect=True)  # PostgreSQL has one transaction
def test_a_clickhouse_failure_rolls_back_that_months_rollups_and_a_reload_completes(
    store, acme, outsider, monkeypatch
):
    real_insert = store._insert
    calls: list[int] = []

    def failing_second(tenant_id: int, values: Any, **kwargs: Any) -> None:
        calls.append(tenant_id)
        if len(calls) == 2:
            raise RuntimeError("ClickHouse refused the insert")
        real_insert(tenant_id, values, **kwargs)

    monkeypatch.setattr(store, "_insert", failing_second)
    events = parse_batch(batch(20))
    with pytest.raises(RuntimeError):
        usage_bulk_load(tenant=acme, events=events)
    # October went in with its rollups; November's rollups rolled back with its insert.
    october = [e for e in batch(20) if e["occurred_at"].startswith("2026-10")]
    assert sums_of(acme)["events"] == len(october) == 10
    monkeypatch.setattr(store, "_insert", real_insert)
    report = usage_bulk_load(tenant=acme, events=events)
    assert report.inserted == 10
    assert sums_of(acme) == {"events": 20, "ids": 20, "cost": expected_cost(20), "tagged_calls": 7}
    assert sums_of(outsider)["events"] == 0


def test_a_bulk_blocks_columns_are_its_rows_by_column():
    rows = [
        {
            "tenant_id": 7,
            "event_id": f"e{i}",
            "occurred_at": datetime(2026, 11, 20, 10, 15, i, 1234 * i, tzinfo=UTC),
            "latency_ms": None if i else 25,
            "prompt_hash": None if i else "ab",
            "is_error": bool(i),
            "cache_hit": False,
            "cost_nanos": HAIKU * i,
            "session_id": None,
            "tags": {},
        }
        | {c: i for c in ("provider_id", "model_id", "operation_id", "end_user_id")}
        for i in range(3)
    ]
    for row in rows:
        for column in ("api_key_id", "tag_set_id", "service_tier", "cost_source", "price_id"):
            row[column] = None
        for column in ("input_tokens", "output_tokens", "cached_input_tokens"):
            row[column] = 5
        for column in (
            "cache_write_tokens",
            "reasoning_tokens",
            "cache_write_1h_tokens",
            "input_audio_tokens",
            "output_audio_tokens",
            "input_image_tokens",
            "output_image_tokens",
            "web_search_calls",
            "output_images",
        ):
            row[column] = None
    by_row = [ch_row(r, version) for r, version in zip(rows, (0, 3, 1), strict=True)]
    assert ch_columns(rows, [0, 3, 1]) == [list(c) for c in zip(*by_row, strict=True)]
