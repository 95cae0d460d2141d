"""`track()` and `span()`: reporting calls to any provider, with exact costs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import costmon_client
import pytest

from tests.client.conftest import only_event, recorded

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("unscoped"),
]


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


PRICING_FIELDS = (
    "service_tier",
    "cache_write_1h_tokens",
    "input_audio_tokens",
    "input_image_tokens",
    "output_audio_tokens",
    "output_image_tokens",
    "web_search_calls",
    "output_images",
)


def pricing(event: dict) -> dict:
    return {name: event[name] for name in (*PRICING_FIELDS, "cost_nanos", "cost_usd")}


def test_track_reports_tiers_cache_lifetimes_modalities_searches_and_images(
    acme, outsider, tier_prices, costmon, outsider_client
):
    priority = costmon.track(
        "anthropic",
        "claude-haiku-4-5",
        input_tokens=3000,
        cached_input_tokens=2000,
        cache_write_tokens=400,
        cache_write_1h_tokens=100,
        output_tokens=200,
        web_search_calls=4,
        service_tier="priority",
    )
    images = costmon.track(
        "openai",
        "gpt-image-1",
        input_tokens=1000,
        input_image_tokens=600,
        output_tokens=4000,
        output_image_tokens=4000,
        output_images=1,
    )
    audio = costmon.track(
        "openai",
        "gpt-4o-mini-audio-preview",
        input_tokens=1500,
        input_audio_tokens=1000,
        output_tokens=600,
        output_audio_tokens=400,
    )
    batch = costmon.track(
        "openai", "gpt-4o-mini", input_tokens=1000, output_tokens=1000, service_tier="Batch"
    )
    # OpenAI's own name for its standard tier is read as costmon's.
    default = costmon.track("openai", "gpt-4o-mini", input_tokens=1000, service_tier="default")

    assert costmon.flush(10)
    events = recorded(acme)
    none = dict.fromkeys(PRICING_FIELDS[1:], 0)
    assert {key: pricing(events[key]) for key in (priority, images, audio, batch, default)} == {
        # 600 x 2 + 2,000 x 0.20 + 300 x 2.50 + 100 x 4 + 200 x 10 = 4,750 USD per Mtok at
        # the priority tier, plus 4 searches at $10 per 1,000.
        priority: {
            **none,
            "service_tier": "priority",
            "cache_write_1h_tokens": 100,
            "web_search_calls": 4,
            "cost_nanos": 44_750_000,
            "cost_usd": "0.04475",
        },
        # 400 x 5 + 600 x 10 (image input) + 4,000 x 40 (image output) = 168,000 USD per Mtok,
        # plus 1 image at $0.01.
        images: {
            **none,
            "service_tier": "standard",
            "input_image_tokens": 600,
            "output_image_tokens": 4000,
            "output_images": 1,
            "cost_nanos": 178_000_000,
            "cost_usd": "0.178",
        },
        # 500 x 0.15 + 1,000 x 10 + 200 x 0.60 + 400 x 20 = 18,195 USD per Mtok.
        audio: {
            **none,
            "service_tier": "standard",
            "input_audio_tokens": 1000,
            "output_audio_tokens": 400,
            "cost_nanos": 18_195_000,
            "cost_usd": "0.018195",
        },
        # gpt-4o-mini's batch price: 1,000 x 0.075 + 1,000 x 0.30.
        batch: {**none, "service_tier": "batch", "cost_nanos": 375_000, "cost_usd": "0.000375"},
        default: {**none, "service_tier": "standard", "cost_nanos": 150_000, "cost_usd": "0.00015"},
    }
    assert recorded(outsider) == {}
    assert outsider_client.get("/api/v1/usage/", {"period": "day"}).json()["results"] == []


def test_a_span_takes_the_new_fields_with_its_usage(acme, tier_prices, costmon):
    with costmon.span("openai", "gpt-4o-mini") as span:
        span.usage(input_tokens=1200, cached_input_tokens=1000, output_tokens=300)
        span.usage(service_tier="flex", web_search_calls=1)

    assert costmon.flush(10)
    event = recorded(acme)[span.event_id]
    # Flex: 200 x 0.075 + 1,000 x 0.0375 + 300 x 0.30 = 142.5 USD per Mtok; gpt-4o-mini's flex
    # row has no search rate, so the search is not charged.
    assert (event["service_tier"], event["web_search_calls"], event["cost_nanos"]) == (
        "flex",
        1,
        142_500,
    )


def test_parts_that_overlap_are_trimmed_so_costmon_never_refuses_the_batch(
    acme, tier_prices, costmon
):
    # 1,000 audio tokens of which OpenAI also counted 1,200 cached: more parts than input.
    overlapping = costmon.track(
        "openai",
        "gpt-4o-mini-audio-preview",
        input_tokens=1500,
        cached_input_tokens=1200,
        input_audio_tokens=1000,
        output_tokens=100,
        output_audio_tokens=300,
    )
    # One-hour writes reported beside the writes rather than as a part of them.
    apart = costmon.track(
        "anthropic",
        "claude-haiku-4-5",
        input_tokens=1000,
        cache_write_tokens=0,
        cache_write_1h_tokens=400,
    )

    assert costmon.flush(10)
    events = recorded(acme)
    assert costmon.stats().rejected == 0
    trimmed = events[overlapping]
    # The audio left is what the cache did not cover: 1,200 x 0.075 + 300 x 10 + 100 x 20.
    assert (
        trimmed["input_audio_tokens"],
        trimmed["output_audio_tokens"],
        trimmed["cost_nanos"],
    ) == (300, 100, 5_090_000)
    # A total is never less than its part: 600 x 1 + 400 x 2.
    assert (
        events[apart]["cache_write_tokens"],
        events[apart]["cache_write_1h_tokens"],
        events[apart]["cost_nanos"],
    ) == (400, 400, 1_400_000)


def test_an_unknown_service_tier_is_the_callers_bug_and_is_said_at_once(acme, prices, costmon):
    with pytest.raises(ValueError, match="service_tier must be one of standard, batch"):
        costmon.track("openai", "gpt-4o-mini", input_tokens=10, service_tier="ultrafast")
    with (
        pytest.raises(ValueError, match="service_tier"),
        costmon.span("openai", "gpt-4o-mini") as s,
    ):
        s.usage(service_tier="turbo")

    assert costmon.flush(10)
    # The span still reports its call (the block raised), at the standard tier.
    assert [e["service_tier"] for e in recorded(acme).values()] == ["standard"]


def test_events_without_the_new_fields_are_sent_as_an_older_costmon_takes_them(
    acme, prices, gate, make_costmon
):
    costmon = make_costmon(url=gate.url, batch_size=2)
    costmon.track("openai", "gpt-4o-mini", input_tokens=10, service_tier="default")
    costmon.track("openai", "gpt-4o-mini", input_tokens=10, web_search_calls=2, service_tier="flex")

    assert costmon.flush(10)
    [plain, searched] = [e for p in gate.passages if p.path == "/api/v1/usage/" for e in p.json]
    assert not set(PRICING_FIELDS) & set(plain)
    assert {k: searched[k] for k in set(PRICING_FIELDS) & set(searched)} == {
        "service_tier": "flex",
        "web_search_calls": 2,
    }
