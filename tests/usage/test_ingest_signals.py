"""What ingest tells the apps above it: typed signals, sent where `usage_record_batch` and
`usage_bulk_load` say, with the error semantics each signal documents."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from django.dispatch import Signal
from structlog.testing import capture_logs

from costmon.core import tenancy
from tests.helpers import event
from usage.bulk import usage_bulk_load
from usage.ingest import parse_batch
from usage.models import CostSource, HourlyRollup, UsageEvent
from usage.services import usage_record_batch
from usage.signals import (
    BulkLoaded,
    RecordedBatch,
    batch_committing,
    batch_recorded,
    bulk_loaded,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
HAIKU = 1_350_000  # nano-USD of the default test event: 450 in at $1, 180 out at $5 per 1M


@contextmanager
def receiving(signal: Signal, *receivers: Callable[..., Any]) -> Iterator[None]:
    uids = [f"tests.receiver.{i}" for i in range(len(receivers))]
    for uid, receiver in zip(uids, receivers, strict=True):
        signal.connect(receiver, weak=False, dispatch_uid=uid)
    try:
        yield
    finally:
        for uid in uids:
            signal.disconnect(dispatch_uid=uid)


def record(tenant: Any, *events: dict[str, Any], api_key_id: int | None = None) -> list[Any]:
    with tenancy.no_tenant():  # the service enters the tenant's context itself
        return usage_record_batch(
            tenant=tenant, events=parse_batch(list(events)), api_key_id=api_key_id
        )


def test_a_recorded_batch_names_each_stored_event_once_with_its_exact_cost(acme, outsider):
    batches: list[RecordedBatch] = []
    with receiving(batch_recorded, lambda sender, batch, **kw: batches.append(batch)):
        record(
            acme,
            event(event_id="a", tags={"team": "search"}),
            event(event_id="a"),  # the same id twice: the first one counts
            event(
                event_id="b",
                occurred_at="2026-11-20T11:59:00+02:00",
                provider="OpenAI",
                model="gpt-4o-mini",
                end_user="user-2",
                input_tokens=1500,
                output_tokens=500,
                reservation_id="res-1",
            ),
            event(event_id="c", model="no-such-model"),
            api_key_id=7,
        )
        record(outsider, event(event_id="z"))
    mine, theirs = batches
    assert mine.tenant == acme and theirs.tenant == outsider
    assert [(r.event_id, r.cost_nanos, r.cost_source) for r in mine.rows] == [
        ("a", HAIKU, CostSource.COMPUTED),
        ("b", 525_000, CostSource.COMPUTED),  # 1,500 in at $0.15 + 500 out at $0.60 per 1M
        ("c", 0, CostSource.UNPRICED),
    ]
    a, b, _ = mine.rows
    assert (a.provider, a.model, a.operation, a.end_user) == (
        "anthropic",
        "claude-haiku-4-5",
        "chat",
        "user-1",
    )
    assert (a.tags, a.api_key_id, a.reservation_id) == ({"team": "search"}, 7, None)
    assert (b.provider, b.end_user, b.reservation_id) == ("openai", "user-2", "res-1")
    assert mine.hours == {
        datetime(2026, 11, 20, 9, tzinfo=UTC),  # 11:59 at +02:00
        datetime(2026, 11, 20, 10, tzinfo=UTC),
    }
    assert [r.event_id for r in theirs.rows] == ["z"]


def test_a_batch_of_duplicates_sends_nothing(acme, outsider):
    record(acme, event(event_id="a"))
    sent: list[RecordedBatch] = []
    with (
        receiving(batch_committing, lambda sender, batch, **kw: sent.append(batch)),
        receiving(batch_recorded, lambda sender, batch, **kw: sent.append(batch)),
    ):
        (result,) = record(acme, event(event_id="a"))
    assert result.duplicate
    assert sent == []
    with tenancy.tenant_context(outsider):
        assert UsageEvent.objects.count() == 0


def test_both_signals_carry_the_same_batch_before_and_after_the_commit(acme, outsider):
    seen: list[tuple[str, RecordedBatch, int]] = []

    def stored(batch: RecordedBatch) -> int:
        with tenancy.tenant_context(batch.tenant):
            return UsageEvent.objects.count()

    with (
        receiving(
            batch_committing,
            lambda sender, batch, **kw: seen.append(("committing", batch, stored(batch))),
        ),
        receiving(
            batch_recorded,
            lambda sender, batch, **kw: seen.append(("recorded", batch, stored(batch))),
        ),
    ):
        record(acme, event(event_id="a"), event(event_id="b"))
    (first, before, stored_before), (second, after, stored_after) = seen
    assert (first, second) == ("committing", "recorded")
    assert before is after
    assert (stored_before, stored_after) == (2, 2)  # the events are in the transaction already
    with tenancy.tenant_context(outsider):
        assert UsageEvent.objects.count() == 0


def test_a_failing_before_commit_receiver_rolls_the_batch_back_and_reaches_the_caller(
    acme, outsider
):
    def fail(sender: Any, batch: RecordedBatch, **kwargs: Any) -> None:
        raise RuntimeError("receiver failed")

    record(outsider, event(event_id="kept"))
    with receiving(batch_committing, fail), pytest.raises(RuntimeError, match="receiver failed"):
        record(acme, event(event_id="a"), event(event_id="b"))
    with tenancy.tenant_context(acme):
        assert UsageEvent.objects.count() == 0
        assert HourlyRollup.objects.count() == 0
    with tenancy.tenant_context(outsider):
        assert list(UsageEvent.objects.values_list("event_id", flat=True)) == ["kept"]


def test_a_failing_after_commit_receiver_is_logged_and_the_others_still_run(acme):
    def fail(sender: Any, batch: RecordedBatch, **kwargs: Any) -> None:
        raise RuntimeError("receiver failed")

    later: list[RecordedBatch] = []
    with (
        receiving(batch_recorded, fail, lambda sender, batch, **kw: later.append(batch)),
        capture_logs() as logs,
    ):
        results = record(acme, event(event_id="a"))
    assert [(r.event_id, r.cost_nanos, r.duplicate) for r in results] == [("a", HAIKU, False)]
    assert [r.event_id for r in later[0].rows] == ["a"]
    failures = [line for line in logs if line["event"] == "after_record_hook_failed"]
    assert [line["hook"] for line in failures] == ["fail"]
    with tenancy.tenant_context(acme):
        assert UsageEvent.objects.get().cost_nanos == HAIKU


def test_a_bulk_load_announces_itself_once_with_its_totals(acme, outsider):
    loads: list[BulkLoaded] = []
    events = parse_batch([event(event_id="a"), event(event_id="a"), event(event_id="b")])
    with (
        receiving(bulk_loaded, lambda sender, load, **kw: loads.append(load)),
        tenancy.no_tenant(),
    ):
        usage_bulk_load(tenant=acme, events=events, chunk=2)
    (load,) = loads
    assert (load.tenant, load.examined, load.inserted, load.cost_nanos) == (
        acme,
        3,
        2,
        2 * HAIKU,
    )
    with tenancy.tenant_context(outsider):
        assert UsageEvent.objects.count() == 0
