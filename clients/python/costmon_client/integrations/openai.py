"""The `openai` SDK: chat completions (create, parse, stream), legacy completions, embeddings and
the Responses API (create, parse), sync and async.

Usage fields: `prompt_tokens` counts all input, cached included, as costmon does;
`prompt_tokens_details.cached_tokens` is the cached part, its `audio_tokens` and `image_tokens`
the audio and image parts, and `completion_tokens_details.reasoning_tokens` and `audio_tokens`
the reasoning and audio parts of the output (the Responses API's `input_tokens_details` and
`output_tokens_details` likewise). The response's `service_tier` says the rates it was served
at: `default` (also `auto`, `scale`) is costmon's standard, `flex` and `priority` (OpenAI's fast
mode) are priced at their own. A Responses call's billable web searches are its
`tool_usage.web_search.num_requests`.

A streamed call gets `stream_options={"include_usage": True}`, so the last chunk carries the
usage; when the application had not asked for that chunk, it is read here and not passed on.
"""

from __future__ import annotations

from typing import Any

from costmon_client.events import TokenUsage, tier_of
from costmon_client.integrations._base import Reading, Route, count, get


def provider_for(client: Any) -> str:
    names = {cls.__name__ for cls in type(client).__mro__}
    return "azure" if any("Azure" in name for name in names) else "openai"


def _token_usage(usage: Any, names: tuple[str, str, str, str]) -> TokenUsage | None:
    """Both usage shapes: `names` are the input and output counts and their details' fields."""
    if usage is None:
        return None
    total_in, total_out, details_in, details_out = names
    inp, out = get(usage, details_in), get(usage, details_out)
    return TokenUsage(
        input_tokens=count(get(usage, total_in)),
        output_tokens=count(get(usage, total_out)),
        cached_input_tokens=count(get(inp, "cached_tokens")),
        cache_write_tokens=count(get(inp, "cache_write_tokens")),
        reasoning_tokens=count(get(out, "reasoning_tokens")),
        input_audio_tokens=count(get(inp, "audio_tokens")),
        input_image_tokens=count(get(inp, "image_tokens")),
        output_audio_tokens=count(get(out, "audio_tokens")),
        output_image_tokens=count(get(out, "image_tokens")),
    )


def completion_usage(usage: Any) -> TokenUsage | None:
    """Chat and legacy completions: `CompletionUsage`."""
    return _token_usage(
        usage,
        (
            "prompt_tokens",
            "completion_tokens",
            "prompt_tokens_details",
            "completion_tokens_details",
        ),
    )


def responses_usage(usage: Any) -> TokenUsage | None:
    """The Responses API: `ResponseUsage`."""
    return _token_usage(
        usage, ("input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details")
    )


def web_searches(response: Any) -> int:
    """A Responses call's billable web searches: `tool_usage.web_search.num_requests`; from a
    response without `tool_usage`, its `web_search_call` items that searched (opening or
    reading a page is not a billed search)."""
    tool_usage = get(response, "tool_usage")
    if tool_usage is not None:
        return count(get(get(tool_usage, "web_search"), "num_requests"))
    output = get(response, "output")
    if not isinstance(output, list):
        return 0
    return sum(
        1
        for item in output
        if get(item, "type") == "web_search_call"
        and get(get(item, "action"), "type") in (None, "search")
    )


def _model(obj: Any) -> str | None:
    model = get(obj, "model")
    return model if isinstance(model, str) and model else None


def read_completion(response: Any) -> Reading:
    return Reading(
        model=_model(response),
        usage=completion_usage(get(response, "usage")),
        service_tier=tier_of(get(response, "service_tier")),
    )


def read_embeddings(response: Any) -> Reading:
    usage = get(response, "usage")
    return Reading(
        model=_model(response),
        usage=TokenUsage(input_tokens=count(get(usage, "prompt_tokens"))) if usage else None,
    )


def read_response(response: Any) -> Reading:
    usage = responses_usage(get(response, "usage"))
    if searches := web_searches(response):
        usage = usage or TokenUsage()
        usage.web_search_calls = searches
    return Reading(
        model=_model(response), usage=usage, service_tier=tier_of(get(response, "service_tier"))
    )


def read_chat_stream(stream: Any) -> Reading:
    """`chat.completions.stream(...)`: the helper's accumulated snapshot."""
    try:
        snapshot = stream.current_completion_snapshot
    except AssertionError:  # no chunk arrived
        return Reading()
    return read_completion(snapshot)


class CompletionObserver:
    """Chunks of a streamed (chat) completion: the model on each, the usage on the last."""

    def __init__(self, hide_usage_chunk: bool) -> None:
        self._hide = hide_usage_chunk
        self._reading = Reading()

    def observe(self, chunk: Any) -> bool:
        if model := _model(chunk):
            self._reading.model = model
        if tier := tier_of(get(chunk, "service_tier")):
            self._reading.service_tier = tier
        usage = get(chunk, "usage")
        if usage is None:
            return False
        self._reading.usage = completion_usage(usage)
        # The usage-only chunk has no choices; an app that did not ask for it may not expect it.
        return self._hide and not get(chunk, "choices")

    def reading(self) -> Reading:
        return self._reading


class ResponsesObserver:
    """Events of a streamed Responses call: `response.completed` (or failed, incomplete) holds
    the whole response with its usage."""

    def __init__(self, _state: object = None) -> None:
        self._reading = Reading()

    def observe(self, event: Any) -> bool:
        response = get(event, "response")
        if response is not None:
            read = read_response(response)
            self._reading.model = read.model or self._reading.model
            self._reading.service_tier = read.service_tier or self._reading.service_tier
            if read.usage is not None:
                self._reading.usage = read.usage
        return False

    def reading(self) -> Reading:
        return self._reading


def include_usage(kwargs: dict[str, Any]) -> bool:
    """Ask for the usage chunk; True when the application had not asked for it itself."""
    options = kwargs.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    asked = options.get("include_usage") is True
    options["include_usage"] = True
    kwargs["stream_options"] = options
    return not asked


def _prepare_streaming(kwargs: dict[str, Any]) -> bool:
    return include_usage(kwargs) if kwargs.get("stream") is True else False


def end_user(kwargs: dict[str, Any]) -> str | None:
    for name in ("user", "safety_identifier"):
        value = kwargs.get(name)
        if isinstance(value, str) and value:
            return value
    return None


_CHAT = Route(
    operation="chat",
    read_response=read_completion,
    observer=CompletionObserver,
    prepare=_prepare_streaming,
    end_user=end_user,
)
_RESPONSES = Route(
    operation="chat",
    read_response=read_response,
    observer=ResponsesObserver,
    end_user=end_user,
)

ROUTES: dict[tuple[str, ...], Route] = {
    ("chat", "completions", "create"): _CHAT,
    ("chat", "completions", "parse"): _CHAT,
    ("chat", "completions", "stream"): Route(
        operation="chat",
        kind="manager",
        read_stream=read_chat_stream,
        prepare=include_usage,
        end_user=end_user,
    ),
    ("completions", "create"): Route(
        operation="text_completion",
        read_response=read_completion,
        observer=CompletionObserver,
        prepare=_prepare_streaming,
        end_user=end_user,
    ),
    ("embeddings", "create"): Route(
        operation="embeddings", read_response=read_embeddings, end_user=end_user
    ),
    ("responses", "create"): _RESPONSES,
    ("responses", "parse"): _RESPONSES,
}
