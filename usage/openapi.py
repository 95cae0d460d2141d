"""The usage API's request and reply schemas, for the OpenAPI document only (the views build
their replies with `usage.api.event_json` and friends; tests/costmon/test_schema.py checks the
two agree)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers

from costmon.core.inputs import USD_TEXT_PATTERN
from costmon.core.openapi import NAME_PATTERN
from usage import ingest

# A name that must hold something besides spaces (the ingest trims them): a character that is
# neither refused nor one of Python's spaces.
_SPACES = r" \u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"
_REFUSED = r"\u0000-\u001f\u007f-\u009f\u2028\u2029"
FILLED_NAME_PATTERN = rf"^[^{_REFUSED}]*[^{_REFUSED}{_SPACES}][^{_REFUSED}]*$"
COST_SOURCES = ["computed", "caller", "unpriced"]


def _name(max_length: int, *, required: bool = False) -> dict[str, Any]:
    text = {
        "type": "string",
        "maxLength": max_length,
        "pattern": FILLED_NAME_PATTERN if required else NAME_PATTERN,
    }
    return text if required else {**text, "type": ["string", "null"]}


def usage_event_schema() -> dict[str, Any]:
    """One usage event as `POST /api/v1/usage/` takes it, from the ingest's own limits."""
    count = {"type": ["integer", "null"], "minimum": 0, "maximum": ingest.MAX_TOKENS}
    properties: dict[str, Any] = {
        name: {**_name(max_length, required=required), "description": ""}
        for name, (max_length, required) in ingest._STRING_FIELDS.items()
    }
    properties.update(
        {
            "event_id": {
                **_name(128),
                "pattern": FILLED_NAME_PATTERN,
                "description": "Your unique id (a UUID): an event sent again is counted once.",
            },
            "occurred_at": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "ISO 8601 (without a zone: UTC); after 2000-01-01 and at most "
                "COSTMON_FUTURE_SKEW_SECONDS ahead. Default: the time the event first arrived "
                "(an event with an event_id sent again without a time gets that time again, so "
                "it is counted once).",
            },
            "tags": {
                "type": ["object", "null"],
                "maxProperties": ingest.MAX_TAGS,
                "propertyNames": {"minLength": 1, "maxLength": 64, "pattern": NAME_PATTERN},
                "additionalProperties": {
                    "type": "string",
                    "maxLength": 200,
                    "pattern": NAME_PATTERN,
                },
            },
            **{name: dict(count) for name in (*ingest.TOKEN_FIELDS, *ingest.PART_FIELDS)},
            "service_tier": {
                "type": ["string", "null"],
                "enum": [*ingest.SERVICE_TIERS, "", None],
                "description": "How the provider served the call: priced at that tier's "
                "catalog row (standard when the model has none).",
            },
            "cost_usd": {
                "type": ["string", "number", "null"],
                "pattern": USD_TEXT_PATTERN,
                "minimum": 0,
                "maximum": float(ingest.MAX_COST_USD),
                "description": "Your own cost in USD, kept exactly (best as a decimal string).",
            },
            "latency_ms": {
                "type": ["number", "null"],
                "minimum": 0,
                "maximum": ingest.MAX_LATENCY_MS,
            },
            "status": {"type": "string", "enum": ["success", "error"]},
            "cache_hit": {"type": ["boolean", "null"]},
            "reservation_id": {
                "type": ["string", "null"],
                "maxLength": 64,
                "pattern": NAME_PATTERN,
            },
            "prompt_hash": {
                "type": ["string", "null"],
                "maxLength": ingest.MAX_PROMPT_HASH,
                "pattern": NAME_PATTERN,
            },
        }
    )
    properties["input_tokens"]["description"] = (
        "All input tokens, cached and cache-write included; cached_input_tokens + "
        "cache_write_tokens + input_audio_tokens + input_image_tokens may not exceed it."
    )
    properties["output_tokens"]["description"] = (
        "All output tokens, reasoning included; output_audio_tokens + output_image_tokens "
        "may not exceed it."
    )
    properties["cache_write_1h_tokens"]["description"] = (
        "The part of cache_write_tokens written with a one-hour lifetime."
    )
    for prop in properties.values():
        if not prop.get("description"):
            prop.pop("description", None)
    # Fields the ingest knows that are not typed here yet are documented as they come.
    for name in ingest.KNOWN_FIELDS - properties.keys():
        properties[name] = {}
    return {
        "type": "object",
        "properties": dict(sorted(properties.items())),
        "required": ["provider", "model"],
        "additionalProperties": False,
    }


def usage_batch_schema() -> dict[str, Any]:
    event = usage_event_schema()
    return {
        "oneOf": [
            event,
            {
                "type": "array",
                "items": event,
                "minItems": 1,
                "maxItems": settings.COSTMON_MAX_BATCH_EVENTS,
            },
        ],
        "description": "One usage event, or a list of them. A batch is stored whole or not "
        "at all: any invalid event answers 400 listing every problem.",
    }


class EventRecorded(serializers.Serializer):
    event_id = serializers.CharField()
    cost_usd = serializers.CharField(help_text="A decimal string, exact.")
    cost_source = serializers.ChoiceField(choices=COST_SOURCES)
    duplicate = serializers.BooleanField(help_text="Already stored: counted once.")


class UsageRecorded(serializers.Serializer):
    events = EventRecorded(many=True)


class UsageEventOut(serializers.Serializer):
    event_id = serializers.CharField()
    occurred_at = serializers.DateTimeField()
    provider = serializers.CharField()
    model = serializers.CharField()
    operation = serializers.CharField()
    end_user = serializers.CharField()
    session_id = serializers.CharField()
    tags = serializers.DictField(child=serializers.CharField())
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cached_input_tokens = serializers.IntegerField()
    cache_write_tokens = serializers.IntegerField()
    reasoning_tokens = serializers.IntegerField()
    cache_write_1h_tokens = serializers.IntegerField()
    input_audio_tokens = serializers.IntegerField()
    output_audio_tokens = serializers.IntegerField()
    input_image_tokens = serializers.IntegerField()
    output_image_tokens = serializers.IntegerField()
    web_search_calls = serializers.IntegerField()
    output_images = serializers.IntegerField()
    service_tier = serializers.ChoiceField(choices=list(ingest.SERVICE_TIERS))
    cost_usd = serializers.CharField()
    cost_source = serializers.ChoiceField(choices=COST_SOURCES)
    latency_ms = serializers.IntegerField(allow_null=True)
    status = serializers.ChoiceField(choices=["success", "error"])
    cache_hit = serializers.BooleanField()
    prompt_hash = serializers.CharField()


class ExplainedPrice(serializers.Serializer):
    id = serializers.IntegerField()
    provider = serializers.CharField()
    model = serializers.CharField()
    service_tier = serializers.ChoiceField(choices=list(ingest.SERVICE_TIERS))
    effective_from = serializers.DateTimeField()
    owner = serializers.ChoiceField(choices=["global", "tenant"])
    source = serializers.CharField()
    source_date = serializers.DateField(allow_null=True)


class CostLine(serializers.Serializer):
    kind = serializers.ChoiceField(
        choices=[
            "input",
            "cached_input",
            "cache_write_5m",
            "cache_write_1h",
            "input_audio",
            "input_image",
            "output",
            "output_audio",
            "output_image",
            "web_search",
            "images",
            "request",
        ]
    )
    quantity = serializers.IntegerField()
    unit = serializers.ChoiceField(choices=["1M tokens", "1K calls", "image", "request"])
    unit_price_usd = serializers.CharField()
    cost_usd = serializers.CharField(help_text="Exact, before the total's one rounding.")


class NameResolution(serializers.Serializer):
    rule = serializers.ChoiceField(
        choices=[
            "tenant_alias",
            "exact",
            "catalog_alias",
            "deployment_name",
            "pattern",
            "unpriced",
        ]
    )
    catalog_name = serializers.CharField(allow_null=True)
    price_id_today = serializers.IntegerField(allow_null=True)


class CostExplained(serializers.Serializer):
    cost_usd = serializers.CharField()
    cost_source = serializers.ChoiceField(choices=COST_SOURCES)
    service_tier = serializers.ChoiceField(choices=list(ingest.SERVICE_TIERS))
    note = serializers.CharField(required=False)
    price = ExplainedPrice(required=False)
    tier_fallback = serializers.BooleanField(required=False)
    rates = serializers.ChoiceField(choices=["standard", "long_context"], required=False)
    long_context_threshold = serializers.IntegerField(allow_null=True, required=False)
    lines = CostLine(many=True, required=False)
    exact_total_usd = serializers.CharField(required=False)
    recomputed_cost_usd = serializers.CharField(required=False)
    matches_stored_cost = serializers.BooleanField(required=False)
    resolution = NameResolution(required=False)


class UsageEventExplained(UsageEventOut):
    cost = CostExplained()


class UsageEventPage(serializers.Serializer):
    results = UsageEventOut(many=True)
    next_cursor = serializers.CharField(
        allow_null=True, help_text="Pass as `cursor` for the next page; null on the last."
    )


class Totals(serializers.Serializer):
    cost_usd = serializers.CharField()
    calls = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cached_input_tokens = serializers.IntegerField()
    cache_write_tokens = serializers.IntegerField()
    reasoning_tokens = serializers.IntegerField()
    cache_hits = serializers.IntegerField()
    cache_hit_rate = serializers.FloatField(allow_null=True)
    prompt_cache_rate = serializers.FloatField(allow_null=True)
    errors = serializers.IntegerField()
    error_rate = serializers.FloatField(allow_null=True)
    unpriced_calls = serializers.IntegerField()
    avg_cost_usd = serializers.CharField(allow_null=True)
    avg_latency_ms = serializers.IntegerField(allow_null=True)


class BreakdownRow(Totals):
    key = serializers.CharField()


class SeriesPoint(serializers.Serializer):
    bucket = serializers.DateTimeField()
    cost_usd = serializers.CharField()
    calls = serializers.IntegerField()


class MetricsReply(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    period = serializers.ChoiceField(choices=["day", "week", "month", "custom"])
    time_zone = serializers.CharField()
    group_by = serializers.CharField(allow_null=True)
    interval = serializers.ChoiceField(choices=["hour", "day"])
    total = Totals()
    breakdown = BreakdownRow(many=True)
    series = SeriesPoint(many=True)


# `GET /api/v1/usage/<event_id>/?occurred_at=`: the event's time, to read it by its key.
EVENT_TIME_PARAMETER = OpenApiParameter(
    "occurred_at",
    OpenApiTypes.DATETIME,
    required=False,
    description="The event's occurred_at as stored (as the event list gives it; "
    "without a zone: UTC). Optional: with it the event is read by its key at once; without it "
    "costmon looks through all of the tenant's events (slower on a large table), except for "
    "events sent without a time, found by the time they were stamped with. Two events may "
    "share an id at different times: occurred_at picks one.",
)
