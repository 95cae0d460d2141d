"""Usage events as costmon's `POST /api/v1/usage/` takes them, cleaned on the caller's side.

costmon validates a batch as a whole: one bad event refuses the batch. So every event is made
valid here (strings cut to the server's lengths, token counts whole and in range, tags as
strings), and what cannot be repaired is said in the log instead of costing the other events.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

logger = logging.getLogger("costmon_client")

# The server's limits (usage/ingest.py): exceeding one would refuse the whole batch.
_MAX_LEN = {
    "provider": 50,
    "model": 200,
    "operation": 100,
    "end_user": 255,
    "session_id": 255,
    "reservation_id": 64,
    "prompt_hash": 64,
}
MAX_TOKENS = 100_000_000
MAX_LATENCY_MS = 24 * 3600 * 1000
MAX_TAGS = 20
MAX_TAG_KEY = 64
MAX_TAG_VALUE = 200
MAX_EVENT_ID = 128
TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
# Counts priced apart where the provider does; sent only when not 0, so an event that has none
# stays as an older costmon takes it.
PART_FIELDS = (
    "cache_write_1h_tokens",
    "input_audio_tokens",
    "input_image_tokens",
    "output_audio_tokens",
    "output_image_tokens",
    "web_search_calls",
    "output_images",
)
SERVICE_TIERS = ("standard", "batch", "flex", "priority")
# The providers' names for costmon's tiers. OpenAI serves "default" (and "auto", "scale") at the
# standard rates and reports its fast mode as "priority".
_TIER_NAMES = {
    **{tier: tier for tier in SERVICE_TIERS},
    "default": "standard",
    "auto": "standard",
    "scale": "standard",
    "fast": "priority",
}


@dataclass
class TokenUsage:
    """Tokens of one call by kind, in costmon's terms.

    `input_tokens` counts every input token, cached reads and cache writes included;
    `cached_input_tokens` and `cache_write_tokens` say which part of it was which, and
    `cache_write_1h_tokens` the part of the writes kept for an hour. Audio and image tokens are
    parts of `input_tokens` and `output_tokens` too; `web_search_calls` and `output_images`
    count searches made and images generated.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0
    input_audio_tokens: int = 0
    input_image_tokens: int = 0
    output_audio_tokens: int = 0
    output_image_tokens: int = 0
    web_search_calls: int = 0
    output_images: int = 0


@dataclass(frozen=True)
class Attributes:
    """Who and what a call was for: merged from the client, the wrapper, `context()` and the call."""

    end_user: str | None = None
    operation: str | None = None
    session_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def merged(self, other: Attributes) -> Attributes:
        """`other`'s values win; tags are merged key by key."""
        return Attributes(
            end_user=other.end_user if other.end_user is not None else self.end_user,
            operation=other.operation if other.operation is not None else self.operation,
            session_id=other.session_id if other.session_id is not None else self.session_id,
            tags={**self.tags, **other.tags} if other.tags else self.tags,
        )


_context: contextvars.ContextVar[Attributes | None] = contextvars.ContextVar(
    "costmon_client_attributes", default=None
)


@contextlib.contextmanager
def context(
    *,
    end_user: str | None = None,
    operation: str | None = None,
    session_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[None]:
    """Attribute every call made inside the block (this thread or task only), e.g. per request:

    ```
    with costmon_client.context(end_user=request.user.username, tags={"feature": "search"}):
        ...
    ```
    Blocks nest; the inner block's values win.
    """
    outer = _context.get() or Attributes()
    token = _context.set(
        outer.merged(
            Attributes(
                end_user=end_user, operation=operation, session_id=session_id, tags=tags or {}
            )
        )
    )
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> Attributes | None:
    return _context.get()


def new_event_id() -> str:
    return str(uuid.uuid4())


def utc_iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # costmon reads naive times as UTC too
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def decimal_text(value: Decimal | int | str) -> str:
    """A cost as costmon reads it: a decimal string, never a float."""
    if isinstance(value, bool | float):
        raise TypeError(
            f"cost_usd must be a Decimal, int or decimal string (floats lose cents); got {value!r}"
        )
    number = Decimal(value)
    if not number.is_finite() or number < 0:
        raise ValueError(f"cost_usd must be a finite, non-negative amount, not {value!r}")
    return format(number, "f")


def _text(name: str, value: Any) -> str:
    text = str(value).strip()
    limit = _MAX_LEN[name]
    if len(text) > limit:
        logger.debug("costmon: %s cut to %d characters", name, limit)
        text = text[:limit]
    return text


def _count(name: str, value: Any) -> int:
    if value is None or isinstance(value, bool):
        return 0
    try:
        number = int(value)
    except (TypeError, ValueError):
        logger.warning("costmon: %s=%r is not a whole number; recorded as 0", name, value)
        return 0
    return min(max(number, 0), MAX_TOKENS)


def tier_of(value: Any) -> str | None:
    """costmon's tier for a tier name of costmon's or a provider's (`"flex"`, OpenAI's
    `"default"`); None for anything else."""
    if not isinstance(value, str):
        return None
    return _TIER_NAMES.get(value.strip().lower())


def checked_tier(value: str | None) -> str | None:
    """A tier given by the application: None stays None, an unknown name is its bug."""
    if value is None:
        return None
    tier = tier_of(value)
    if tier is None:
        raise ValueError(
            f"service_tier must be one of {', '.join(SERVICE_TIERS)} (or OpenAI's default, "
            f"auto, scale, fast), not {value!r}"
        )
    return tier


def _tags(value: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not value:
        return None
    tags: dict[str, str] = {}
    for key, item in value.items():
        key_text = str(key).strip()[:MAX_TAG_KEY]
        if not key_text or item is None:
            continue
        if len(tags) == MAX_TAGS:
            logger.warning("costmon: more than %d tags on one event; the rest dropped", MAX_TAGS)
            break
        tags[key_text] = str(item)[:MAX_TAG_VALUE]
    return tags or None


def build_event(
    *,
    provider: str,
    model: str,
    usage: TokenUsage,
    attributes: Attributes,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    latency_ms: float | None = None,
    error: bool = False,
    cost_usd: Decimal | int | str | None = None,
    cache_hit: bool = False,
    reservation_id: str | None = None,
    prompt_hash: str | None = None,
    service_tier: str | None = None,
) -> dict[str, Any]:
    """One event as a JSON-ready dict, valid for costmon whatever the caller passed."""
    event: dict[str, Any] = {
        "event_id": (event_id or new_event_id())[:MAX_EVENT_ID],
        "occurred_at": utc_iso(occurred_at or datetime.now(UTC)),
        "provider": _text("provider", provider).lower() or "unknown",
        "model": _text("model", model) or "unknown",
    }
    tokens = {name: _count(name, getattr(usage, name, 0)) for name in (*TOKEN_FIELDS, *PART_FIELDS)}
    _fit_parts(tokens)
    event.update({name: tokens[name] for name in TOKEN_FIELDS})
    event.update({name: tokens[name] for name in PART_FIELDS if tokens[name]})
    tier = tier_of(service_tier)
    if tier is None and service_tier is not None:
        logger.warning("costmon: service_tier=%r is not a tier; recorded as standard", service_tier)
    if tier is not None and tier != "standard":
        event["service_tier"] = tier
    for name in ("operation", "end_user", "session_id"):
        value = getattr(attributes, name)
        if value:
            event[name] = _text(name, value)
    if tags := _tags(attributes.tags):
        event["tags"] = tags
    if latency_ms is not None:
        event["latency_ms"] = min(max(round(latency_ms), 0), MAX_LATENCY_MS)
    event["status"] = "error" if error else "success"
    if cache_hit:
        event["cache_hit"] = True
    if cost_usd is not None:
        event["cost_usd"] = decimal_text(cost_usd)
    if reservation_id:
        event["reservation_id"] = _text("reservation_id", reservation_id)
    if prompt_hash:
        event["prompt_hash"] = _text("prompt_hash", prompt_hash)
    return event


def _fit_parts(tokens: dict[str, int]) -> None:
    """Make every part fit in its total, as costmon requires (it refuses the batch otherwise)."""
    if tokens["cache_write_1h_tokens"] > tokens["cache_write_tokens"]:
        # A part is never more than its total: the caller counted the one-hour writes apart.
        tokens["cache_write_tokens"] = tokens["cache_write_1h_tokens"]
    cache = tokens["cached_input_tokens"] + tokens["cache_write_tokens"]
    if cache > tokens["input_tokens"]:
        # costmon's input_tokens counts cached and cache-write tokens too: the caller reported
        # the uncached part only. Count the parts into the total rather than lose them.
        tokens["input_tokens"] = min(cache, MAX_TOKENS)
        tokens["cache_write_tokens"] = min(
            tokens["cache_write_tokens"], tokens["input_tokens"] - tokens["cached_input_tokens"]
        )
        tokens["cache_write_1h_tokens"] = min(
            tokens["cache_write_1h_tokens"], tokens["cache_write_tokens"]
        )
    # Audio and image tokens the provider also counted as cached (OpenAI's cached_tokens can
    # include cached audio) would exceed the input: the part left uncached is the most they are.
    room = tokens["input_tokens"] - tokens["cached_input_tokens"] - tokens["cache_write_tokens"]
    _trim(tokens, room, ("input_audio_tokens", "input_image_tokens"))
    _trim(tokens, tokens["output_tokens"], ("output_audio_tokens", "output_image_tokens"))


def _trim(tokens: dict[str, int], room: int, names: tuple[str, ...]) -> None:
    for name in names:
        if tokens[name] > room:
            logger.debug("costmon: %s cut to %d to fit in the total", name, max(room, 0))
            tokens[name] = max(room, 0)
        room -= tokens[name]
