"""The real `anthropic` SDK, wrapped, against a fake Anthropic API and a real costmon.

Anthropic's `input_tokens` leaves out cache reads and writes; costmon counts all input. The fake
API reports 100 uncached input tokens, 2,000 read from the cache, 500 written to it and 300
output tokens; at claude-haiku-4-5's $1 / $5 per Mtok, $0.10 cache read and $1.25 cache write:
100 x 1 + 2,000 x 0.10 + 500 x 1.25 + 300 x 5 = 2,425 USD per Mtok = 2,425,000 nano-dollars.
"""

from __future__ import annotations

import asyncio

import anthropic
import pytest

from tests.client.conftest import only_event, recorded
from tests.client.servers import ANTHROPIC_MODEL, FAILING_MODEL, FakeProvider

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("unscoped"),
]

HELLO = [{"role": "user", "content": "Say hello"}]
NANOS = 2_425_000
# A system prompt cached for an hour, and the web search tool: of the 500 cache writes 300 are
# one-hour writes ($2 per Mtok at the standard tier) and the model makes 3 searches ($10 per
# 1,000): 100 x 1 + 2,000 x 0.10 + 200 x 1.25 + 300 x 2 + 300 x 5 = 2,650 USD per Mtok, plus
# $0.03.
SYSTEM = [
    {
        "type": "text",
        "text": "You answer support questions.",
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
    }
]
WEB_SEARCH = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]
SEARCH_NANOS = 2_650_000 + 30_000_000
# The same served by the priority tier ($2 / $10, $0.20 cache reads, $2.50 and $4 cache writes):
# 100 x 2 + 2,000 x 0.20 + 200 x 2.50 + 300 x 4 + 300 x 10 = 5,300 USD per Mtok, plus $0.03.
PRIORITY_SEARCH_NANOS = 5_300_000 + 30_000_000


def sdk(provider: FakeProvider) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=provider.url, api_key="sk-ant-test", max_retries=0)


def async_sdk(provider: FakeProvider) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=provider.url, api_key="sk-ant-test", max_retries=0)


def tokens(event: dict) -> tuple[int, int, int, int, int]:
    return (
        event["input_tokens"],
        event["cached_input_tokens"],
        event["cache_write_tokens"],
        event["output_tokens"],
        event["cost_nanos"],
    )


def test_a_message_counts_cache_reads_and_writes_into_the_input_at_their_prices(
    acme, prices, provider, costmon
):
    client = costmon.wrap(sdk(provider))

    message = client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=500,
        messages=HELLO,
        metadata={"user_id": "user-42"},
    )

    assert message.content[0].text == "Hello there"
    assert costmon.flush(10)
    event = only_event(acme)
    assert tokens(event) == (2600, 2000, 500, 300, NANOS)
    assert (event["provider"], event["model"], event["end_user"], event["cost_usd"]) == (
        "anthropic",
        ANTHROPIC_MODEL,
        "user-42",  # from the SDK's metadata.user_id
        "0.002425",
    )


def test_a_raw_stream_is_recorded_from_message_start_and_message_delta(
    acme, prices, provider, costmon
):
    client = costmon.wrap(sdk(provider))

    stream = client.messages.create(
        model="claude-haiku-4-5", max_tokens=500, messages=HELLO, stream=True
    )
    kinds = [event.type for event in stream]

    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert costmon.flush(10)
    # message_start said 1 output token; message_delta's cumulative 300 wins.
    assert tokens(only_event(acme)) == (2600, 2000, 500, 300, NANOS)


def test_the_stream_helper_is_recorded_when_its_block_ends(acme, prices, provider, costmon):
    client = costmon.wrap(sdk(provider), operation="support-reply")

    with client.messages.stream(model="claude-haiku-4-5", max_tokens=500, messages=HELLO) as s:
        text = "".join(s.text_stream)

    assert text == "Hello there"
    assert costmon.flush(10)
    event = only_event(acme)
    assert tokens(event) == (2600, 2000, 500, 300, NANOS)
    assert event["operation"] == "support-reply"


def test_a_stream_that_fails_midway_is_an_error_with_the_input_already_reported(
    acme, prices, provider, costmon
):
    client = costmon.wrap(sdk(provider))
    provider.anthropic_stream_error = True

    stream = client.messages.create(
        model="claude-haiku-4-5", max_tokens=500, messages=HELLO, stream=True
    )
    with pytest.raises(anthropic.APIStatusError):
        for _ in stream:
            pass

    assert costmon.flush(10)
    event = only_event(acme)
    # What message_start reported: all the input and 1 output token, so far.
    # 100 + 200 + 625 + 1 x 5 = 930 USD per Mtok.
    assert (event["status"], *tokens(event)) == ("error", 2600, 2000, 500, 1, 930_000)


def test_a_failing_message_is_an_error_and_the_exception_is_the_sdks(
    acme, prices, provider, costmon
):
    client = costmon.wrap(sdk(provider))

    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model=FAILING_MODEL, max_tokens=10, messages=HELLO)

    assert costmon.flush(10)
    event = only_event(acme)
    assert (event["status"], event["model"], event["cost_nanos"]) == ("error", FAILING_MODEL, 0)


def test_the_async_client_is_recorded_plain_streamed_and_with_the_helper(
    acme, prices, provider, costmon
):
    client = costmon.wrap(async_sdk(provider), end_user="async-user")

    async def calls() -> list[str]:
        message = await client.messages.create(
            model="claude-haiku-4-5", max_tokens=500, messages=HELLO
        )
        raw = await client.messages.create(
            model="claude-haiku-4-5", max_tokens=500, messages=HELLO, stream=True
        )
        kinds = [event.type async for event in raw]
        async with client.messages.stream(
            model="claude-haiku-4-5", max_tokens=500, messages=HELLO
        ) as helper:
            final = await helper.get_final_message()
        await client.close()
        return [message.content[0].text, kinds[-1], final.content[0].text]

    assert asyncio.run(calls()) == ["Hello there", "message_stop", "Hello there"]
    assert costmon.flush(10)
    events = list(recorded(acme).values())
    assert [tokens(e) for e in events] == [(2600, 2000, 500, 300, NANOS)] * 3
    assert {e["end_user"] for e in events} == {"async-user"}


def test_the_wrapped_client_is_still_an_anthropic_client(provider, costmon):
    client = costmon.wrap(sdk(provider))

    assert isinstance(client, anthropic.Anthropic)
    assert client.messages.count_tokens.__name__ == "count_tokens"  # passed through untouched


def priced_parts(event: dict) -> tuple:
    return (
        event["service_tier"],
        event["cache_write_tokens"],
        event["cache_write_1h_tokens"],
        event["web_search_calls"],
        event["cost_nanos"],
    )


def test_one_hour_cache_writes_and_web_searches_are_priced_at_their_rates(
    acme, outsider, tier_prices, provider, costmon
):
    client = costmon.wrap(sdk(provider))

    client.messages.create(
        model="claude-haiku-4-5", max_tokens=500, system=SYSTEM, tools=WEB_SEARCH, messages=HELLO
    )
    # Without them, the same reply's zero counts change nothing.
    client.messages.create(model="claude-haiku-4-5", max_tokens=500, messages=HELLO)

    assert costmon.flush(10)
    events = sorted(recorded(acme).values(), key=lambda e: e["cost_nanos"])
    assert [tokens(e) for e in events] == [
        (2600, 2000, 500, 300, NANOS),
        (2600, 2000, 500, 300, SEARCH_NANOS),
    ]
    assert [priced_parts(e) for e in events] == [
        ("standard", 500, 0, 0, NANOS),
        ("standard", 500, 300, 3, SEARCH_NANOS),
    ]
    assert events[1]["cost_usd"] == "0.03265"
    assert recorded(outsider) == {}


def test_a_priority_stream_is_priced_from_message_start_and_message_deltas_counts(
    acme, outsider, tier_prices, provider, costmon, outsider_client
):
    client = costmon.wrap(sdk(provider))
    request = {
        "model": "claude-haiku-4-5",
        "max_tokens": 500,
        "system": SYSTEM,
        "tools": WEB_SEARCH,
        "messages": HELLO,
        "service_tier": "auto",  # the organisation has Priority Tier capacity
    }

    raw = client.messages.create(**request, stream=True)
    starts = [event.message.usage for event in raw if event.type == "message_start"]
    with client.messages.stream(**request) as helper:
        final = helper.get_final_message()

    # message_start says 0 searches and the tier; message_delta's cumulative 3 wins.
    assert [(u.service_tier, u.server_tool_use.web_search_requests) for u in starts] == [
        ("priority", 0)
    ]
    assert final.usage.server_tool_use.web_search_requests == 3
    assert costmon.flush(10)
    events = list(recorded(acme).values())
    assert [priced_parts(e) for e in events] == [
        ("priority", 500, 300, 3, PRIORITY_SEARCH_NANOS)
    ] * 2
    assert [e["cost_usd"] for e in events] == ["0.0353"] * 2
    assert recorded(outsider) == {}
    total = outsider_client.get("/api/v1/metrics/", {"period": "day"}).json()["total"]
    assert (total["calls"], total["cost_usd"]) == (0, "0")


def test_the_async_client_reports_one_hour_writes_searches_and_the_tier(
    acme, outsider, tier_prices, provider, costmon
):
    client = costmon.wrap(async_sdk(provider))

    async def calls() -> None:
        await client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=500,
            system=SYSTEM,
            tools=WEB_SEARCH,
            messages=HELLO,
            service_tier="auto",
        )
        stream = await client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=500,
            system=SYSTEM,
            tools=WEB_SEARCH,
            messages=HELLO,
            stream=True,
        )
        [event async for event in stream]
        await client.close()

    asyncio.run(calls())
    assert costmon.flush(10)
    assert sorted(priced_parts(e) for e in recorded(acme).values()) == [
        ("priority", 500, 300, 3, PRIORITY_SEARCH_NANOS),
        ("standard", 500, 300, 3, SEARCH_NANOS),
    ]
    assert recorded(outsider) == {}
