"""`POST /v1/traces`: OTLP/HTTP trace exports, authenticated with an ingest API key."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from costmon.core.exceptions import PayloadTooLarge
from costmon.core.models import ApiKey
from costmon.core.openapi import ERRORS, ErrorItem
from costmon.core.scoping import TenantAPIView
from usage import otlp, otlp_wire


class PartialSuccess(serializers.Serializer):
    rejectedSpans = serializers.CharField(help_text="A count (int64 as a JSON string).")
    errorMessage = serializers.CharField()


class ExportReply(serializers.Serializer):
    partialSuccess = PartialSuccess(required=False)


class OtlpStatus(serializers.Serializer):
    code = serializers.IntegerField(help_text="A google.rpc.Code.")
    message = serializers.CharField()
    detail = serializers.CharField()
    errors = ErrorItem(many=True)


class _IgnoreAccept(BaseContentNegotiation):
    """Exporters send whatever Accept they like; the reply's encoding follows Content-Type."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(
        self, request: Request, renderers: list[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = renderers[0] if renderers else JSONRenderer()
        return renderer, renderer.media_type


class OtlpTracesApi(TenantAPIView):
    required_scope = ApiKey.Scope.INGEST
    parser_classes: list[Any] = []  # the body is decoded here: protobuf or OTLP/JSON
    content_negotiation_class = _IgnoreAccept

    @extend_schema(
        operation_id="usage_record_traces",
        summary="Report usage as OpenTelemetry GenAI spans (OTLP/HTTP)",
        tags=["opentelemetry"],
        description=(
            "An OTLP ExportTraceServiceRequest, binary protobuf (application/x-protobuf) or "
            "OTLP/JSON (application/json), optionally gzip-compressed. Spans with GenAI "
            "attributes become usage events (see docs/opentelemetry.md); others are ignored."
        ),
        request={
            "application/x-protobuf": OpenApiTypes.BINARY,
            "application/json": OpenApiTypes.OBJECT,
        },
        responses={
            (200, "application/json"): OpenApiResponse(
                ExportReply, description="An ExportTraceServiceResponse (OTLP/JSON)."
            ),
            (200, "application/x-protobuf"): OpenApiResponse(
                OpenApiTypes.BINARY, description="An ExportTraceServiceResponse (protobuf)."
            ),
            **{
                (code, media): OpenApiResponse(
                    OtlpStatus if media == otlp_wire.JSON else OpenApiTypes.BINARY,
                    description=f"{ERRORS[code]} A google.rpc.Status, as OTLP/HTTP wants.",
                )
                for code in (400, 401, 403, 404, 413, 415, 503)
                for media in (otlp_wire.JSON, otlp_wire.PROTOBUF)
            },
        },
    )
    def post(self, request: Request) -> HttpResponse:
        media = otlp_wire.media_type(request.META.get("CONTENT_TYPE", ""))
        limit = settings.COSTMON_MAX_BODY_BYTES
        length = request.META.get("CONTENT_LENGTH") or "0"
        if length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(
                f"The body is {int(length):,} bytes; send at most {limit:,} bytes per request "
                "(export smaller batches)."
            )
        try:
            body = request._request.body
        except RequestDataTooBig:
            raise PayloadTooLarge(
                f"Send at most {limit:,} bytes per request (export smaller batches)."
            ) from None
        export = otlp_wire.decode_export(
            body, media=media, content_encoding=request.META.get("HTTP_CONTENT_ENCODING", "")
        )
        outcome = otlp.otlp_traces_record(
            tenant=self.tenant, export=export, api_key_id=self.api_key_id
        )
        return HttpResponse(otlp_wire.export_response(outcome, media=media), content_type=media)

    def handle_exception(self, exc: Exception) -> HttpResponse:
        """Errors as OTLP/HTTP wants them: a google.rpc.Status in the request's encoding."""
        response = super().handle_exception(exc)
        if not isinstance(response, Response):
            return response
        data = response.data
        if isinstance(data, dict) and isinstance(data.get("detail"), str):
            message = data["detail"]
        else:
            message = str(data)
        request = getattr(self, "request", None)
        media = otlp_wire.media_type(request.META.get("CONTENT_TYPE", "") if request else "")
        if media not in otlp_wire.MEDIA_TYPES:
            media = otlp_wire.JSON
        reply = HttpResponse(
            otlp_wire.status_response(response.status_code, message, media=media),
            status=response.status_code,
            content_type=media,
        )
        for name, value in response.headers.items():
            if name.lower() != "content-type":
                reply[name] = value
        return reply
