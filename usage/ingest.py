"""Validation of usage batches: the whole batch at once, each error with index, field, message.

Hand-written rather than a DRF serializer per event: a 1,000-event batch is checked in a few
milliseconds, and every message says what to send instead.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from costmon.core.exceptions import BatchInvalid, DomainError
from costmon.core.inputs import (
    DECIMAL_TEXT,
    field_name,
    impossible_date_reason,
    text_problems,
)

MAX_TOKENS = 100_000_000  # more than any context window times any sane batch of calls
MAX_COST_USD = Decimal(100_000)
MAX_LATENCY_MS = 24 * 3600 * 1000
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
# Optional counts priced apart where the provider does (see usage.pricing.Usage): parts of
# input_tokens or output_tokens, web searches and generated images. Absent means 0.
PART_FIELDS = (
    "cache_write_1h_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "input_image_tokens",
    "output_image_tokens",
    "web_search_calls",
    "output_images",
)
# Each group of parts with the total it is a part of, and how to say so.
_PART_OF = (
    (
        "input_tokens",
        ("cached_input_tokens", "cache_write_tokens", "input_audio_tokens", "input_image_tokens"),
    ),
    ("output_tokens", ("output_audio_tokens", "output_image_tokens")),
    ("cache_write_tokens", ("cache_write_1h_tokens",)),
)
SERVICE_TIERS = ("standard", "batch", "flex", "priority")
_STRING_FIELDS = {
    # field: (max length, required)
    "provider": (50, True),
    "model": (200, True),
    "operation": (100, False),
    "end_user": (255, False),
    "session_id": (255, False),
}
KNOWN_FIELDS = frozenset(
    {
        "event_id",
        "occurred_at",
        "tags",
        "cost_usd",
        "latency_ms",
        "status",
        "cache_hit",
        "reservation_id",
        "prompt_hash",
        "service_tier",
        *TOKEN_FIELDS,
        *PART_FIELDS,
        *_STRING_FIELDS,
    }
)
# The unit a count's messages name, when not tokens.
_UNITS = {"web_search_calls": "web searches", "output_images": "images"}
MAX_TAGS = 20
MAX_PROMPT_HASH = 64  # a hex SHA-256


@dataclass(slots=True)
class EventIn:
    event_id: str
    occurred_at: datetime
    provider: str
    model: str
    operation: str
    end_user: str
    session_id: str
    tags: dict[str, str] | None
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_usd: Decimal | None
    latency_ms: int | None
    is_error: bool
    cache_hit: bool
    # The pre-flight check's reservation this event settles (not stored).
    reservation_id: str | None = None
    # The caller's hash of the prompt: identical requests are what a cache would have saved.
    prompt_hash: str | None = None
    service_tier: str = "standard"
    cache_write_1h_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int = 0
    web_search_calls: int = 0
    output_images: int = 0
    # Sent with an event id but no occurred_at: the server stamped it with the time it arrived.
    # Ingest keeps that stamp (usage.models.EventStamp), so a resend gets the same time again.
    stamped: bool = False


def _parse_time(raw: Any, *, now: datetime, latest: datetime) -> tuple[datetime | None, str | None]:
    """(occurred_at in UTC, None) or (None, why it cannot be one)."""
    try:
        parsed = parse_datetime(raw) if isinstance(raw, str) else None
    except ValueError as exc:
        # Well-formed but impossible: February 30th, second 60, an offset of 25 hours.
        return None, f"{raw} is not a valid date-time ({impossible_date_reason(exc)})."
    if parsed is None:
        return None, "Must be an ISO 8601 date-time, e.g. 2026-11-23T14:05:00Z."
    if timezone.is_naive(parsed):
        parsed = parsed.replace(tzinfo=UTC)  # documented: naive times are UTC
    if parsed > latest:
        return None, f"{raw} is in the future (server time is {now:%Y-%m-%dT%H:%M:%SZ})."
    if parsed < EARLIEST:
        return None, "Must be after 2000-01-01."
    return parsed, None


class _Errors:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, index: int, field: str | None, message: str) -> None:
        named = field_name(field) if field is not None else None
        self.items.append({"index": index, "field": named, "message": message})


def parse_batch(
    payload: Any, *, now: datetime | None = None, may_hold_refused: bool = True
) -> list[EventIn]:
    """Validate a decoded JSON body (one object or a list of them); raise BatchInvalid.

    `may_hold_refused=False` skips the look for control characters and lone surrogates in
    every string, for a body known not to hold any (`costmon.core.inputs.may_hold_refused`)."""
    if isinstance(payload, dict):
        items = [payload]
    elif isinstance(payload, list):
        items = payload
    else:
        raise DomainError("Send one usage event (a JSON object) or a JSON list of them.")
    if not items:
        raise DomainError("The list is empty: send at least one usage event.")
    limit = settings.COSTMON_MAX_BATCH_EVENTS
    if len(items) > limit:
        raise DomainError(f"{len(items)} events in one request; send at most {limit} per request.")
    now = now or timezone.now()
    latest = now + timedelta(seconds=settings.COSTMON_FUTURE_SKEW_SECONDS)
    errors = _Errors()
    events = []
    for index, item in enumerate(items):
        event = _parse_event(index, item, errors, now=now, latest=latest, text=may_hold_refused)
        if event is not None:
            events.append(event)
    if errors.items:
        raise BatchInvalid(errors.items)
    return events


Add = Callable[[str | None, str], None]  # (field, message): one error of the event at hand


def _parse_event(
    index: int, item: Any, errors: _Errors, *, now: datetime, latest: datetime, text: bool = True
) -> EventIn | None:
    if not isinstance(item, dict):
        errors.add(index, None, "Each event must be a JSON object.")
        return None
    before = len(errors.items)
    add: Add = functools.partial(errors.add, index)
    _check_field_names(item, add)
    if text:
        _check_text(item, add)
    strings = _strings(item, add)
    event_id = _event_id(item, add)
    occurred_at = _occurred_at(item, add, now=now, latest=latest)
    tokens = _tokens(item, add)
    if len(tokens) == len(TOKEN_FIELDS) + len(PART_FIELDS) and len(errors.items) == before:
        _check_parts(tokens, add)
    service_tier = _service_tier(item, add)
    cost_usd = _cost_usd(item, add)
    latency_ms = _latency_ms(item, add)
    status = item.get("status", "success")
    if status not in ("success", "error"):
        add("status", 'Must be "success" or "error".')
    cache_hit = item.get("cache_hit", False)
    if cache_hit is None:
        cache_hit = False
    if not isinstance(cache_hit, bool):
        add("cache_hit", "Must be true or false.")
    reservation_id = item.get("reservation_id")
    if reservation_id is not None and (
        not isinstance(reservation_id, str) or len(reservation_id) > 64
    ):
        add("reservation_id", "Must be the reservation_id a check returned.")
    prompt_hash = _prompt_hash(item, add)
    tags = _tags(item, add)
    if len(errors.items) != before:
        return None
    return EventIn(
        event_id=event_id.strip(),
        occurred_at=occurred_at,
        provider=strings["provider"].lower(),
        model=strings["model"],
        operation=strings["operation"],
        end_user=strings["end_user"],
        session_id=strings["session_id"],
        tags=tags,
        cost_usd=cost_usd,
        latency_ms=latency_ms,
        is_error=status == "error",
        cache_hit=cache_hit,
        reservation_id=reservation_id or None,
        prompt_hash=prompt_hash,
        service_tier=service_tier,
        stamped=item.get("occurred_at") is None and item.get("event_id") is not None,
        **tokens,
    )


def _check_field_names(item: dict[str, Any], add: Add) -> None:
    for name in item.keys() - KNOWN_FIELDS:
        add(name, f"Unknown field {name!r}. Known fields: {', '.join(sorted(KNOWN_FIELDS))}.")


def _check_text(item: dict[str, Any], add: Add) -> None:
    """Every string of an event is a name or an id: none may hold a control character or a
    lone surrogate, whatever its field (costmon.core.inputs). One error per field."""
    refused: set[str] = set()
    for where, why in text_problems(item):
        if where not in refused:
            refused.add(where)
            add(where, why)


def _strings(item: dict[str, Any], add: Add) -> dict[str, str]:
    """The names, trimmed ("" when absent); a field sent with the wrong type is left out."""
    strings: dict[str, str] = {}
    for name, (max_len, required) in _STRING_FIELDS.items():
        value = item.get(name)
        if value is None or value == "":
            if required:
                add(name, "This field is required.")
            strings[name] = ""
            continue
        if not isinstance(value, str):
            add(name, "Must be a string.")
            continue
        if len(value) > max_len:  # as sent, as the schema says; surrounding spaces are trimmed
            add(name, f"At most {max_len} characters.")
        value = value.strip()
        if required and not value:
            add(name, "This field is required.")
        strings[name] = value
    return strings


def _event_id(item: dict[str, Any], add: Add) -> Any:
    event_id = item.get("event_id")
    if event_id is None:
        # Without an event id a retried request cannot be recognised; the README says so.
        return str(uuid.uuid4())
    if not isinstance(event_id, str) or not event_id.strip():
        add("event_id", "Must be a non-empty string (a UUID is best).")
    elif len(event_id) > 128:
        add("event_id", "At most 128 characters.")
    return event_id


def _occurred_at(item: dict[str, Any], add: Add, *, now: datetime, latest: datetime) -> datetime:
    raw_time = item.get("occurred_at")
    if raw_time is None:
        return now
    parsed, problem = _parse_time(raw_time, now=now, latest=latest)
    if problem is not None:
        add("occurred_at", problem)
    return parsed if parsed is not None else now


def _tokens(item: dict[str, Any], add: Add) -> dict[str, int]:
    """The counts sent (absent: 0); a count that is not a whole number in range is left out."""
    tokens: dict[str, int] = {}
    for name in (*TOKEN_FIELDS, *PART_FIELDS):
        value = item.get(name, 0)
        if value is None:
            value = 0
        unit = _UNITS.get(name, "tokens")
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            add(name, f"Must be a whole number of {unit}.")
            continue
        if isinstance(value, Decimal) and value != value.to_integral_value():
            add(name, f"Must be a whole number of {unit}.")
            continue
        if value < 0:
            add(name, "Must not be negative.")
        elif value > MAX_TOKENS:
            add(name, f"{value} {unit} is more than {MAX_TOKENS:,} for one call; check the units.")
        else:
            tokens[name] = int(value)  # in range: int() of 1e999999999 would take a while
    return tokens


def _check_parts(tokens: dict[str, int], add: Add) -> None:
    for total, parts in _PART_OF:
        if sum(tokens[p] for p in parts) > tokens[total]:
            given = [p for p in parts if tokens[p]]
            add(
                given[0],
                f"{' + '.join(given)} exceed {total}; {total} counts all of them "
                "(they are parts of it, priced at their own rates).",
            )


def _service_tier(item: dict[str, Any], add: Add) -> Any:
    service_tier = item.get("service_tier")
    if service_tier is None or service_tier == "":
        return "standard"
    if service_tier not in SERVICE_TIERS:
        add("service_tier", f"Must be one of {', '.join(SERVICE_TIERS)}.")
    return service_tier


def _cost_usd(item: dict[str, Any], add: Add) -> Decimal | None:
    raw_cost = item.get("cost_usd")
    if raw_cost is None:
        return None
    try:
        if isinstance(raw_cost, bool):
            raise InvalidOperation
        if isinstance(raw_cost, str) and not DECIMAL_TEXT.fullmatch(raw_cost):
            raise InvalidOperation
        cost_usd = Decimal(raw_cost) if isinstance(raw_cost, str | int | Decimal) else None
        if cost_usd is None or not cost_usd.is_finite():
            raise InvalidOperation
    except (InvalidOperation, ValueError):
        add("cost_usd", 'Must be a decimal number of US dollars, e.g. "0.00135".')
        return None
    if cost_usd < 0 or (isinstance(raw_cost, str) and raw_cost.startswith("-")):
        add("cost_usd", "Must not be negative.")
    elif cost_usd > MAX_COST_USD:
        add("cost_usd", f"More than ${MAX_COST_USD} for one call; check the units.")
    return cost_usd


def _latency_ms(item: dict[str, Any], add: Add) -> int | None:
    raw_latency = item.get("latency_ms")
    if raw_latency is None:
        return None
    if isinstance(raw_latency, bool) or not isinstance(raw_latency, int | Decimal):
        add("latency_ms", "Must be a number of milliseconds.")
    elif raw_latency < 0 or raw_latency > MAX_LATENCY_MS:
        add("latency_ms", f"Must be between 0 and {MAX_LATENCY_MS} milliseconds.")
    else:
        return int(raw_latency)
    return None


def _prompt_hash(item: dict[str, Any], add: Add) -> Any:
    prompt_hash = item.get("prompt_hash")
    if prompt_hash is None:
        return None
    if not isinstance(prompt_hash, str):
        add("prompt_hash", "Must be a string.")
    elif len(prompt_hash) > MAX_PROMPT_HASH:
        add("prompt_hash", f"At most {MAX_PROMPT_HASH} characters.")
    else:
        return prompt_hash.strip() or None
    return prompt_hash


def _tags(item: dict[str, Any], add: Add) -> Any:
    tags = item.get("tags")
    if tags is None:
        return None
    if not isinstance(tags, dict):
        add("tags", "Must be an object of string keys to string values.")
        return None
    if len(tags) > MAX_TAGS:
        add("tags", f"At most {MAX_TAGS} tags per event.")
        return tags
    for key, value in tags.items():
        if not isinstance(value, str) or len(key) > 64 or len(value) > 200 or not key:
            add(
                f"tags.{key}",
                "Tag keys (1-64 chars) and values (up to 200 chars) must be strings.",
            )
            break
    return tags or None
