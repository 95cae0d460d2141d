"""Valid usage batches decoded and checked in one typed pass (msgspec); anything else: None.

`usage.ingest.parse_batch` checks each field by hand so that every error names its event, its
field and what to send instead; on a 1,000-event batch that takes tens of milliseconds. Most
batches are valid: `parse_valid_batch` decodes the body straight into typed structs (types,
ranges, lengths, unknown fields checked by msgspec), then does in Python only what a type cannot
say (trimming, required after trimming, parts within their totals, the time window). It gives
exactly the `EventIn` list `parse_batch` gives, or None at the first doubt, and then the caller
runs `parse_batch`, which words the errors. It never accepts what `parse_batch` refuses.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from django.conf import settings
from django.utils import timezone

from usage.ingest import (
    EARLIEST,
    MAX_PROMPT_HASH,
    MAX_TAGS,
    MAX_TOKENS,
    EventIn,
    _cost_usd,
)

_fromisoformat = datetime.fromisoformat

Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)] | None
TagKey = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
TagValue = Annotated[str, msgspec.Meta(max_length=200)]


class _Event(msgspec.Struct, forbid_unknown_fields=True):
    """One event as sent; the limits are usage.ingest's."""

    provider: Annotated[str, msgspec.Meta(max_length=50)]
    model: Annotated[str, msgspec.Meta(max_length=200)]
    event_id: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    occurred_at: str | None = None
    operation: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    end_user: Annotated[str, msgspec.Meta(max_length=255)] | None = None
    session_id: Annotated[str, msgspec.Meta(max_length=255)] | None = None
    tags: Annotated[dict[TagKey, TagValue], msgspec.Meta(max_length=MAX_TAGS)] | None = None
    input_tokens: Count = None
    output_tokens: Count = None
    cached_input_tokens: Count = None
    cache_write_tokens: Count = None
    reasoning_tokens: Count = None
    cache_write_1h_tokens: Count = None
    input_audio_tokens: Count = None
    output_audio_tokens: Count = None
    input_image_tokens: Count = None
    output_image_tokens: Count = None
    web_search_calls: Count = None
    output_images: Count = None
    # Strings and whole numbers only: a JSON fraction takes parse_batch's exact-decimal path.
    cost_usd: str | int | None = None
    latency_ms: Annotated[int, msgspec.Meta(ge=0, le=24 * 3600 * 1000)] | None = None
    status: Literal["success", "error"] = "success"
    cache_hit: bool | None = None
    reservation_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    prompt_hash: Annotated[str, msgspec.Meta(max_length=MAX_PROMPT_HASH)] | None = None
    service_tier: Literal["", "standard", "batch", "flex", "priority"] | None = None


_DECODER = msgspec.json.Decoder(list[_Event] | _Event)


class _Doubt(Exception):
    """Something parse_batch may word differently: let it."""


def _refuse(field: str | None, message: str) -> None:
    raise _Doubt


def parse_valid_batch(body: bytes, *, now: datetime | None = None) -> list[EventIn] | None:
    """The events of a valid batch as `parse_batch` gives them; None when in any doubt.

    The caller has made sure the body holds no control character or lone surrogate
    (`costmon.core.inputs.may_hold_refused` is False)."""
    try:
        decoded = _DECODER.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    items = decoded if isinstance(decoded, list) else [decoded]
    if not items or len(items) > settings.COSTMON_MAX_BATCH_EVENTS:
        return None
    now = now or timezone.now()
    latest = now + timedelta(seconds=settings.COSTMON_FUTURE_SKEW_SECONDS)
    try:
        return [_event(item, now=now, latest=latest) for item in items]
    except _Doubt:
        return None


def _event(e: _Event, *, now: datetime, latest: datetime) -> EventIn:
    provider = e.provider.strip()
    model = e.model.strip()
    if not provider or not model:
        raise _Doubt
    if e.event_id is None:
        event_id = str(uuid.uuid4())
    else:
        event_id = e.event_id.strip()
        if not event_id:
            raise _Doubt
    occurred_at = now
    if e.occurred_at is not None:
        # What `_parse_time` does when the time is valid, without its wrappers: Django's
        # parse_datetime tries datetime.fromisoformat first and returns what it gives.
        try:
            occurred_at = _fromisoformat(e.occurred_at)
        except ValueError:
            raise _Doubt from None
        if occurred_at.tzinfo is None:
            occurred_at = occurred_at.replace(tzinfo=UTC)  # documented: naive times are UTC
        if occurred_at > latest or occurred_at < EARLIEST:
            raise _Doubt
    input_tokens, output_tokens = e.input_tokens or 0, e.output_tokens or 0
    cached, writes, writes_1h = (
        e.cached_input_tokens or 0,
        e.cache_write_tokens or 0,
        e.cache_write_1h_tokens or 0,
    )
    input_audio, input_image = e.input_audio_tokens or 0, e.input_image_tokens or 0
    output_audio, output_image = e.output_audio_tokens or 0, e.output_image_tokens or 0
    # The parts within their totals (usage.ingest._PART_OF, which words the errors).
    if (
        cached + writes + input_audio + input_image > input_tokens
        or output_audio + output_image > output_tokens
        or writes_1h > writes
    ):
        raise _Doubt
    cost_usd: Decimal | None = None
    if e.cost_usd is not None:
        cost_usd = _cost_usd({"cost_usd": e.cost_usd}, _refuse)
    return EventIn(
        event_id=event_id,
        occurred_at=occurred_at,
        provider=provider.lower(),
        model=model,
        operation=(e.operation or "").strip(),
        end_user=(e.end_user or "").strip(),
        session_id=(e.session_id or "").strip(),
        tags=e.tags or None,
        cost_usd=cost_usd,
        latency_ms=e.latency_ms,
        is_error=e.status == "error",
        cache_hit=bool(e.cache_hit),
        reservation_id=e.reservation_id or None,
        prompt_hash=(e.prompt_hash.strip() or None) if e.prompt_hash is not None else None,
        service_tier=e.service_tier or "standard",
        stamped=e.occurred_at is None and e.event_id is not None,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached,
        cache_write_tokens=writes,
        reasoning_tokens=e.reasoning_tokens or 0,
        cache_write_1h_tokens=writes_1h,
        input_audio_tokens=input_audio,
        output_audio_tokens=output_audio,
        input_image_tokens=input_image,
        output_image_tokens=output_image,
        web_search_calls=e.web_search_calls or 0,
        output_images=e.output_images or 0,
    )
