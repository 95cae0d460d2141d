"""The `anthropic` SDK: `messages.create` (with or without stream=True), `messages.parse` and
`messages.stream`, also under `beta.`, sync and async.

Anthropic's `input_tokens` counts only the input that was neither read from nor written to the
prompt cache; costmon's `input_tokens` counts all of it. So costmon's input is
`input_tokens + cache_read_input_tokens + cache_creation_input_tokens`, of which the cache reads
are `cached_input_tokens` and the cache writes `cache_write_tokens`.

A stream tells the usage in two events: `message_start` (input and cache counts, the first
output tokens) and `message_delta` (cumulative counts: the output, and input fields when given).
"""

from __future__ import annotations

from typing import Any

from costmon_client.events import TokenUsage
from costmon_client.integrations._base import Reading, Route, count, get

_USAGE_FIELDS = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
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
    written = count(get(usage, "cache_creation_input_tokens"))
    return TokenUsage(
        input_tokens=uncached + read + written,
        output_tokens=count(get(usage, "output_tokens")),
        cached_input_tokens=read,
        cache_write_tokens=written,
        reasoning_tokens=count(get(get(usage, "output_tokens_details"), "thinking_tokens")),
    )


def _model(obj: Any) -> str | None:
    model = get(obj, "model")
    return model if isinstance(model, str) and model else None


def read_message(message: Any) -> Reading:
    return Reading(model=_model(message), usage=message_usage(get(message, "usage")))


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
        self._details: Any = None

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
        details = get(usage, "output_tokens_details")
        if details is not None:
            self._details = details

    def reading(self) -> Reading:
        usage = None
        if self._usage:
            usage = message_usage({**self._usage, "output_tokens_details": self._details})
        return Reading(model=self._model, usage=usage)


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
