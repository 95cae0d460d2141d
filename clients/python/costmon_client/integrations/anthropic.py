"""The `anthropic` SDK: `messages.create` (with or without stream=True), `messages.parse` and
`messages.stream`, also under `beta.`, sync and async.

Anthropic's `input_tokens` counts only the input that was neither read from nor written to the
prompt cache; costmon's `input_tokens` counts all of it. So costmon's input is
`input_tokens + cache_read_input_tokens + cache_creation_input_tokens`, of which the cache reads
are `cached_input_tokens` and the cache writes `cache_write_tokens`, of which
`cache_creation.ephemeral_1h_input_tokens` were written for an hour (`cache_write_1h_tokens`,
priced above five-minute writes). `server_tool_use.web_search_requests` is `web_search_calls`;
`usage.service_tier` (`standard`, `priority`, `batch`) is the event's tier.

A stream tells the usage in two events: `message_start` (input and cache counts, the first
output tokens) and `message_delta` (cumulative counts: the output, the server tools' requests,
and input fields when given).
"""

from __future__ import annotations

from typing import Any

from costmon_client.events import TokenUsage, tier_of
from costmon_client.integrations._base import Reading, Route, count, get

_USAGE_FIELDS = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
    "output_tokens_details",
    "cache_creation",
    "server_tool_use",
    "service_tier",
)


def provider_for(client: Any) -> str:
    names = " ".join(cls.__name__ for cls in type(client).__mro__)
    if "Bedrock" in names:
        return "bedrock"
    if "Vertex" in names:
        return "vertex"
    return "anthropic"


def message_usage(usage: Any) -> TokenUsage | None:
    if usage is None:
        return None
    uncached = count(get(usage, "input_tokens"))
    read = count(get(usage, "cache_read_input_tokens"))
    by_lifetime = get(usage, "cache_creation")
    one_hour = count(get(by_lifetime, "ephemeral_1h_input_tokens"))
    five_minutes = count(get(by_lifetime, "ephemeral_5m_input_tokens"))
    # The two lifetimes add up to the writes; should a reply disagree, the larger count stands.
    written = max(count(get(usage, "cache_creation_input_tokens")), one_hour + five_minutes)
    return TokenUsage(
        input_tokens=uncached + read + written,
        output_tokens=count(get(usage, "output_tokens")),
        cached_input_tokens=read,
        cache_write_tokens=written,
        reasoning_tokens=count(get(get(usage, "output_tokens_details"), "thinking_tokens")),
        cache_write_1h_tokens=one_hour,
        web_search_calls=count(get(get(usage, "server_tool_use"), "web_search_requests")),
    )


def usage_tier(usage: Any) -> str | None:
    return tier_of(get(usage, "service_tier"))


def _model(obj: Any) -> str | None:
    model = get(obj, "model")
    return model if isinstance(model, str) and model else None


def read_message(message: Any) -> Reading:
    usage = get(message, "usage")
    return Reading(
        model=_model(message), usage=message_usage(usage), service_tier=usage_tier(usage)
    )


def read_message_stream(stream: Any) -> Reading:
    """`messages.stream(...)`: the helper's accumulated message."""
    try:
        snapshot = stream.current_message_snapshot
    except AssertionError:  # the request failed before message_start
        return Reading()
    return read_message(snapshot)


class MessageObserver:
    """Raw stream events of `messages.create(stream=True)`."""

    def __init__(self, _state: object = None) -> None:
        self._model: str | None = None
        self._usage: dict[str, Any] = {}

    def observe(self, event: Any) -> bool:
        kind = get(event, "type")
        if kind == "message_start":
            message = get(event, "message")
            self._model = _model(message) or self._model
            self._merge(get(message, "usage"))
        elif kind == "message_delta":
            self._merge(get(event, "usage"))
        return False

    def _merge(self, usage: Any) -> None:
        if usage is None:
            return
        for name in _USAGE_FIELDS:
            value = get(usage, name)
            if value is not None:  # message_delta's counts are cumulative: the latest wins
                self._usage[name] = value

    def reading(self) -> Reading:
        if not self._usage:
            return Reading(model=self._model)
        return Reading(
            model=self._model,
            usage=message_usage(self._usage),
            service_tier=usage_tier(self._usage),
        )


def end_user(kwargs: dict[str, Any]) -> str | None:
    value = get(kwargs.get("metadata"), "user_id")
    return value if isinstance(value, str) and value else None


_CREATE = Route(
    operation="chat", read_response=read_message, observer=MessageObserver, end_user=end_user
)
_STREAM = Route(
    operation="chat", kind="manager", read_stream=read_message_stream, end_user=end_user
)

ROUTES: dict[tuple[str, ...], Route] = {
    ("messages", "create"): _CREATE,
    ("messages", "parse"): _CREATE,
    ("messages", "stream"): _STREAM,
    ("beta", "messages", "create"): _CREATE,
    ("beta", "messages", "parse"): _CREATE,
    ("beta", "messages", "stream"): _STREAM,
}
