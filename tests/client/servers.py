"""Local HTTP servers for the client tests: a fake LLM provider that answers as the OpenAI and
Anthropic APIs do (JSON and server-sent events, with usage), and a gate in front of costmon that
a test can hold, fail or let through."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

OPENAI_MODEL = "gpt-4o-mini-2024-07-18"  # a dated snapshot: costmon prices it as gpt-4o-mini
AUDIO_MODEL = "gpt-4o-mini-audio-preview-2024-12-17"  # answers a chat that asks for audio
ANTHROPIC_MODEL = "claude-haiku-4-5-20251001"
EMBEDDING_MODEL = "text-embedding-3-large"
FAILING_MODEL = "boom"  # the fake provider answers 500 for this model

# What the fake provider reports, per API.
CHAT_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1000, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 64, "audio_tokens": 0},
}
CHAT_STREAM_USAGE = {
    "prompt_tokens": 2000,
    "completion_tokens": 500,
    "total_tokens": 2500,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
# A chat that asked for audio: 1,500 prompt tokens (1,000 of them audio, 200 cached), 600
# completion tokens (400 of them audio).
AUDIO_CHAT_USAGE = {
    "prompt_tokens": 1500,
    "completion_tokens": 600,
    "total_tokens": 2100,
    "prompt_tokens_details": {
        "cached_tokens": 200,
        "audio_tokens": 1000,
        "text_tokens": 500,
        "image_tokens": 0,
    },
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 400, "text_tokens": 200},
}
RESPONSES_USAGE = {
    "input_tokens": 800,
    "input_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 0},
    "output_tokens": 100,
    "output_tokens_details": {"reasoning_tokens": 20},
    "total_tokens": 900,
}
EMBEDDING_USAGE = {"prompt_tokens": 1000, "total_tokens": 1000}
ANTHROPIC_USAGE = {
    "input_tokens": 100,  # the uncached part only, as Anthropic counts
    "cache_read_input_tokens": 2000,
    "cache_creation_input_tokens": 500,
    "output_tokens": 300,
    "cache_creation": {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 0},
    "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
    "service_tier": "standard",
}
# Of the 500 cache writes, 300 for an hour when the request asked for a one-hour cache.
ONE_HOUR_WRITES = {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 300}
WEB_SEARCHES = {"openai": 2, "anthropic": 3}  # searches made when the request offers the tool


def openai_tier(body: dict[str, Any]) -> str:
    """The tier OpenAI says served a request: what it asked for, else its default."""
    return {"flex": "flex", "priority": "priority", "fast": "priority"}.get(
        body.get("service_tier") or "", "default"
    )


def offers_web_search(body: dict[str, Any]) -> bool:
    return any(
        str(tool.get("type", "")).startswith("web_search") for tool in body.get("tools") or []
    )


def anthropic_usage(body: dict[str, Any], *, searches: int | None = None) -> dict[str, Any]:
    """Anthropic's usage for a request: one-hour cache writes when a block asked for them, web
    searches when the tool was offered, and the priority tier for `service_tier: auto` (as for
    an organisation with Priority Tier capacity)."""
    usage = dict(ANTHROPIC_USAGE)
    if '"ttl": "1h"' in json.dumps(body):
        usage["cache_creation"] = ONE_HOUR_WRITES
    if searches is None:
        searches = WEB_SEARCHES["anthropic"] if offers_web_search(body) else 0
    usage["server_tool_use"] = {"web_search_requests": searches, "web_fetch_requests": 0}
    usage["service_tier"] = "priority" if body.get("service_tier") == "auto" else "standard"
    return usage


def free_port() -> int:
    """A port nothing listens on (bound and released): a costmon that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sse(events: list[tuple[str | None, Any]]) -> bytes:
    lines = []
    for name, data in events:
        if name:
            lines.append(f"event: {name}")
        lines.append("data: " + (data if isinstance(data, str) else json.dumps(data)))
        lines.append("")
    return ("\n".join(lines) + "\n").encode()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    json: Any


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 run in a daemon thread."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


# --- the fake LLM provider ----------------------------------------------------------------------


class _ProviderHandler(_Handler):
    def do_POST(self) -> None:
        owner: FakeProvider = self.server.owner  # type: ignore[attr-defined]
        body = json.loads(self._body() or b"{}")
        owner.received.append(Received(self.path, dict(self.headers), body))
        if body.get("model") == FAILING_MODEL:
            error = {"error": {"type": "server_error", "message": "the fake provider failed"}}
            self._send(500, json.dumps(error).encode())
            return
        route = {
            "/v1/chat/completions": owner.chat,
            "/v1/embeddings": owner.embeddings,
            "/v1/responses": owner.responses,
            "/v1/messages": owner.messages,
        }.get(self.path)
        if route is None:
            self._send(404, b'{"error": {"message": "no such route"}}')
            return
        stream = body.get("stream") is True
        payload = route(body, stream)
        if stream:
            self._send(200, payload, "text/event-stream")
        else:
            self._send(200, json.dumps(payload).encode())


class FakeProvider(_Server):
    """Answers `/v1/chat/completions`, `/v1/embeddings`, `/v1/responses` (OpenAI) and
    `/v1/messages` (Anthropic) with fixed usage; records every request."""

    handler = _ProviderHandler

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Received] = []
        # Set to make the next Anthropic stream fail after message_start.
        self.anthropic_stream_error = False

    def bodies(self, path: str) -> list[Any]:
        return [r.json for r in self.received if r.path == path]

    # OpenAI

    def chat(self, body: dict[str, Any], stream: bool) -> Any:
        audio = "audio" in (body.get("modalities") or [])
        base = {
            "id": "chatcmpl-1",
            "created": 1_764_000_000,
            "model": AUDIO_MODEL if audio else OPENAI_MODEL,
            "service_tier": openai_tier(body),
        }
        if not stream:
            message: dict[str, Any] = {"role": "assistant", "content": "Hello there"}
            if audio:
                message = {
                    "role": "assistant",
                    "content": None,
                    "audio": {
                        "id": "audio_1",
                        "data": "UklGRg==",
                        "expires_at": 1_764_003_600,
                        "transcript": "Hello there",
                    },
                }
            return {
                **base,
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
                ],
                "usage": AUDIO_CHAT_USAGE if audio else CHAT_USAGE,
            }
        chunk = {**base, "object": "chat.completion.chunk"}
        parts = ["Hel", "lo ", "there"]
        events: list[tuple[str | None, Any]] = [
            (
                None,
                {
                    **chunk,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": text},
                            "finish_reason": None,
                        }
                    ],
                    "usage": None,
                },
            )
            for text in parts
        ]
        events.append(
            (
                None,
                {
                    **chunk,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    "usage": None,
                },
            )
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            # As OpenAI does: only when asked, a last chunk with no choices and the usage.
            usage = AUDIO_CHAT_USAGE if audio else CHAT_STREAM_USAGE
            events.append((None, {**chunk, "choices": [], "usage": usage}))
        events.append((None, "[DONE]"))
        return sse(events)

    def embeddings(self, body: dict[str, Any], stream: bool) -> Any:
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.125]}],
            "model": EMBEDDING_MODEL,
            "usage": EMBEDDING_USAGE,
        }

    def responses(self, body: dict[str, Any], stream: bool) -> Any:
        searches = WEB_SEARCHES["openai"] if offers_web_search(body) else 0
        # Searches, and a page opened (not a billed search), before the answer.
        search_calls = [
            {
                "type": "web_search_call",
                "id": f"ws_{n}",
                "status": "completed",
                "action": {"type": "search", "query": "costmon"},
            }
            for n in range(searches)
        ]
        if searches:
            search_calls.append(
                {
                    "type": "web_search_call",
                    "id": "ws_open",
                    "status": "completed",
                    "action": {"type": "open_page", "url": "https://example.com/"},
                }
            )
        # As OpenAI reports hosted tools' billable use; an older API version does not.
        omit_tool_usage = (body.get("metadata") or {}).get("fake") == "no_tool_usage"

        def response(status: str, usage: Any) -> dict[str, Any]:
            done = status == "completed"
            reply: dict[str, Any] = {
                "id": "resp_1",
                "object": "response",
                "created_at": 1_764_000_000,
                "status": status,
                "model": OPENAI_MODEL,
                "service_tier": openai_tier(body) if done else (body.get("service_tier") or "auto"),
                "output": [
                    *search_calls,
                    {
                        "type": "message",
                        "id": "msg_1",
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "Hi", "annotations": []}],
                    },
                ]
                if done
                else [],
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
                "usage": usage,
            }
            if done and not omit_tool_usage:
                reply["tool_usage"] = {
                    "web_search": {"num_requests": searches},
                    "image_gen": {
                        "input_tokens": 0,
                        "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
                        "output_tokens": 0,
                        "total_tokens": 0,
                    },
                }
            return reply

        if not stream:
            return response("completed", RESPONSES_USAGE)
        return sse(
            [
                (
                    "response.created",
                    {
                        "type": "response.created",
                        "sequence_number": 0,
                        "response": response("in_progress", None),
                    },
                ),
                (
                    "response.output_text.delta",
                    {
                        "type": "response.output_text.delta",
                        "sequence_number": 1,
                        "item_id": "msg_1",
                        "output_index": 0,
                        "content_index": 0,
                        "delta": "Hi",
                        "logprobs": [],
                    },
                ),
                (
                    "response.completed",
                    {
                        "type": "response.completed",
                        "sequence_number": 2,
                        "response": response("completed", RESPONSES_USAGE),
                    },
                ),
            ]
        )

    # Anthropic

    def messages(self, body: dict[str, Any], stream: bool) -> Any:
        message = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": ANTHROPIC_MODEL,
            "stop_sequence": None,
        }
        if not stream:
            return {
                **message,
                "content": [{"type": "text", "text": "Hello there"}],
                "stop_reason": "end_turn",
                "usage": anthropic_usage(body),
            }
        # The searches are counted by message_delta (cumulative); message_start has none yet.
        start_usage = {**anthropic_usage(body, searches=0), "output_tokens": 1}
        end_usage = anthropic_usage(body)
        events: list[tuple[str | None, Any]] = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        **message,
                        "content": [],
                        "stop_reason": None,
                        "usage": start_usage,
                    },
                },
            ),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            ("ping", {"type": "ping"}),
        ]
        if self.anthropic_stream_error:
            self.anthropic_stream_error = False
            events.append(
                (
                    "error",
                    {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
                )
            )
            return sse(events)
        for text in ("Hello", " there"):
            events.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": text},
                    },
                )
            )
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {
                        "output_tokens": end_usage["output_tokens"],
                        "server_tool_use": end_usage["server_tool_use"],
                    },
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        return sse(events)


# --- the gate in front of costmon ---------------------------------------------------------------


@dataclass
class Passage:
    path: str
    json: Any
    answered: int  # the status the client got
    at: float = field(default_factory=time.monotonic)  # when the request reached the gate


@dataclass
class _Plan:
    fail: int = 0  # answer 503 without asking costmon
    fail_headers: dict[str, str] = field(default_factory=dict)  # e.g. Retry-After on those 503s
    lose_answer: int = 0  # ask costmon, then answer 503 as if its reply was lost
    passages: list[Passage] = field(default_factory=list)


class _GateHandler(_Handler):
    def do_POST(self) -> None:
        gate: Gate = self.server.owner  # type: ignore[attr-defined]
        body = self._body()
        with gate.lock:
            gate.arrivals += 1
        gate.arrived.set()
        gate.open.wait(30)  # bounded: a failed test must not hang the server
        with gate.lock:
            plan = gate.plan
            if plan.fail:
                plan.fail -= 1
                action = "fail"
            elif plan.lose_answer:
                plan.lose_answer -= 1
                action = "lose"
            else:
                action = "pass"
        if action == "fail":
            status, reply, headers = 503, b'{"detail": "maintenance"}', dict(plan.fail_headers)
        else:
            status, reply, headers = gate.forward(self.path, body, dict(self.headers))
            if action == "lose":
                status, reply, headers = 503, b'{"detail": "upstream reply lost"}', {}
        with gate.lock:
            plan.passages.append(Passage(self.path, json.loads(body or b"null"), status))
        self._send(status, reply, headers=headers)


class Gate(_Server):
    """An HTTP proxy in front of costmon. `open` cleared: requests wait at the gate."""

    handler = _GateHandler

    def __init__(self, upstream: str) -> None:
        super().__init__()
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.lock = threading.Lock()
        self.plan = _Plan()
        self.open = threading.Event()
        self.open.set()
        self.arrived = threading.Event()
        self.arrivals = 0

    @property
    def passages(self) -> list[Passage]:
        with self.lock:
            return list(self.plan.passages)

    def forward(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            keep = {"Authorization", "Content-Type", "User-Agent", "Accept"}
            conn.request(
                "POST", path, body=body, headers={k: v for k, v in headers.items() if k in keep}
            )
            response = conn.getresponse()
            passed = {
                k: v for k, v in response.getheaders() if k.lower().startswith(("retry-", "x-"))
            }
            return response.status, response.read(), passed
        finally:
            conn.close()


def iter_usage_ids(passages: list[Passage]) -> Iterator[list[str]]:
    for passage in passages:
        if passage.path == "/api/v1/usage/":
            yield [e["event_id"] for e in passage.json]
