"""The real `openai` SDK, wrapped, against a fake OpenAI API and a real costmon: every call's
tokens arrive and are priced exactly (gpt-4o-mini $0.15/$0.60 per Mtok, cached input $0.075;
text-embedding-3-large $0.13)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import costmon_client
import openai
import pytest

from tests.client.conftest import only_event, recorded
from tests.client.servers import (
    AUDIO_MODEL,
    EMBEDDING_MODEL,
    FAILING_MODEL,
    OPENAI_MODEL,
    FakeProvider,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("unscoped"),
]

HELLO = [{"role": "user", "content": "Say hello"}]
# 1,200 prompt tokens of which 1,000 cached, 300 completion tokens (64 of them reasoning):
# 200 x 0.15 + 1,000 x 0.075 + 300 x 0.60 = 285 USD per Mtok = 285,000 nano-dollars.
CHAT_NANOS = 285_000
# Streamed: 2,000 prompt tokens, 500 completion: 2,000 x 0.15 + 500 x 0.60 = 600.
STREAM_NANOS = 600_000
# The same calls served by the flex tier, at half the rates (tier_prices):
# 200 x 0.075 + 1,000 x 0.0375 + 300 x 0.30 = 142.5, and 2,000 x 0.075 + 500 x 0.30 = 300.
FLEX_CHAT_NANOS = 142_500
FLEX_STREAM_NANOS = 300_000
# Audio: 1,500 prompt tokens of which 1,000 audio and 200 cached, 600 completion tokens of which
# 400 audio, at gpt-4o-mini-audio-preview's $0.15 / $0.60 text, $10 / $20 audio, $0.075 cached:
# 300 x 0.15 + 200 x 0.075 + 1,000 x 10 + 200 x 0.60 + 400 x 20 = 18,180 USD per Mtok.
AUDIO_NANOS = 18_180_000
# Responses (800 input of which 200 cached, 100 output) with 2 billable web searches at $10 per
# 1,000: on the priority tier 600 x 0.25 + 200 x 0.125 + 100 x 1 = 275 USD per Mtok, plus
# $0.02; on the standard tier 165 plus $0.02.
PRIORITY_SEARCH_NANOS = 275_000 + 20_000_000
STANDARD_SEARCH_NANOS = 165_000 + 20_000_000


def sdk(provider: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{provider.url}/v1", api_key="sk-test", max_retries=0)


def async_sdk(provider: FakeProvider) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{provider.url}/v1", api_key="sk-test", max_retries=0)


def test_a_chat_completion_is_recorded_with_its_tokens_and_exact_cost(
    acme, prices, provider, costmon
):
    client = costmon.wrap(sdk(provider), end_user="wrapper-user", tags={"team": "search"})

    reply = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)

    assert reply.choices[0].message.content == "Hello there"  # the SDK's own object
    assert costmon.flush(10)
    event = only_event(acme)
    assert {k: event[k] for k in event if k not in ("event_id", "occurred_at", "latency_ms")} == {
        "provider": "openai",
        "model": OPENAI_MODEL,  # the model that answered, not the alias asked for
        "operation": "chat",
        "end_user": "wrapper-user",
        "session_id": "",
        "tags": {"team": "search"},
        "input_tokens": 1200,
        "output_tokens": 300,
        "cached_input_tokens": 1000,
        "cache_write_tokens": 0,
        "reasoning_tokens": 64,
        "cache_write_1h_tokens": 0,
        "input_audio_tokens": 0,
        "output_audio_tokens": 0,
        "input_image_tokens": 0,
        "output_image_tokens": 0,
        "web_search_calls": 0,
        "output_images": 0,
        "service_tier": "standard",
        "cost_usd": "0.000285",
        "cost_source": "computed",
        "status": "success",
        "cache_hit": False,
        "prompt_hash": "",
        "cost_nanos": CHAT_NANOS,
    }
    assert event["latency_ms"] >= 0


def test_a_streamed_chat_asks_for_usage_and_records_it_from_the_last_chunk(
    acme, prices, provider, costmon
):
    client = costmon.wrap(sdk(provider))

    stream = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
    chunks = list(stream)

    [sent] = provider.bodies("/v1/chat/completions")
    assert sent["stream_options"] == {"include_usage": True}
    # The usage-only chunk the application did not ask for is not passed on to it.
    assert all(chunk.choices for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello there"
    assert costmon.flush(10)
    event = only_event(acme)
    assert (event["input_tokens"], event["output_tokens"], event["cost_nanos"]) == (
        2000,
        500,
        STREAM_NANOS,
    )


def test_a_stream_the_application_asked_usage_for_keeps_its_usage_chunk(
    acme, prices, provider, costmon
):
    client = costmon.wrap(sdk(provider))

    with client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)

    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 2000
    assert costmon.flush(10)
    assert only_event(acme)["cost_nanos"] == STREAM_NANOS


def test_a_stream_closed_before_its_end_is_recorded_with_what_was_read(
    acme, prices, provider, costmon
):
    client = costmon.wrap(sdk(provider))

    stream = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
    first = next(stream)
    stream.close()

    assert first.choices[0].delta.content == "Hel"
    assert costmon.flush(10)
    event = only_event(acme)
    # The usage would have come in the last chunk, which was never read.
    assert (event["status"], event["model"], event["output_tokens"]) == ("success", OPENAI_MODEL, 0)


def test_the_chat_stream_helper_is_recorded_from_its_final_snapshot(
    acme, prices, provider, costmon
):
    client = costmon.wrap(sdk(provider))

    with client.chat.completions.stream(model="gpt-4o-mini", messages=HELLO) as stream:
        final = stream.get_final_completion()

    assert final.choices[0].message.content == "Hello there"
    assert costmon.flush(10)
    event = only_event(acme)
    assert (event["model"], event["cost_nanos"]) == (OPENAI_MODEL, STREAM_NANOS)


def test_embeddings_are_recorded_as_input_tokens(acme, prices, provider, costmon):
    client = costmon.wrap(sdk(provider))

    result = client.embeddings.create(model=EMBEDDING_MODEL, input="a long document")

    assert result.data[0].embedding == [0.25, -0.5, 0.125]
    assert costmon.flush(10)
    event = only_event(acme)
    # 1,000 tokens x $0.13 per Mtok.
    assert (event["operation"], event["input_tokens"], event["output_tokens"]) == (
        "embeddings",
        1000,
        0,
    )
    assert (event["cost_usd"], event["cost_nanos"]) == ("0.00013", 130_000)


def test_the_responses_api_is_recorded_plain_and_streamed(acme, prices, provider, costmon):
    client = costmon.wrap(sdk(provider))

    response = client.responses.create(model="gpt-4o-mini", input="Hi")
    events = list(client.responses.create(model="gpt-4o-mini", input="Hi", stream=True))

    assert response.output_text == "Hi"
    assert events[-1].type == "response.completed"
    assert costmon.flush(10)
    # 800 input tokens of which 200 cached, 100 output (20 reasoning):
    # 600 x 0.15 + 200 x 0.075 + 100 x 0.60 = 165 USD per Mtok.
    rows = list(recorded(acme).values())
    assert [
        (e["input_tokens"], e["cached_input_tokens"], e["reasoning_tokens"], e["cost_nanos"])
        for e in rows
    ] == [(800, 200, 20, 165_000)] * 2


def test_the_end_user_comes_from_the_call_then_the_sdks_user_then_the_wrapper(
    acme, prices, provider, costmon
):
    client = costmon.wrap(sdk(provider), end_user="from-wrapper")

    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, user="from-openai-user")
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        user="from-openai-user",
        costmon_end_user="from-call",
        costmon_operation="summarize",
        costmon_tags={"feature": "digest"},
        costmon_session_id="s-1",
    )
    with costmon_client.context(end_user="from-context", tags={"region": "eu"}):
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)

    bodies = provider.bodies("/v1/chat/completions")
    assert not any(key.startswith("costmon") for body in bodies for key in body)
    assert costmon.flush(10)
    events = recorded(acme).values()
    assert sorted(
        (e["end_user"], e["operation"], e["session_id"], sorted(e["tags"].items())) for e in events
    ) == [
        ("from-call", "summarize", "s-1", [("feature", "digest")]),
        ("from-context", "chat", "", [("region", "eu")]),
        ("from-openai-user", "chat", "", []),
        ("from-wrapper", "chat", "", []),
    ]


def test_a_failing_call_is_recorded_as_an_error_and_the_sdks_exception_reaches_the_app(
    acme, prices, provider, costmon
):
    client = costmon.wrap(sdk(provider))

    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model=FAILING_MODEL, messages=HELLO)

    assert "the fake provider failed" in str(raised.value)
    assert costmon.flush(10)
    event = only_event(acme)
    assert (event["status"], event["model"], event["input_tokens"], event["cost_usd"]) == (
        "error",
        FAILING_MODEL,
        0,
        "0",
    )


def test_the_wrapped_client_is_still_the_sdks_client(provider, costmon):
    original = sdk(provider)
    client = costmon.wrap(original)

    assert isinstance(client, openai.OpenAI)
    assert client.base_url == original.base_url
    assert client.with_options(timeout=5).chat.completions.create.__name__ == "create"
    # Wrapping a wrapped client replaces the settings, never counts a call twice.
    assert costmon.wrap(client).costmon_unwrapped is original


def test_the_async_client_is_recorded_plain_streamed_and_embedded(acme, prices, provider, costmon):
    client = costmon.wrap(async_sdk(provider), operation="async-job")

    async def calls() -> list[str]:
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=True
        )
        texts = [c.choices[0].delta.content async for c in stream]
        await client.embeddings.create(model=EMBEDDING_MODEL, input="doc")
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model=FAILING_MODEL, messages=HELLO)
        await client.close()
        return [reply.choices[0].message.content, "".join(t or "" for t in texts)]

    assert asyncio.run(calls()) == ["Hello there", "Hello there"]
    assert costmon.flush(10)
    events = recorded(acme).values()
    assert sorted((e["status"], e["cost_nanos"]) for e in events) == [
        ("error", 0),
        ("success", 130_000),
        ("success", CHAT_NANOS),
        ("success", STREAM_NANOS),
    ]
    assert {e["operation"] for e in events} == {"async-job"}
    total = sum(Decimal(e["cost_usd"]) for e in events)
    assert total == Decimal("0.001015")


def parts(event: dict) -> dict:
    """The event's new pricing fields, and its exact cost."""
    names = (
        "service_tier",
        "cache_write_1h_tokens",
        "input_audio_tokens",
        "input_image_tokens",
        "output_audio_tokens",
        "output_image_tokens",
        "web_search_calls",
        "output_images",
        "cost_nanos",
    )
    return {name: event[name] for name in names}


NO_PARTS = {
    "service_tier": "standard",
    "cache_write_1h_tokens": 0,
    "input_audio_tokens": 0,
    "input_image_tokens": 0,
    "output_audio_tokens": 0,
    "output_image_tokens": 0,
    "web_search_calls": 0,
    "output_images": 0,
}


def test_a_call_served_by_the_flex_tier_is_priced_at_flex_rates_plain_and_streamed(
    acme, outsider, tier_prices, provider, costmon
):
    client = costmon.wrap(sdk(provider), end_user="flex-user")

    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, service_tier="flex")
    list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, service_tier="flex", stream=True
        )
    )
    with client.chat.completions.stream(
        model="gpt-4o-mini", messages=HELLO, service_tier="flex"
    ) as helper:
        helper.get_final_completion()
    # The provider answers "default" when no tier was asked for: the standard rates.
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)

    assert costmon.flush(10)
    events = sorted(recorded(acme).values(), key=lambda e: e["cost_nanos"])
    assert [(e["service_tier"], e["input_tokens"], e["cost_nanos"]) for e in events] == [
        ("flex", 1200, FLEX_CHAT_NANOS),
        ("standard", 1200, CHAT_NANOS),
        ("flex", 2000, FLEX_STREAM_NANOS),
        ("flex", 2000, FLEX_STREAM_NANOS),
    ]
    assert sum(e["cost_nanos"] for e in events) == 1_027_500
    assert recorded(outsider) == {}


def test_a_priority_reply_is_priced_at_the_priority_rates(
    acme, outsider, tier_prices, provider, costmon
):
    client = costmon.wrap(sdk(provider))

    # OpenAI's fast mode is its priority tier, and says so in the reply.
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, service_tier="fast")

    assert costmon.flush(10)
    # 200 x 0.25 + 1,000 x 0.125 + 300 x 1 = 475 USD per Mtok.
    assert parts(only_event(acme)) == {
        **NO_PARTS,
        "service_tier": "priority",
        "cost_nanos": 475_000,
    }
    assert recorded(outsider) == {}


def test_audio_tokens_are_priced_at_the_audio_rates_plain_and_streamed(
    acme, outsider, tier_prices, provider, costmon
):
    client = costmon.wrap(sdk(provider))
    audio = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"}}

    reply = client.chat.completions.create(
        model="gpt-4o-mini-audio-preview", messages=HELLO, **audio
    )
    stream = client.chat.completions.create(
        model="gpt-4o-mini-audio-preview", messages=HELLO, stream=True, **audio
    )
    chunks = list(stream)

    assert reply.choices[0].message.audio.transcript == "Hello there"
    assert all(chunk.choices for chunk in chunks)  # the usage chunk stays hidden
    assert costmon.flush(10)
    events = list(recorded(acme).values())
    assert [
        (e["model"], e["input_tokens"], e["cached_input_tokens"], e["output_tokens"])
        for e in events
    ] == [(AUDIO_MODEL, 1500, 200, 600)] * 2
    expected = {
        **NO_PARTS,
        "input_audio_tokens": 1000,
        "output_audio_tokens": 400,
        "cost_nanos": AUDIO_NANOS,
    }
    assert [parts(e) for e in events] == [expected] * 2
    assert [e["cost_usd"] for e in events] == ["0.01818"] * 2
    assert recorded(outsider) == {}


def test_the_responses_api_reports_its_web_searches_and_tier_plain_and_streamed(
    acme, outsider, tier_prices, provider, costmon, outsider_client
):
    client = costmon.wrap(sdk(provider))
    search = [{"type": "web_search"}]

    plain = client.responses.create(
        model="gpt-4o-mini", input="Hi", tools=search, service_tier="priority"
    )
    streamed = list(
        client.responses.create(
            model="gpt-4o-mini", input="Hi", tools=search, service_tier="priority", stream=True
        )
    )
    # A reply without tool_usage: its web_search_call items that searched are counted (the
    # page it opened is not a billed search).
    older = client.responses.create(
        model="gpt-4o-mini", input="Hi", tools=search, metadata={"fake": "no_tool_usage"}
    )

    assert plain.tool_usage.web_search.num_requests == 2
    assert streamed[-1].response.service_tier == "priority"
    assert older.tool_usage is None and len(older.output) == 4
    assert costmon.flush(10)
    events = sorted(recorded(acme).values(), key=lambda e: -e["cost_nanos"])
    assert [parts(e) for e in events] == [
        {**NO_PARTS, "service_tier": "priority", "web_search_calls": 2, "cost_nanos": n}
        for n in (PRIORITY_SEARCH_NANOS, PRIORITY_SEARCH_NANOS)
    ] + [{**NO_PARTS, "web_search_calls": 2, "cost_nanos": STANDARD_SEARCH_NANOS}]
    assert [e["cost_usd"] for e in events] == ["0.020275", "0.020275", "0.020165"]
    assert recorded(outsider) == {}
    listed = outsider_client.get("/api/v1/usage/", {"period": "day"}).json()
    assert listed["results"] == []


def test_the_async_client_reports_the_tier_and_audio_too(
    acme, outsider, tier_prices, provider, costmon
):
    client = costmon.wrap(async_sdk(provider))

    async def calls() -> None:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, service_tier="flex"
        )
        stream = await client.chat.completions.create(
            model="gpt-4o-mini-audio-preview",
            messages=HELLO,
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "pcm16"},
            stream=True,
        )
        [chunk async for chunk in stream]
        await client.close()

    asyncio.run(calls())
    assert costmon.flush(10)
    events = recorded(acme).values()
    assert sorted(
        (e["service_tier"], e["input_audio_tokens"], e["cost_nanos"]) for e in events
    ) == [
        ("flex", 0, FLEX_CHAT_NANOS),
        ("standard", 1000, AUDIO_NANOS),
    ]
    assert recorded(outsider) == {}
