"""The typed pass (usage.fastparse) gives exactly parse_batch's events for a valid batch, and
None (so parse_batch words the errors) for anything parse_batch refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from costmon.core.exceptions import DomainError
from costmon.core.inputs import load_json
from tests.helpers import event
from usage.fastparse import parse_valid_batch
from usage.ingest import parse_batch

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def slow(body: bytes):
    return parse_batch(load_json(body, max_depth=None, strings_checked=True), now=NOW)


VALID = [
    event(),
    event(
        event_id="  padded  ",
        provider=" OpenAI ",
        model=" gpt-4o ",
        operation=" chat ",
        end_user=" u ",
        session_id=" s ",
    ),
    event(operation=None, end_user=None, session_id=None, tags=None, status=None)
    | {"status": "error"},
    event(tags={"team": "search", "env": ""}, cache_hit=True, latency_ms=0),
    event(tags={}, cache_hit=None, latency_ms=None, prompt_hash="  abc  "),
    event(prompt_hash="   ", reservation_id="r-1", service_tier="flex"),
    event(service_tier="", cost_usd="0.00135"),
    event(service_tier=None, cost_usd=2),
    event(cost_usd="0"),
    event(
        input_tokens=1000,
        cached_input_tokens=300,
        cache_write_tokens=200,
        cache_write_1h_tokens=200,
        input_audio_tokens=100,
        input_image_tokens=100,
        output_tokens=50,
        output_audio_tokens=25,
        output_image_tokens=25,
        reasoning_tokens=10,
        web_search_calls=3,
        output_images=1,
    ),
    event(input_tokens=None, output_tokens=0, occurred_at="2026-11-21T12:00:30+00:00"),
    event(occurred_at="2026-11-21T13:00:00+02:00"),
    event(occurred_at="2026-11-20T10:15:00"),  # naive: UTC
    event(occurred_at="2026-11-20 10:15:00Z"),
    event(occurred_at=None),
    event(occurred_at="2026-11-21T06:59:59.123456-05:00"),
    event(occurred_at="2026-11-21T13:00:00Z"),  # the edge of the allowed hour ahead
    event(occurred_at="2000-01-01T00:00:00Z"),  # the earliest allowed
    event(occurred_at="2026-11-21"),  # a date: midnight UTC
]


@pytest.mark.parametrize("item", VALID, ids=range(len(VALID)))
def test_a_valid_event_is_read_exactly_as_parse_batch_reads_it(item):
    body = json.dumps([item, event(event_id="second")]).encode()
    fast = parse_valid_batch(body, now=NOW)
    assert fast is not None
    assert fast == slow(body)


def test_a_single_object_and_a_missing_event_id_are_read_as_parse_batch_reads_them():
    body = json.dumps(event()).encode()
    assert parse_valid_batch(body, now=NOW) == slow(body)
    without_id = {k: v for k, v in event().items() if k != "event_id"}
    (fast,) = parse_valid_batch(json.dumps(without_id).encode(), now=NOW)
    assert len(fast.event_id) == 36  # a UUID, as parse_batch makes one


INVALID = [
    b"",
    b"[",
    b"[]",
    b"42",
    b'"text"',
    b"[1]",
    json.dumps([event(provider="")]).encode(),
    json.dumps([event(provider="   ")]).encode(),
    json.dumps([event(model=None)]).encode(),
    json.dumps([event(event_id="")]).encode(),
    json.dumps([event(event_id="  ")]).encode(),
    json.dumps([event(event_id=5)]).encode(),
    json.dumps([event(event_id="x" * 129)]).encode(),
    json.dumps([event(provider="p" * 51)]).encode(),
    json.dumps([event(model="m" * 201)]).encode(),
    json.dumps([event(end_user="u" * 256)]).encode(),
    json.dumps([event(input_tokens=-1)]).encode(),
    json.dumps([event(input_tokens=100_000_001)]).encode(),
    json.dumps([event(input_tokens=True)]).encode(),
    json.dumps([event(input_tokens="5")]).encode(),
    json.dumps([event(input_tokens=10, cached_input_tokens=11)]).encode(),
    json.dumps([event(output_tokens=1, output_audio_tokens=2)]).encode(),
    json.dumps([event(cache_write_tokens=1, cache_write_1h_tokens=2)]).encode(),
    json.dumps([event(status="failed")]).encode(),
    json.dumps([event(status=None)]).encode(),
    json.dumps([event(cache_hit="yes")]).encode(),
    json.dumps([event(cost_usd="-1")]).encode(),
    json.dumps([event(cost_usd="-0")]).encode(),
    json.dumps([event(cost_usd="abc")]).encode(),
    json.dumps([event(cost_usd="1e-3")]).encode(),
    json.dumps([event(cost_usd="NaN")]).encode(),
    json.dumps([event(cost_usd=100_001)]).encode(),
    json.dumps([event(cost_usd=True)]).encode(),
    json.dumps([event(latency_ms=-1)]).encode(),
    json.dumps([event(latency_ms=86_400_001)]).encode(),
    json.dumps([event(service_tier="gold")]).encode(),
    json.dumps([event(reservation_id=5)]).encode(),
    json.dumps([event(reservation_id="r" * 65)]).encode(),
    json.dumps([event(prompt_hash="h" * 65)]).encode(),
    json.dumps([event(tags=["a"])]).encode(),
    json.dumps([event(tags={"": "v"})]).encode(),
    json.dumps([event(tags={"k" * 65: "v"})]).encode(),
    json.dumps([event(tags={"k": "v" * 201})]).encode(),
    json.dumps([event(tags={"k": 5})]).encode(),
    json.dumps([event(tags={f"k{i}": "v" for i in range(21)})]).encode(),
    json.dumps([event(occurred_at="yesterday")]).encode(),
    json.dumps([event(occurred_at="2026-02-30T10:00:00Z")]).encode(),
    json.dumps([event(occurred_at="2026-11-22T12:00:00Z")]).encode(),  # the future
    json.dumps([event(occurred_at="1999-12-31T23:59:59Z")]).encode(),
    json.dumps([event(occurred_at=5)]).encode(),
    json.dumps([event(occurred_at="1999-12-31T23:59:59.999999Z")]).encode(),
    json.dumps([event(occurred_at="2026-11-21T13:00:00.000001Z")]).encode(),  # the future
    json.dumps([event(surprise=1)]).encode(),
    json.dumps([event(), event(input_tokens=-1)]).encode(),
    json.dumps([event()] * 5001).encode(),
]


@pytest.mark.parametrize("body", INVALID, ids=range(len(INVALID)))
def test_what_parse_batch_refuses_is_left_to_it(body, settings):
    assert parse_valid_batch(body, now=NOW) is None
    with pytest.raises(DomainError):
        slow(body)


def test_a_time_only_djangos_fallback_reads_is_left_to_parse_batch():
    # One-digit month and day: not ISO 8601 for datetime.fromisoformat, accepted by Django.
    body = json.dumps([event(occurred_at="2026-11-2T10:15:00Z")]).encode()
    assert parse_valid_batch(body, now=NOW) is None
    (slow_event,) = slow(body)
    assert slow_event.occurred_at == datetime(2026, 11, 2, 10, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    "item",
    [
        event(input_tokens=450.0),  # a whole JSON fraction: parse_batch takes it exactly
        event(cost_usd=0.00135),
        event(latency_ms=5.0),
    ],
)
def test_json_fractions_are_left_to_parse_batchs_exact_decimals(item):
    body = json.dumps([item]).encode()
    assert parse_valid_batch(body, now=NOW) is None
    assert slow(body)  # and it accepts them
