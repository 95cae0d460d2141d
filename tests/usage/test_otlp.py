"""OpenTelemetry ingest: `POST /v1/traces` turns GenAI spans into usage events.

The first tests drive the real OpenTelemetry SDK and its OTLP/HTTP exporter against a live
costmon; the rest post OTLP/JSON and protobuf bodies through the test client.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.db.models import Sum
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from costmon.core.services import api_key_create
from usage.models import HourlyRollup, UsageEvent

pytestmark = [pytest.mark.usefixtures("prices", "unscoped")]

TRACE = "5b8efff798038103d269b633813fc60c"
# 2026-11-21T11:00:00Z and two seconds later, in Unix nanoseconds.
START_NS = 1_795_258_800_000_000_000
END_NS = START_NS + 2_345_000_000
NOW = "2026-11-21T12:00:00Z"


def usage(client: Any) -> list[dict[str, Any]]:
    response = client.get("/api/v1/usage/")
    assert response.status_code == 200, response.content
    return sorted(response.json()["results"], key=lambda e: e["event_id"])


def total_nanos(tenant: Any) -> int:
    return UsageEvent.objects.for_tenant(tenant).aggregate(c=Sum("cost_nanos"))["c"] or 0


# --- the real SDK and exporter against a live server ------------------------------------------


class RecordingExporter(SpanExporter):
    """The real OTLP exporter, keeping what it exported and how each export went."""

    def __init__(self, exporter: OTLPSpanExporter) -> None:
        self.exporter = exporter
        self.spans: list[ReadableSpan] = []
        self.results: list[SpanExportResult] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        result = self.exporter.export(spans)
        self.results.append(result)
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()


def sdk_tracer(
    url: str, secret: str, compression: Compression = Compression.NoCompression
) -> tuple[Any, TracerProvider, RecordingExporter]:
    exporter = RecordingExporter(
        OTLPSpanExporter(
            endpoint=f"{url}/v1/traces",
            headers={"Authorization": f"Bearer {secret}"},
            compression=compression,
            timeout=10,
        )
    )
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": "support-bot", "deployment.environment.name": "prod"}
        )
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("tests.otlp"), provider, exporter


def event_id_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"otel-{context.trace_id:032x}-{context.span_id:016x}"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_otel_sdk_exporter_reports_genai_spans_at_exact_cost(live_server, acme, read_client):
    secret = api_key_create(tenant=acme, scopes="ingest").secret
    tracer, provider, exporter = sdk_tracer(live_server.url, secret)

    agent_attributes = {
        # An agent span repeats its model calls' usage: counting it would count twice.
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-haiku-4-5",
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 300,
    }
    chat_attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-haiku-4-5",
        "gen_ai.response.model": "claude-haiku-4-5-20251001",
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.cache_read.input_tokens": 600,
        "gen_ai.usage.cache_creation.input_tokens": 200,
        "gen_ai.usage.output_tokens": 300,
        "gen_ai.conversation.id": "conv-42",
        "user.id": "user-7",
    }
    with tracer.start_as_current_span("POST /answer", kind=SpanKind.SERVER):
        with (
            tracer.start_as_current_span("invoke_agent support", attributes=agent_attributes),
            tracer.start_as_current_span(
                "chat claude-haiku-4-5", kind=SpanKind.CLIENT, attributes=chat_attributes
            ),
        ):
            pass
        with tracer.start_as_current_span(
            "chat gpt-4o-mini",
            kind=SpanKind.CLIENT,
            attributes={
                # The older attribute names.
                "gen_ai.system": "openai",
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                "gen_ai.usage.prompt_tokens": 1500,
                "gen_ai.usage.completion_tokens": 500,
                "gen_ai.usage.cache_read.input_tokens": 1000,
                "enduser.id": "user-8",
            },
        ) as failed:
            failed.set_status(StatusCode.ERROR, "rate limited")
        with tracer.start_as_current_span(
            "embeddings text-embedding-3-large",
            attributes={
                "gen_ai.operation.name": "embeddings",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "text-embedding-3-large",
                "gen_ai.usage.input_tokens": 1000,
            },
        ):
            pass

    assert exporter.results and all(r == SpanExportResult.SUCCESS for r in exporter.results)
    spans = {s.name: s for s in exporter.spans}
    assert len(spans) == 5
    events = {e["event_id"]: e for e in usage(read_client)}
    assert set(events) == {
        event_id_of(spans["chat claude-haiku-4-5"]),
        event_id_of(spans["chat gpt-4o-mini"]),
        event_id_of(spans["embeddings text-embedding-3-large"]),
    }
    haiku = events[event_id_of(spans["chat claude-haiku-4-5"])]
    # 200 plain x $1 + 600 cached x $0.10 + 200 cache-write x $1.25 + 300 out x $5, per Mtok.
    assert haiku["cost_usd"] == "0.00201"
    assert haiku["cost_source"] == "computed"
    assert haiku["provider"] == "anthropic"
    assert haiku["model"] == "claude-haiku-4-5-20251001"
    assert haiku["operation"] == "chat"
    assert (haiku["end_user"], haiku["session_id"]) == ("user-7", "conv-42")
    assert haiku["tags"] == {"service": "support-bot", "environment": "prod"}
    assert (haiku["input_tokens"], haiku["cached_input_tokens"], haiku["cache_write_tokens"]) == (
        1000,
        600,
        200,
    )
    assert haiku["status"] == "success"
    assert haiku["latency_ms"] is not None and haiku["latency_ms"] >= 0

    mini = events[event_id_of(spans["chat gpt-4o-mini"])]
    # 500 plain x $0.15 + 1000 cached x $0.075 + 500 out x $0.60, per Mtok.
    assert mini["cost_usd"] == "0.00045"
    assert (mini["provider"], mini["end_user"], mini["status"]) == ("openai", "user-8", "error")
    assert (mini["input_tokens"], mini["output_tokens"]) == (1500, 500)
    embed = events[event_id_of(spans["embeddings text-embedding-3-large"])]
    assert (embed["cost_usd"], embed["operation"]) == ("0.00013", "embeddings")
    assert total_nanos(acme) == 2_590_000

    # The exporter retries what it is unsure of: the same spans again count once.
    assert exporter.export(list(spans.values())) == SpanExportResult.SUCCESS
    assert UsageEvent.objects.for_tenant(acme).count() == 3
    assert total_nanos(acme) == 2_590_000
    assert HourlyRollup.objects.for_tenant(acme).aggregate(c=Sum("calls"))["c"] == 3
    provider.shutdown()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_otel_sdk_exporter_with_gzip_is_recorded(live_server, acme, read_client):
    secret = api_key_create(tenant=acme, scopes="ingest").secret
    tracer, provider, exporter = sdk_tracer(live_server.url, secret, Compression.Gzip)
    with tracer.start_as_current_span(
        "chat",
        attributes={
            "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": "claude-haiku-4-5",
            "gen_ai.usage.input_tokens": 450,
            "gen_ai.usage.output_tokens": 180,
        },
    ):
        pass
    assert exporter.results == [SpanExportResult.SUCCESS]
    assert [e["cost_usd"] for e in usage(read_client)] == ["0.00135"]
    provider.shutdown()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_otel_sdk_exporter_with_an_unknown_key_stores_nothing(live_server, acme):
    tracer, provider, exporter = sdk_tracer(live_server.url, "cm_nope_not-a-real-key")
    with tracer.start_as_current_span(
        "chat",
        attributes={
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": 10,
        },
    ):
        pass
    assert exporter.results == [SpanExportResult.FAILURE]
    assert UsageEvent.objects.for_tenant(acme).count() == 0
    provider.shutdown()


# --- OTLP/JSON and protobuf bodies through the test client -------------------------------------


@pytest.fixture(autouse=True)
def _frozen_clock(request):
    if request.node.get_closest_marker("slow"):
        yield  # the SDK stamps spans with the real clock
        return
    with time_machine.travel(NOW, tick=False):
        yield


def json_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64 as a string, as OTLP/JSON exporters write it
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": value}


def json_attrs(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": json_value(v)} for k, v in attrs.items()]


def json_span(span_id: str, attrs: dict[str, Any], **fields: Any) -> dict[str, Any]:
    span = {
        "traceId": TRACE,
        "spanId": span_id,
        "name": fields.pop("name", "chat"),
        "kind": 3,
        "startTimeUnixNano": str(START_NS),
        "endTimeUnixNano": str(END_NS),
        "attributes": json_attrs(attrs),
    }
    span.update(fields)
    return span


def json_export(*spans: dict[str, Any], resource: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": json_attrs(resource or {"service.name": "billing"})},
                "scopeSpans": [{"scope": {"name": "tests"}, "spans": list(spans)}],
            }
        ]
    }


def haiku(**overrides: Any) -> dict[str, Any]:
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-haiku-4-5",
        "gen_ai.usage.input_tokens": 450,
        "gen_ai.usage.output_tokens": 180,
    }
    attrs.update(overrides)
    return {k: v for k, v in attrs.items() if v is not None}


def post_json(client: Any, body: Any, **headers: Any) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/v1/traces", data=data, content_type="application/json", **headers)


def pb_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=value)


def pb_export(*spans: tuple[str, dict[str, Any]]) -> bytes:
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                scope_spans=[
                    ScopeSpans(
                        spans=[
                            Span(
                                trace_id=bytes.fromhex(TRACE),
                                span_id=bytes.fromhex(span_id),
                                name="chat",
                                start_time_unix_nano=START_NS,
                                end_time_unix_nano=END_NS,
                                attributes=[
                                    KeyValue(key=k, value=pb_value(v)) for k, v in attrs.items()
                                ],
                            )
                            for span_id, attrs in spans
                        ]
                    )
                ]
            )
        ]
    )
    return request.SerializeToString()


def post_pb(client: Any, body: bytes, **headers: Any) -> Any:
    return client.post("/v1/traces", data=body, content_type="application/x-protobuf", **headers)


def test_an_otlp_json_export_is_recorded_at_exact_cost(ingest_client, read_client, acme):
    response = post_json(
        ingest_client,
        json_export(
            json_span("00f067aa0ba902b7", haiku(**{"session.id": "s-1"})),
            json_span(
                "00F067AA0BA902B8",  # hex is case-insensitive
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.usage.input_tokens": 1500,
                    "gen_ai.usage.output_tokens": 500,
                    # Some instrumentations record counts as doubles.
                    "gen_ai.usage.reasoning.output_tokens": 200.0,
                },
                status={"code": 1},
            ),
            json_span("00f067aa0ba902b9", {"http.request.method": "GET"}, name="GET /"),
            resource={"service.name": "billing", "enduser.id": "acct-9"},
        ),
    )
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json() == {}
    events = usage(read_client)
    assert [e["event_id"] for e in events] == [
        f"otel-{TRACE}-00f067aa0ba902b7",
        f"otel-{TRACE}-00f067aa0ba902b8",
    ]
    first, second = events
    assert first["cost_usd"] == "0.00135"  # 450 x $1 + 180 x $5 per Mtok
    assert second["cost_usd"] == "0.000525"  # 1500 x $0.15 + 500 x $0.60 per Mtok
    assert second["reasoning_tokens"] == 200
    assert first["occurred_at"] == "2026-11-21T11:00:02.345000Z"
    assert first["latency_ms"] == 2345
    assert (first["end_user"], first["session_id"]) == ("acct-9", "s-1")
    assert first["tags"] == {"service": "billing"}
    assert second["session_id"] == ""


def test_the_same_span_as_json_then_protobuf_counts_once(ingest_client, acme):
    assert (
        post_json(ingest_client, json_export(json_span("00f067aa0ba902b7", haiku()))).status_code
        == 200
    )
    response = post_pb(ingest_client, pb_export(("00f067aa0ba902b7", haiku())))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-protobuf"
    assert not ExportTraceServiceResponse.FromString(response.content).HasField("partial_success")
    assert UsageEvent.objects.for_tenant(acme).count() == 1
    assert total_nanos(acme) == 1_350_000


def test_a_protobuf_export_is_recorded(ingest_client, read_client, acme):
    response = post_pb(
        ingest_client,
        pb_export(
            ("0000000000000001", haiku()),
            (
                "0000000000000002",
                {
                    "gen_ai.provider.name": "openai",
                    "gen_ai.operation.name": "embeddings",
                    "gen_ai.request.model": "text-embedding-3-large",
                    "gen_ai.usage.input_tokens": 1000,
                },
            ),
        ),
    )
    assert response.status_code == 200, response.content
    assert response.content == b""  # an empty ExportTraceServiceResponse: full success
    assert [e["cost_usd"] for e in usage(read_client)] == ["0.00135", "0.00013"]


@pytest.mark.parametrize(
    ("system", "model", "provider"),
    [
        ("aws.bedrock", "us.anthropic.claude-haiku-4-5-v1:0", "bedrock"),
        ("gcp.vertex_ai", "claude-haiku-4-5@20251001", "vertex_ai"),
        ("az.ai.openai", "gpt-4o-mini", "azure"),
        ("azure.ai.openai", "gpt-4o-mini", "azure"),
    ],
)
def test_cloud_provider_names_are_normalised_and_priced(
    ingest_client, read_client, system, model, provider
):
    attrs = haiku(**{"gen_ai.provider.name": system, "gen_ai.request.model": model})
    assert (
        post_json(ingest_client, json_export(json_span("00f067aa0ba902b7", attrs))).status_code
        == 200
    )
    (event,) = usage(read_client)
    assert event["provider"] == provider
    assert event["cost_source"] == "computed"
    expected = "0.00135" if "claude" in model else "0.0001755"  # 450 x 0.15 + 180 x 0.60
    assert event["cost_usd"] == expected


def test_cache_counts_larger_than_input_are_added_to_it(ingest_client, read_client):
    # Anthropic's own usage counts input without the cache: 100 + 600 read + 200 written.
    attrs = haiku(
        **{
            "gen_ai.usage.input_tokens": 100,
            "gen_ai.usage.cache_read.input_tokens": 600,
            "gen_ai.usage.cache_creation.input_tokens": 200,
            "gen_ai.usage.output_tokens": 300,
        }
    )
    assert (
        post_json(ingest_client, json_export(json_span("00f067aa0ba902b7", attrs))).status_code
        == 200
    )
    (event,) = usage(read_client)
    assert event["input_tokens"] == 900
    # 100 x $1 + 600 x $0.10 + 200 x $1.25 + 300 x $5 per Mtok.
    assert event["cost_usd"] == "0.00191"


def test_error_type_marks_the_event_as_an_error(ingest_client, read_client):
    body = json_export(
        json_span("0000000000000001", haiku(**{"error.type": "timeout"})),
        json_span("0000000000000002", haiku(), status={"code": 2, "message": "boom"}),
        json_span("0000000000000003", haiku(), status={"code": 1}),
    )
    assert post_json(ingest_client, body).status_code == 200
    assert [e["status"] for e in usage(read_client)] == ["error", "error", "success"]


def test_end_user_session_and_tag_attributes_are_configurable(ingest_client, read_client, settings):
    settings.COSTMON_OTLP_END_USER_ATTRIBUTES = ["app.customer"]
    settings.COSTMON_OTLP_SESSION_ATTRIBUTES = ["app.thread"]
    settings.COSTMON_OTLP_TAG_ATTRIBUTES = ["team=app.team", "app.feature"]
    attrs = haiku(
        **{"app.customer": "cust-1", "user.id": "ignored", "app.thread": 77, "app.feature": "faq"}
    )
    body = json_export(
        json_span("00f067aa0ba902b7", attrs),
        resource={"service.name": "billing", "app.team": "search"},
    )
    assert post_json(ingest_client, body).status_code == 200
    (event,) = usage(read_client)
    assert (event["end_user"], event["session_id"]) == ("cust-1", "77")
    assert event["tags"] == {"team": "search", "app.feature": "faq"}


def test_unusable_genai_spans_are_rejected_with_reasons_and_the_rest_recorded(
    ingest_client, read_client
):
    body = json_export(
        json_span("0000000000000001", haiku()),
        json_span("0000000000000002", haiku(**{"gen_ai.request.model": None})),
        json_span("0000000000000003", haiku(**{"gen_ai.usage.input_tokens": "lots"})),
        json_span("0000000000000004", haiku(), endTimeUnixNano=str(END_NS + 10 * 86_400 * 10**9)),
        json_span("0000000000000005", haiku(**{"gen_ai.usage.output_tokens": -5})),
        json_span("0000000000000006", haiku(), spanId=""),
        json_span("0000000000000007", {"gen_ai.usage.input_tokens": 5}),
    )
    response = post_json(ingest_client, body)
    assert response.status_code == 200, response.content
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "6"
    message = partial["errorMessage"]
    assert message.startswith("6 GenAI span(s) rejected")
    assert (
        "span 0000000000000002 ('chat'): no gen_ai.response.model or gen_ai.request.model"
        in message
    )
    assert "gen_ai.usage.input_tokens must be a whole number of tokens, got 'lots'" in message
    assert "endTimeUnixNano:" in message and "is in the future" in message
    assert "gen_ai.usage.output_tokens: Must not be negative;" in message
    assert "and 1 more" in message
    assert [e["event_id"] for e in usage(read_client)] == [f"otel-{TRACE}-0000000000000001"]


def test_a_protobuf_partial_success_is_a_protobuf_response(ingest_client):
    response = post_pb(
        ingest_client,
        pb_export(("0000000000000001", haiku(**{"gen_ai.provider.name": None}))),
    )
    assert response.status_code == 200
    reply = ExportTraceServiceResponse.FromString(response.content)
    assert reply.partial_success.rejected_spans == 1
    assert "no gen_ai.provider.name" in reply.partial_success.error_message


def test_non_genai_spans_and_agent_spans_are_ignored(ingest_client, acme):
    body = json_export(
        json_span("0000000000000001", {"http.route": "/answer"}),
        json_span("0000000000000002", {}),
        json_span("0000000000000003", haiku(**{"gen_ai.operation.name": "execute_tool"})),
    )
    response = post_json(ingest_client, body)
    assert (response.status_code, response.json()) == (200, {})
    assert post_json(ingest_client, {}).json() == {}  # an empty export is a success
    assert UsageEvent.objects.for_tenant(acme).count() == 0


def test_agent_spans_are_counted_when_not_ignored(ingest_client, acme, settings):
    settings.COSTMON_OTLP_IGNORED_OPERATIONS = []
    body = json_export(
        json_span("0000000000000001", haiku(**{"gen_ai.operation.name": "invoke_agent"}))
    )
    assert post_json(ingest_client, body).status_code == 200
    assert total_nanos(acme) == 1_350_000


def test_a_large_export_is_stored_in_batches(ingest_client, acme, settings):
    settings.COSTMON_MAX_BATCH_EVENTS = 2
    spans = [json_span(f"{i:016x}", haiku()) for i in range(1, 6)]
    spans.append(json_span("00000000000000ff", haiku(**{"gen_ai.request.model": None})))
    response = post_json(ingest_client, json_export(*spans))
    assert response.json()["partialSuccess"]["rejectedSpans"] == "1"
    assert UsageEvent.objects.for_tenant(acme).count() == 5
    assert total_nanos(acme) == 5 * 1_350_000


def test_a_gzip_body_is_accepted(ingest_client, acme):
    body = gzip.compress(json.dumps(json_export(json_span("0000000000000001", haiku()))).encode())
    response = post_json(ingest_client, body, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 200, response.content
    body = zlib.compress(pb_export(("0000000000000002", haiku())))
    assert post_pb(ingest_client, body, HTTP_CONTENT_ENCODING="deflate").status_code == 200
    assert total_nanos(acme) == 2 * 1_350_000


def test_a_corrupt_gzip_body_is_a_400(ingest_client):
    response = post_json(ingest_client, b"\x1f\x8b not gzip at all", HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 400
    assert "not valid gzip data" in response.json()["message"]
    truncated = gzip.compress(b'{"resourceSpans": []}')[:-6]
    assert post_json(ingest_client, truncated, HTTP_CONTENT_ENCODING="gzip").status_code == 400


def test_a_body_over_the_limit_is_a_413_also_once_decompressed(ingest_client, settings, acme):
    settings.COSTMON_MAX_BODY_BYTES = 2048
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    spans = [json_span(f"{i:016x}", haiku()) for i in range(1, 40)]
    raw = json.dumps(json_export(*spans)).encode()
    assert len(raw) > 2048
    assert post_json(ingest_client, raw).status_code == 413
    packed = gzip.compress(raw)
    assert len(packed) < 2048
    response = post_json(ingest_client, packed, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 413
    assert "once decompressed" in response.json()["message"]
    assert UsageEvent.objects.for_tenant(acme).count() == 0


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "Malformed JSON"),
        (b"\xff\xfe", "Malformed JSON"),
        (b"[1, 2]", 'an object with "resourceSpans"'),
        (b'{"resourceSpans": 5}', "Not an OTLP/JSON ExportTraceServiceRequest"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz", "spanId": 7}]}]}]}',
            "Not an OTLP/JSON ExportTraceServiceRequest",
        ),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}',
            "Not an OTLP/JSON ExportTraceServiceRequest",
        ),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"attributes": '
            b'[{"key": "n", "value": {"intValue": "1.5"}}]}]}]}]}',
            "Not an OTLP/JSON ExportTraceServiceRequest",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "Malformed JSON"),
    ],
)
def test_a_json_body_that_cannot_be_parsed_is_a_400(ingest_client, body, fragment):
    response = post_json(ingest_client, body)
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/json"
    data = response.json()
    assert fragment in data["message"] and data["detail"] == data["message"]
    assert data["code"] == 3


def test_a_protobuf_body_that_cannot_be_parsed_is_a_400_with_a_status(ingest_client):
    response = post_pb(ingest_client, b"this is not protobuf")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/x-protobuf"
    status = status_pb2.Status.FromString(response.content)
    assert "not a protobuf-encoded ExportTraceServiceRequest" in status.message
    assert status.code == 3


def test_other_content_types_and_encodings_are_a_415(ingest_client):
    response = ingest_client.post("/v1/traces", data=b"hello", content_type="text/plain")
    assert response.status_code == 415
    assert "application/x-protobuf or application/json" in response.json()["message"]
    response = post_json(ingest_client, b"{}", HTTP_CONTENT_ENCODING="br")
    assert response.status_code == 415
    assert "Content-Encoding 'br'" in response.json()["message"]


def test_a_missing_or_invalid_key_is_a_401(client, acme):
    body = json.dumps(json_export(json_span("0000000000000001", haiku())))
    response = client.post("/v1/traces", data=body, content_type="application/json")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="costmon"'
    assert response.json()["code"] == 16
    response = client.post(
        "/v1/traces",
        data=pb_export(("0000000000000001", haiku())),
        content_type="application/x-protobuf",
        HTTP_AUTHORIZATION="Bearer cm_nope_wrong",
    )
    assert response.status_code == 401
    assert "Invalid API key" in status_pb2.Status.FromString(response.content).message
    assert UsageEvent.objects.for_tenant(acme).count() == 0


def test_a_key_without_the_ingest_scope_is_a_403(read_client, acme):
    response = post_json(read_client, json_export(json_span("0000000000000001", haiku())))
    assert response.status_code == 403
    assert "lacks the 'ingest' scope" in response.json()["message"]
    assert UsageEvent.objects.for_tenant(acme).count() == 0


def test_only_post_is_allowed(ingest_client):
    response = ingest_client.get("/v1/traces")
    assert response.status_code == 405


def test_it_hides_other_tenants_events(ingest_client, read_client, outsider_client, acme, outsider):
    body = json_export(json_span("0000000000000001", haiku()))
    assert post_json(ingest_client, body).status_code == 200
    assert usage(outsider_client) == []
    # The outsider exporting the very same span ids records its own event, not acme's duplicate.
    assert post_json(outsider_client, body).status_code == 200
    assert UsageEvent.objects.for_tenant(outsider).count() == 1
    assert UsageEvent.objects.for_tenant(acme).count() == 1
    assert [Decimal(e["cost_usd"]) for e in usage(read_client)] == [Decimal("0.00135")]


def test_odd_attribute_values_are_rejected_or_cleaned_never_a_500(ingest_client, read_client):
    def span(span_id: str, **values: dict[str, Any]) -> dict[str, Any]:
        base = json_span(span_id, haiku())
        attrs = {a["key"]: a for a in base["attributes"]}
        for key, value in values.items():
            attrs[key.replace("__", ".")] = {"key": key.replace("__", "."), "value": value}
        base["attributes"] = list(attrs.values())
        return base

    body = json_export(
        span("0000000000000001", user__id={"stringValue": "us\u0000er-1"}),
        span("0000000000000002", gen_ai__usage__input_tokens={"doubleValue": "NaN"}),
        span("0000000000000003", gen_ai__request__model={"bytesValue": "AAAA"}),
        span("0000000000000004", gen_ai__provider__name={"arrayValue": {"values": []}}),
        span("0000000000000005", gen_ai__usage__input_tokens={"intValue": "9223372036854775807"}),
        span("0000000000000006", gen_ai__request__model={"stringValue": "m" * 300}),
    )
    response = post_json(ingest_client, body)
    assert response.status_code == 200, response.content
    assert response.json()["partialSuccess"]["rejectedSpans"] == "5"
    (event,) = usage(read_client)
    assert event["end_user"] == "user-1"


@pytest.mark.parametrize("value", ["team=", "=app.team", "x" * 65])
def test_a_malformed_tag_attribute_setting_fails_at_start_up(tmp_path, value):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "import costmon.settings"],
        env={
            "PATH": "/usr/bin:/bin",
            "COSTMON_VAR_DIR": str(tmp_path),
            "COSTMON_OTLP_TAG_ATTRIBUTES": f"service=service.name,{value}",
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "COSTMON_OTLP_TAG_ATTRIBUTES entries are tag=attribute" in result.stderr
