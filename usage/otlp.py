"""OpenTelemetry ingest: OTLP/HTTP trace exports whose GenAI spans become usage events.

An export is decoded (binary protobuf or OTLP/JSON, optionally gzip- or deflate-compressed),
each span that carries GenAI attributes is mapped to the same event fields `POST /api/v1/usage/`
takes, and the events go through the same validation (`usage.ingest.parse_batch`) and the same
service (`usage_record_batch`). A span that cannot be used is rejected with its reason and
reported in the response's `partial_success`, never failing the rest of the export. Other spans
are ignored. The event id is derived from the trace and span ids, so a re-sent export (the
exporter retries) is never counted twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from django.conf import settings
from django.utils import timezone
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from costmon.core.exceptions import BatchInvalid
from costmon.core.models import Tenant
from usage.ingest import MAX_LATENCY_MS, MAX_TAGS, EventIn, parse_batch
from usage.otlp_wire import ExportOutcome
from usage.services import usage_record_batch

log = structlog.get_logger(__name__)


# OpenTelemetry provider names (`gen_ai.provider.name`, older `gen_ai.system`) -> costmon's.
# Resellers keep their own name (their bill, their breakdown row); the price catalog maps
# bedrock, azure and vertex_ai to the family whose list prices they charge.
PROVIDERS = {
    "aws.bedrock": "bedrock",
    "az.ai.openai": "azure",
    "azure.ai.openai": "azure",
    "az.ai.inference": "azure",
    "azure.ai.inference": "azure",
    "gcp.vertex_ai": "vertex_ai",
    "vertex_ai": "vertex_ai",
    "gcp.gemini": "google",
    "gcp.gen_ai": "google",
    "gemini": "google",
    "mistral_ai": "mistral",
    "x_ai": "xai",
    "ibm.watsonx.ai": "watsonx",
}
PROVIDER_ATTRIBUTES = ("gen_ai.provider.name", "gen_ai.system")
MODEL_ATTRIBUTES = ("gen_ai.response.model", "gen_ai.request.model")
# Event field -> the attributes it is read from, the current semantic-convention name first,
# then older names and the names some instrumentations (OpenLLMetry, OpenLIT) still emit.
TOKEN_ATTRIBUTES = {
    "input_tokens": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
    "output_tokens": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
    "cached_input_tokens": (
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
    ),
    "cache_write_tokens": (
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
    ),
    "reasoning_tokens": (
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.reasoning_tokens",
    ),
}
_ALL_TOKEN_ATTRIBUTES = frozenset(a for names in TOKEN_ATTRIBUTES.values() for a in names)
# Where each event field came from, so a rejection names what the application sent.
_FIELD_SOURCES = {
    "provider": "gen_ai.provider.name",
    "model": "gen_ai.response.model / gen_ai.request.model",
    "operation": "gen_ai.operation.name",
    "occurred_at": "endTimeUnixNano",
    **{name: attrs[0] for name, attrs in TOKEN_ATTRIBUTES.items()},
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# --- mapping spans to usage events ------------------------------------------------------------


class _Rejected(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Candidate:
    position: int
    label: str
    event: dict[str, Any]


def _value(value: AnyValue) -> Any:
    """A scalar attribute value; arrays, maps and bytes are of no use here."""
    kind = value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    return None


def attributes(items: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items}


def _first(names: Sequence[str], *layers: dict[str, Any]) -> tuple[str, Any] | None:
    for layer in layers:
        for name in names:
            value = layer.get(name)
            if value is not None and value != "":
                return name, value
    return None


def _text(names: Sequence[str], *layers: dict[str, Any]) -> str:
    found = _first(names, *layers)
    if found is None or isinstance(found[1], bool):
        return ""
    value = found[1]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    # PostgreSQL text cannot hold NUL; no name worth keeping has one.
    return str(value).replace("\x00", "").strip()


def _tokens(attrs: dict[str, Any], names: Sequence[str]) -> int:
    found = _first(names, attrs)
    if found is None:
        return 0
    name, value = found
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise _Rejected(f"{name} must be a whole number of tokens, got {shown}")


def _is_genai(attrs: dict[str, Any]) -> bool:
    return any(
        attrs.get(name) for name in PROVIDER_ATTRIBUTES
    ) or not _ALL_TOKEN_ATTRIBUTES.isdisjoint(attrs)


def _time(nanos: int) -> datetime:
    return _EPOCH + timedelta(microseconds=nanos // 1000)


@dataclass(frozen=True)
class MappingConfig:
    """The COSTMON_OTLP_* settings, read once per export."""

    end_user: tuple[str, ...]
    session: tuple[str, ...]
    tags: tuple[tuple[str, str], ...]  # (tag, attribute)
    ignored_operations: frozenset[str]

    @classmethod
    def from_settings(cls) -> MappingConfig:
        tags = []
        for entry in settings.COSTMON_OTLP_TAG_ATTRIBUTES[:MAX_TAGS]:
            tag, sep, attribute = entry.partition("=")
            tags.append((tag.strip(), attribute.strip()) if sep else (entry, entry))
        return cls(
            end_user=tuple(settings.COSTMON_OTLP_END_USER_ATTRIBUTES),
            session=tuple(settings.COSTMON_OTLP_SESSION_ATTRIBUTES),
            tags=tuple(tags),
            ignored_operations=frozenset(settings.COSTMON_OTLP_IGNORED_OPERATIONS),
        )


def span_event(
    span: Span, resource: dict[str, Any], config: MappingConfig
) -> dict[str, Any] | None:
    """The usage event (fields as `POST /api/v1/usage/` takes them) for a GenAI span, or None
    for any other span. Raises _Rejected with the reason a GenAI span cannot be used."""
    attrs = attributes(span.attributes)
    if not _is_genai(attrs):
        return None
    operation = _text(("gen_ai.operation.name",), attrs)
    if operation in config.ignored_operations:
        return None
    if len(span.trace_id) != 16 or not any(span.trace_id):
        raise _Rejected("no valid traceId (16 bytes, not all zero)")
    if len(span.span_id) != 8 or not any(span.span_id):
        raise _Rejected("no valid spanId (8 bytes, not all zero)")
    raw_provider = _text(PROVIDER_ATTRIBUTES, attrs)
    if not raw_provider:
        raise _Rejected("no gen_ai.provider.name (or gen_ai.system) attribute")
    provider = PROVIDERS.get(raw_provider.lower(), raw_provider.lower())
    model = _text(MODEL_ATTRIBUTES, attrs)
    if not model:
        raise _Rejected("no gen_ai.response.model or gen_ai.request.model attribute")

    tokens = {name: _tokens(attrs, names) for name, names in TOKEN_ATTRIBUTES.items()}
    cache_parts = tokens["cached_input_tokens"] + tokens["cache_write_tokens"]
    if cache_parts > tokens["input_tokens"]:
        # The semantic conventions count cache reads and writes inside input_tokens, as costmon
        # does; these numbers cannot be that, so this instrumentation reports input as
        # Anthropic's API does (uncached input only): the total is the sum.
        tokens["input_tokens"] += cache_parts

    end, start = span.end_time_unix_nano, span.start_time_unix_nano
    if not (end or start):
        raise _Rejected("no startTimeUnixNano or endTimeUnixNano")
    latency_ms = None
    if start and end >= start:
        latency_ms = (end - start + 500_000) // 1_000_000
        if latency_ms > MAX_LATENCY_MS:
            latency_ms = None  # a span left open for a day measures no call
    is_error = span.status.code == Status.STATUS_CODE_ERROR or bool(attrs.get("error.type"))

    tags = {}
    for tag, attribute in config.tags:
        if value := _text((attribute,), attrs, resource):
            tags[tag] = value
    return {
        "event_id": f"otel-{span.trace_id.hex()}-{span.span_id.hex()}",
        "occurred_at": _time(end or start).isoformat(),
        "provider": provider,
        "model": model,
        "operation": operation,
        "end_user": _text(config.end_user, attrs, resource),
        "session_id": _text(config.session, attrs, resource),
        "tags": tags or None,
        "latency_ms": latency_ms,
        "status": "error" if is_error else "success",
        **tokens,
    }


def _span_label(span: Span) -> str:
    name = span.name if len(span.name) <= 60 else span.name[:57] + "..."
    return f"span {span.span_id.hex() or '?'} ({name!r})"


def export_candidates(
    export: ExportTraceServiceRequest, outcome: ExportOutcome
) -> list[_Candidate]:
    """The events of an export's GenAI spans; rejections and ignored spans go to `outcome`."""
    config = MappingConfig.from_settings()
    candidates = []
    for resource_spans in export.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                position = outcome.spans
                outcome.spans += 1
                try:
                    event = span_event(span, resource, config)
                except _Rejected as exc:
                    outcome.reject(position, _span_label(span), str(exc))
                    continue
                if event is None:
                    outcome.ignored += 1
                else:
                    candidates.append(_Candidate(position, _span_label(span), event))
    return candidates


def _validated(
    candidates: list[_Candidate], outcome: ExportOutcome, *, now: datetime
) -> list[EventIn]:
    """Events that pass the ingest API's own rules; the others are rejected with its message."""
    while candidates:
        try:
            return parse_batch([c.event for c in candidates], now=now)
        except BatchInvalid as exc:
            bad: dict[int, str] = {}
            for error in exc.errors:
                name = error["field"] or ""
                source = _FIELD_SOURCES.get(name, name)
                bad.setdefault(error["index"], f"{source}: {error['message']}")
            for index, reason in bad.items():
                outcome.reject(candidates[index].position, candidates[index].label, reason)
            candidates = [c for i, c in enumerate(candidates) if i not in bad]
    return []


def otlp_traces_record(
    *, tenant: Tenant, export: ExportTraceServiceRequest, api_key_id: int | None = None
) -> ExportOutcome:
    """Record the GenAI spans of one OTLP export as usage events of `tenant`.

    Events are validated and stored in batches of COSTMON_MAX_BATCH_EVENTS, each its own
    transaction: if a later batch fails, re-sending the export stores only what is missing.
    """
    outcome = ExportOutcome()
    candidates = export_candidates(export, outcome)
    now = timezone.now()
    size = settings.COSTMON_MAX_BATCH_EVENTS
    for start in range(0, len(candidates), size):
        events = _validated(candidates[start : start + size], outcome, now=now)
        if not events:
            continue
        results = usage_record_batch(tenant=tenant, events=events, api_key_id=api_key_id)
        for result in results:
            if result.duplicate:
                outcome.duplicates += 1
            else:
                outcome.recorded += 1
    log.info(
        "otlp_export_recorded",
        tenant=tenant.slug,
        spans=outcome.spans,
        recorded=outcome.recorded,
        duplicates=outcome.duplicates,
        ignored=outcome.ignored,
        rejected=outcome.rejected,
    )
    return outcome
