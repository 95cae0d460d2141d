"""`track()` and `span()`: reporting calls to any provider, with exact costs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import costmon_client
import pytest

from tests.client.conftest import only_event, recorded

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


class ProviderDown(Exception):
    pass


def test_track_reports_every_field_and_costmon_prices_it(acme, prices, costmon):
    when = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)

    event_id = costmon.track(
        "Anthropic",
        "claude-haiku-4-5",
        input_tokens=3000,
        cached_input_tokens=2000,
        cache_write_tokens=400,
        output_tokens=200,
        reasoning_tokens=50,
        latency_ms=812.6,
        end_user="user-9",
        operation="classify",
        session_id="conv-1",
        tags={"team": "ml", "attempt": 2},  # values become strings
        occurred_at=when,
        prompt_hash="ab" * 32,
    )

    assert costmon.flush(10)
    event = recorded(acme)[event_id]
    # 600 x 1 + 2,000 x 0.10 + 400 x 1.25 + 200 x 5 = 2,300 USD per Mtok.
    assert event == {
        "event_id": event_id,
        "occurred_at": "2026-11-02T09:30:00Z",
        "provider": "anthropic",
        "model": "claude-haiku-4-5",
        "operation": "classify",
        "end_user": "user-9",
        "session_id": "conv-1",
        "tags": {"team": "ml", "attempt": "2"},
        "input_tokens": 3000,
        "output_tokens": 200,
        "cached_input_tokens": 2000,
        "cache_write_tokens": 400,
        "reasoning_tokens": 50,
        "cache_write_1h_tokens": 0,
        "input_audio_tokens": 0,
        "output_audio_tokens": 0,
        "input_image_tokens": 0,
        "output_image_tokens": 0,
        "web_search_calls": 0,
        "output_images": 0,
        "service_tier": "standard",
        "cost_usd": "0.0023",
        "cost_source": "computed",
        "latency_ms": 813,
        "status": "success",
        "cache_hit": False,
        "prompt_hash": "ab" * 32,
        "cost_nanos": 2_300_000,
    }


def test_a_cost_the_caller_knows_overrides_the_catalog_and_floats_are_refused(
    acme, prices, costmon
):
    event_id = costmon.track(
        "mistral", "mistral-large-2411", input_tokens=1000, cost_usd=Decimal("0.0123456789")
    )
    with pytest.raises(TypeError, match="floats"):
        costmon.track("mistral", "mistral-large-2411", cost_usd=0.01)  # type: ignore[arg-type]

    assert costmon.flush(10)
    event = only_event(acme)
    assert (event["event_id"], event["cost_usd"], event["cost_source"]) == (
        event_id,
        "0.012345679",  # nano-dollars, rounded half up
        "caller",
    )


def test_track_repairs_what_costmon_would_refuse_instead_of_losing_the_batch(acme, prices, costmon):
    costmon.track(
        "openai",
        "gpt-4o-mini",
        input_tokens=100,  # only the uncached part: the cached tokens are counted in
        cached_input_tokens=400,
        output_tokens=-5,
        end_user="u" * 300,
        tags={f"k{i}": "v" for i in range(25)},
    )
    costmon.track("openai", "gpt-4o-mini", input_tokens=1000)

    assert costmon.flush(10)
    events = sorted(recorded(acme).values(), key=lambda e: e["input_tokens"])
    repaired = events[0]
    assert (
        repaired["input_tokens"],
        repaired["cached_input_tokens"],
        repaired["output_tokens"],
    ) == (
        400,
        400,
        0,
    )
    assert (len(repaired["end_user"]), len(repaired["tags"])) == (255, 20)
    assert costmon.stats().rejected == 0


def test_a_span_times_the_call_and_records_the_usage_set_in_it(acme, prices, costmon):
    with costmon.span("openai", "gpt-4o-mini", end_user="span-user") as span:
        span.usage(input_tokens=1000, output_tokens=100, model="gpt-4o-mini-2024-07-18")
        span.set(tags={"step": "rerank"})

    assert costmon.flush(10)
    event = recorded(acme)[span.event_id]
    assert (event["model"], event["status"], event["end_user"], event["tags"]) == (
        "gpt-4o-mini-2024-07-18",
        "success",
        "span-user",
        {"step": "rerank"},
    )
    # 1,000 x 0.15 + 100 x 0.60 = 210 USD per Mtok.
    assert event["cost_nanos"] == 210_000
    assert event["latency_ms"] >= 0


def test_a_span_whose_block_raises_is_an_error_and_the_exception_goes_on_unchanged(
    acme, prices, costmon
):
    failure = ProviderDown("the provider is down")

    with pytest.raises(ProviderDown) as raised, costmon.span("mistral", "mistral-small") as span:
        span.usage(input_tokens=10)
        raise failure

    assert raised.value is failure
    assert costmon.flush(10)
    assert recorded(acme)[span.event_id]["status"] == "error"


def test_an_async_span_and_the_module_level_functions(acme, acme_key, prices, live_server):
    costmon_client.init(live_server.url, acme_key, flush_interval=0.05)

    async def work() -> str:
        async with costmon_client.span("google", "gemini-2.5-flash") as span:
            await asyncio.sleep(0)
            span.usage(input_tokens=5, output_tokens=7)
        return span.event_id

    try:
        with costmon_client.context(end_user="ctx-user", operation="batch-job"):
            span_id = asyncio.run(work())
            track_id = costmon_client.track("openai", "gpt-4o-mini", input_tokens=1000)
        assert costmon_client.flush(10)
    finally:
        costmon_client.close()

    events = recorded(acme)
    assert {events[span_id]["end_user"], events[track_id]["end_user"]} == {"ctx-user"}
    assert events[span_id]["operation"] == "batch-job"
    assert (events[span_id]["output_tokens"], events[track_id]["cost_nanos"]) == (7, 150_000)
