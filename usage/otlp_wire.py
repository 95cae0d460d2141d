"""OTLP/HTTP on the wire: decoding a trace export (protobuf or JSON, compressed or not), and the
replies OTLP wants (an ExportTraceServiceResponse, or a google.rpc.Status for an error)."""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from rest_framework import status

from costmon.core.exceptions import DomainError, PayloadTooLarge

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# The media types an OTLP/HTTP exporter sends; the reply uses the request's own.
MEDIA_TYPES = frozenset({PROTOBUF, "application/protobuf", JSON})
_MAX_REASONS = 5


class UnsupportedMediaType(DomainError):
    status_code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE


@dataclass
class ExportOutcome:
    """What became of one export's spans."""

    spans: int = 0
    recorded: int = 0
    duplicates: int = 0
    ignored: int = 0
    # (the span's position in the export, why it was rejected)
    rejections: list[tuple[int, str]] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    def reject(self, position: int, label: str, reason: str) -> None:
        self.rejections.append((position, f"{label}: {reason.rstrip('.')}"))

    def error_message(self) -> str:
        if not self.rejections:
            return ""
        shown = "; ".join(reason for _, reason in sorted(self.rejections)[:_MAX_REASONS])
        more = self.rejected - _MAX_REASONS
        tail = f"; and {more} more" if more > 0 else ""
        return f"{self.rejected} GenAI span(s) rejected, nothing stored for them: {shown}{tail}."


# --- decoding ---------------------------------------------------------------------------------


def media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def decode_export(body: bytes, *, media: str, content_encoding: str) -> ExportTraceServiceRequest:
    """The export request in `body`; a DomainError (400, 413 or 415) says what is wrong."""
    if media not in MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"Unsupported Content-Type {media or '(none)'!r}: send OTLP/HTTP traces as "
            f"{PROTOBUF} or {JSON}."
        )
    body = decompress(body, content_encoding=content_encoding)
    if media == JSON:
        return _from_json(body)
    try:
        return ExportTraceServiceRequest.FromString(body)
    except (DecodeError, ValueError, RecursionError):
        raise DomainError(
            "The body is not a protobuf-encoded ExportTraceServiceRequest (OTLP/HTTP traces). "
            f"Send JSON with Content-Type: {JSON} instead if that is what it is."
        ) from None


def decompress(body: bytes, *, content_encoding: str) -> bytes:
    """Undo gzip or deflate, never inflating past the body size limit."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise UnsupportedMediaType(
            f"Unsupported Content-Encoding {encoding!r}: send the body as is, or gzip- or "
            "deflate-compressed."
        )
    limit = settings.COSTMON_MAX_BODY_BYTES
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit)
        if inflater.unconsumed_tail:
            raise PayloadTooLarge(
                f"The body is more than {limit:,} bytes once decompressed; send at most "
                f"{limit:,} bytes per request (export smaller batches)."
            )
        if not inflater.eof:
            raise zlib.error("truncated")
    except zlib.error as exc:
        raise DomainError(
            f"The body is not valid {encoding} data ({exc}); check Content-Encoding."
        ) from None
    return data


def _from_json(body: bytes) -> ExportTraceServiceRequest:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DomainError(f"Malformed JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise DomainError(
            'Send an OTLP/JSON ExportTraceServiceRequest: an object with "resourceSpans".'
        )
    for span in _json_spans(payload):
        # OTLP/JSON writes trace and span ids in hex where protobuf's JSON mapping uses base64.
        _hex_ids_to_base64(span)
        for link in _json_list(span, "links"):
            _hex_ids_to_base64(link)
    try:
        return json_format.ParseDict(
            payload, ExportTraceServiceRequest(), ignore_unknown_fields=True
        )
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise DomainError(f"Not an OTLP/JSON ExportTraceServiceRequest: {exc}") from None


def _json_list(obj: Any, *names: str) -> list[Any]:
    for name in names:
        value = obj.get(name) if isinstance(obj, dict) else None
        if isinstance(value, list):
            return value
    return []


def _json_spans(payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for resource_spans in _json_list(payload, "resourceSpans", "resource_spans"):
        for scope_spans in _json_list(resource_spans, "scopeSpans", "scope_spans"):
            for span in _json_list(scope_spans, "spans"):
                if isinstance(span, dict):
                    yield span


_ID_FIELDS = {
    # JSON name -> byte length
    "traceId": 16,
    "trace_id": 16,
    "spanId": 8,
    "span_id": 8,
    "parentSpanId": 8,
    "parent_span_id": 8,
}


def _hex_ids_to_base64(obj: dict[str, Any]) -> None:
    for name, size in _ID_FIELDS.items():
        value = obj.get(name)
        # Ids of any other shape are left for the protobuf mapping (base64) to judge.
        if isinstance(value, str) and len(value) == size * 2:
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                continue
            obj[name] = base64.b64encode(raw).decode("ascii")


# --- replies ----------------------------------------------------------------------------------


def export_response(outcome: ExportOutcome, *, media: str) -> bytes:
    """ExportTraceServiceResponse in the request's encoding; partial_success only on rejections."""
    response = ExportTraceServiceResponse()
    if outcome.rejected:
        response.partial_success.rejected_spans = outcome.rejected
        response.partial_success.error_message = outcome.error_message()
    if media == JSON:
        return json.dumps(json_format.MessageToDict(response)).encode()
    return response.SerializeToString()


# google.rpc.Code for the HTTP statuses this endpoint answers with.
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 413: 8, 415: 3, 429: 8, 503: 14}


def status_response(http_status: int, message: str, *, media: str) -> bytes:
    """A google.rpc.Status, as OTLP/HTTP wants for every 4xx and 5xx, in the request's encoding.

    Encoded by hand (two fields) so the product needs no googleapis dependency; the JSON form
    also carries `detail` and `errors`, as every other costmon API error does.
    """
    code = _GRPC_CODES.get(http_status, 13 if http_status >= 500 else 2)
    if media in MEDIA_TYPES and media != JSON:
        text = message.encode()
        return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text
    errors = [{"field": None, "message": message}]
    return json.dumps(
        {"code": code, "message": message, "detail": message, "errors": errors}
    ).encode()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
