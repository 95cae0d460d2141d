"""From a validated event to what is stored: its price and its row of the events table."""

from __future__ import annotations

from typing import Any

from costmon.core.money import usd_to_nanos
from usage.ingest import EventIn
from usage.models import CostSource, Dimension, ServiceTier
from usage.price_lookup import Catalog
from usage.pricing import cost_nanos_of

Kind = Dimension.Kind
# The kinds as plain ints: equal keys of the same hash, looked up three times faster than the
# enum's members (five times per event).
_PROVIDER, _MODEL, _OPERATION, _END_USER, _SESSION = (
    int(k) for k in (Kind.PROVIDER, Kind.MODEL, Kind.OPERATION, Kind.END_USER, Kind.SESSION)
)

# (column, PostgreSQL type) of the events table as ingest writes it; short type names keep the
# insert statement under psycopg's 4 kB parse cache (see `usage.storage.insert_statement`).
EVENT_COLUMN_TYPES = (
    ("tenant_id", "int8"),
    ("event_id", "text"),
    ("occurred_at", "timestamptz"),
    ("provider_id", "int4"),
    ("model_id", "int4"),
    ("operation_id", "int4"),
    ("end_user_id", "int4"),
    ("session_id", "int4"),
    ("api_key_id", "int8"),
    ("tag_set_id", "int4"),
    ("input_tokens", "int4"),
    ("output_tokens", "int4"),
    ("cached_input_tokens", "int4"),
    ("cache_write_tokens", "int4"),
    ("reasoning_tokens", "int4"),
    ("cache_write_1h_tokens", "int4"),
    ("input_audio_tokens", "int4"),
    ("output_audio_tokens", "int4"),
    ("input_image_tokens", "int4"),
    ("output_image_tokens", "int4"),
    ("web_search_calls", "int4"),
    ("output_images", "int4"),
    ("service_tier", "int2"),
    ("cost_nanos", "int8"),
    ("cost_source", "int2"),
    ("price_id", "int4"),
    ("latency_ms", "int4"),
    ("is_error", "bool"),
    ("cache_hit", "bool"),
    ("prompt_hash", "text"),
)
EVENT_COLUMNS = tuple(c for c, _ in EVENT_COLUMN_TYPES)
EVENT_TYPES = tuple(t for _, t in EVENT_COLUMN_TYPES)
# The columns holding dictionary ids (`usage.dimensions`), as `event_row` fills them.
DIMENSION_COLUMNS = ("provider_id", "model_id", "operation_id", "end_user_id", "session_id")

_CALLER, _COMPUTED, _UNPRICED = (
    int(s) for s in (CostSource.CALLER, CostSource.COMPUTED, CostSource.UNPRICED)
)

# (cost in nano-dollars, cost source, the catalog row used)
Priced = tuple[int, int, int | None]


def price_event(catalog: Catalog, event: EventIn) -> Priced:
    """(cost in nano-dollars, cost source, catalog row used) for one validated event."""
    if event.cost_usd is not None:
        return usd_to_nanos(event.cost_usd), _CALLER, None
    if event.cache_hit:
        # Served from the application's own cache: no API call, nothing to pay.
        return 0, _COMPUTED, None
    found = catalog.resolve(event.provider, event.model, event.occurred_at, event.service_tier)
    if found is None:
        return 0, _UNPRICED, None
    return cost_nanos_of(found.price, event), _COMPUTED, found.price.id


def event_row(
    *,
    tenant_id: int,
    event: EventIn,
    dims: dict[tuple[int, str], int],
    priced: Priced,
    api_key_id: int,
) -> dict[str, Any]:
    """The event's row of the events table, by column (`EVENT_COLUMNS`), and its `tags`."""
    e = event
    cost, source, price_id = priced
    return {
        "tenant_id": tenant_id,
        "event_id": e.event_id,
        "occurred_at": e.occurred_at,
        "provider_id": dims[(_PROVIDER, e.provider)],
        "model_id": dims[(_MODEL, e.model)],
        "operation_id": dims[(_OPERATION, e.operation)],
        "end_user_id": dims[(_END_USER, e.end_user)],
        "session_id": dims[(_SESSION, e.session_id)] if e.session_id else None,
        "api_key_id": api_key_id,
        # The tags themselves (the tag rollups and budgets read them); `usage.storage` fills
        # `tag_set_id` from them (`usage.tagsets`) before it stores the row.
        "tags": e.tags,
        "tag_set_id": None,
        "input_tokens": e.input_tokens,
        "output_tokens": e.output_tokens,
        # Counts often zero, and the rarer parts, as NULL when zero: a NULL costs the row
        # nothing (`usage.models.ZeroAsNullIntegerField` reads them back as 0).
        "cached_input_tokens": e.cached_input_tokens or None,
        "cache_write_tokens": e.cache_write_tokens or None,
        "reasoning_tokens": e.reasoning_tokens or None,
        "cache_write_1h_tokens": e.cache_write_1h_tokens or None,
        "input_audio_tokens": e.input_audio_tokens or None,
        "output_audio_tokens": e.output_audio_tokens or None,
        "input_image_tokens": e.input_image_tokens or None,
        "output_image_tokens": e.output_image_tokens or None,
        "web_search_calls": e.web_search_calls or None,
        "output_images": e.output_images or None,
        "service_tier": ServiceTier.code(e.service_tier),
        "cost_nanos": cost,
        "cost_source": source,
        "price_id": price_id,
        "latency_ms": e.latency_ms,
        "is_error": e.is_error,
        "cache_hit": e.cache_hit,
        "prompt_hash": e.prompt_hash,
    }
