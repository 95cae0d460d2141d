"""Usage API: report usage, read raw events back, and read aggregated metrics."""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import NotFound
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from costmon.core import instruments
from costmon.core.exceptions import DomainError, PayloadTooLarge
from costmon.core.inputs import (
    DeferredJsonParser,
    impossible_date_reason,
    load_json,
    may_hold_refused,
)
from costmon.core.models import ApiKey
from costmon.core.money import format_usd
from costmon.core.openapi import ERRORS, Error
from costmon.core.periods import TimeRange, custom_range, period_range
from costmon.core.scoping import TenantAPIView
from costmon.core.tenancy import tenant_context
from usage.eventstore.base import EventQuery, EventStore, event_query
from usage.eventstore.current import event_store
from usage.explanations import cost_explanation, explanation_json
from usage.fastparse import parse_valid_batch
from usage.grouping import record_events
from usage.ingest import EARLIEST, PART_FIELDS, EventIn, parse_batch
from usage.models import CostSource, UsageEvent
from usage.openapi import (
    EVENT_TIME_PARAMETER,
    MetricsReply,
    UsageEventExplained,
    UsageEventPage,
    UsageRecorded,
    usage_batch_schema,
)
from usage.selectors import (
    FILTER_FIELDS,
    Metrics,
    UsageFilters,
    usage_metrics,
)
from usage.services import EventResult

_SOURCE_LABELS = dict(CostSource.choices)
# What DRF's content negotiation answers with plain JSON (no Accept header is */*); any other
# Accept header takes DRF's path, which may answer differently (406, or indented JSON).
_PLAIN_ACCEPT = frozenset({None, "*/*", "application/json"})
_RENDERER = JSONRenderer()
FILTER_PARAMETERS = [
    *(OpenApiParameter(name, str, description=f"Only this {name}") for name in FILTER_FIELDS),
    OpenApiParameter("tag", str, pattern=r"^([^:]+:.*)?$", description="name:value"),
]
RANGE_PARAMETERS = [
    OpenApiParameter(
        "start",
        str,
        description="A date (2026-11-01: midnight in the tenant's time zone) or an ISO 8601 "
        "date-time, from 2000-01-01 to 2099-12-31; instead of period",
    ),
    OpenApiParameter("end", str, description="As start (a date includes that day); default now"),
]
GROUP_BY_PATTERN = r"^(|provider|model|operation|end_user|session_id|tag:.+)$"


def time_range_from(
    request: Request, tenant: Any, *, default: str | None = "month"
) -> TimeRange | None:
    params = request.query_params
    if params.get("start"):
        return custom_range(tenant=tenant, start=params["start"], end=params.get("end"))
    if params.get("end"):
        raise DomainError("Give start with end.", field="start")
    period = params.get("period") or default
    return period_range(tenant=tenant, period=period) if period else None


def filters_from(request: Request) -> UsageFilters:
    params = request.query_params
    values: dict[str, Any] = {name: params.get(name) or None for name in FILTER_FIELDS}
    if tag := params.get("tag"):
        name, sep, value = tag.partition(":")
        if not sep or not name:
            raise DomainError("tag filter must be name:value, e.g. tag=team:search.", field="tag")
        values["tag"] = (name, value)
    return UsageFilters(**values)


def event_json(e: UsageEvent) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "occurred_at": e.occurred_at.isoformat().replace("+00:00", "Z"),
        "provider": e.provider.value,
        "model": e.model.value,
        "operation": e.operation.value,
        "end_user": e.end_user.value,
        "session_id": e.session.value if e.session is not None else "",
        "tags": e.tags or {},
        "input_tokens": e.input_tokens,
        "output_tokens": e.output_tokens,
        "cached_input_tokens": e.cached_input_tokens,
        "cache_write_tokens": e.cache_write_tokens,
        "reasoning_tokens": e.reasoning_tokens,
        **{name: getattr(e, name) or 0 for name in PART_FIELDS},
        "service_tier": e.tier,
        "cost_usd": format_usd(e.cost_nanos),
        "cost_source": _SOURCE_LABELS[e.cost_source],
        "latency_ms": e.latency_ms,
        "status": "error" if e.is_error else "success",
        "cache_hit": e.cache_hit,
        "prompt_hash": e.prompt_hash or "",
    }


CSV_COLUMNS = [
    "event_id",
    "occurred_at",
    "provider",
    "model",
    "operation",
    "end_user",
    "session_id",
    "tags",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "cost_source",
    "latency_ms",
    "status",
    "cache_hit",
    "prompt_hash",
    # Added with the pricing rules: new columns go last, so readers by position keep working.
    *PART_FIELDS,
    "service_tier",
]


class _Echo:
    def write(self, value: str) -> str:
        return value


def _time_param(request: Request, name: str) -> datetime | None:
    """An optional ISO 8601 time of the query string (without a zone: UTC)."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    # An unencoded "+01:00" arrives as " 01:00": take it as meant.
    text = raw.strip().replace(" ", "+") if "T" in raw else raw.strip()
    example = "e.g. 2026-11-23T14:05:00Z, as the event list gives it"
    try:
        parsed = parse_datetime(text)
    except ValueError as exc:
        raise DomainError(
            f"{name}={raw} is not a valid date-time ({impossible_date_reason(exc)}).", field=name
        ) from None
    if parsed is None:
        raise DomainError(f"{name} must be an ISO 8601 date-time, {example}.", field=name)
    if timezone.is_naive(parsed):
        parsed = parsed.replace(tzinfo=UTC)
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 shifted by its offset
        parsed = None
    if parsed is None or parsed < EARLIEST:
        # A valid date-time no event can have: nothing there (the schema allows any date-time).
        raise NotFound(f"No usage event at {name}={raw}: events are kept from 2000-01-01 on.")
    return parsed


def _int_param(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit():  # int() would also take " 5", "+5" and other digits
        raise DomainError(f"{name} must be a whole number.", field=name)
    value = int(raw)
    if not 1 <= value <= maximum:
        raise DomainError(f"{name} must be between 1 and {maximum}.", field=name)
    return value


def recorded_json(results: list[EventResult]) -> dict[str, Any]:
    return {
        "events": [
            {
                "event_id": r.event_id,
                "cost_usd": format_usd(r.cost_nanos),
                "cost_source": _SOURCE_LABELS[r.cost_source],
                "duplicate": r.duplicate,
            }
            for r in results
        ]
    }


def recorded_body(results: list[EventResult]) -> bytes:
    """`recorded_json` as DRF's JSONRenderer renders it, byte for byte (compact, UTF-8, the
    two line separators escaped), encoded by msgspec: json.dumps took more time per event
    than storing it."""
    body = msgspec.json.encode(recorded_json(results))
    if b"\xe2\x80\xa8" in body or b"\xe2\x80\xa9" in body:
        body = body.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
    return body


def events_of(body: bytes) -> list[EventIn]:
    """The validated events of a request body; DomainError (400) naming every problem.

    A valid batch is decoded in one typed pass (usage.fastparse); any other goes through
    `parse_batch`, which words each error. parse_batch accepts nothing deeper than
    list > event > tags (no depth count needed), and checks every string."""
    refused = may_hold_refused(body)
    events = None if refused else parse_valid_batch(body)
    if events is None:
        payload = load_json(body, max_depth=None, strings_checked=True)
        events = parse_batch(payload, may_hold_refused=refused)
    return events


def _body_if_plain(request: HttpRequest) -> bytes | None:
    """The body of a POST that DRF would hand to `post` unchanged: JSON, plain Accept, a size
    within the limit, no NUL in the query. None: let DRF answer (and word any error)."""
    if request.META.get("HTTP_ACCEPT") not in _PLAIN_ACCEPT:
        return None
    if request.content_type != "application/json" or "%00" in request.META.get("QUERY_STRING", ""):
        return None
    length = request.META.get("CONTENT_LENGTH") or ""
    if not length.isdigit() or int(length) > settings.COSTMON_MAX_BODY_BYTES:
        return None
    try:
        return request.body
    except RequestDataTooBig:
        return None


class UsageApi(TenantAPIView):
    method_scopes = {"POST": ApiKey.Scope.INGEST, "GET": ApiKey.Scope.READ}
    # The body is parsed here, as a whole batch with exact decimals.
    parser_classes: list[Any] = [DeferredJsonParser]

    @instruments.timed(instruments.INGEST_SECONDS)
    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        if request.method == "POST":
            response = self._answer_directly(request)
            if response is not None:
                return response
        return super().dispatch(request, *args, **kwargs)

    def _answer_directly(self, request: HttpRequest) -> HttpResponse | None:
        """A valid report without DRF's request machinery: the reply is the one `post` gives,
        byte for byte. None when anything is amiss (a body that does not validate, a missing
        key, another Accept): nothing was stored, and DRF answers as for any other view."""
        body = _body_if_plain(request)
        if body is None or not self.enter_as_key(request):
            return None
        try:
            events = events_of(body)
        except DomainError:
            return None
        try:
            results = record_events(tenant=self.tenant, events=events, api_key_id=self.api_key_id)
        except Exception as exc:  # noqa: BLE001 - answered exactly as DRF's dispatch would
            return self.drf_error(request, exc)
        instruments.events_ingested(results)
        response = HttpResponse(
            recorded_body(results),
            content_type=_RENDERER.media_type,
            status=201,
        )
        for name, value in self.default_response_headers.items():
            response[name] = value
        return response

    @extend_schema(
        operation_id="usage_record",
        summary="Report usage",
        description="One usage event or a list of them (see the README for the fields). "
        "Events are priced, stored and counted once each (by event_id).",
        request={"application/json": usage_batch_schema()},
        responses={
            201: UsageRecorded,
            413: OpenApiResponse(Error, description=ERRORS[413]),
        },
    )
    def post(self, request: Request) -> Response:
        length = request.META.get("CONTENT_LENGTH") or "0"
        if length.isdigit() and int(length) > settings.COSTMON_MAX_BODY_BYTES:
            raise PayloadTooLarge(
                f"The body is {int(length):,} bytes; send at most {settings.COSTMON_MAX_BODY_BYTES:,} "
                "bytes per request (split the batch)."
            )
        try:
            body = request._request.body
        except RequestDataTooBig:
            raise PayloadTooLarge(
                f"Send at most {settings.COSTMON_MAX_BODY_BYTES:,} bytes per request (split the batch)."
            ) from None
        content_type = request.content_type.split(";")[0].strip()
        if content_type and content_type != "application/json":
            raise DomainError("Send the usage as JSON with Content-Type: application/json.")
        events = events_of(body)
        results = record_events(tenant=self.tenant, events=events, api_key_id=self.api_key_id)
        instruments.events_ingested(results)
        return Response(recorded_json(results), status=201)

    @extend_schema(
        operation_id="usage_list",
        summary="List raw usage events, newest first (or all of them as CSV)",
        parameters=[
            *FILTER_PARAMETERS,
            OpenApiParameter("session_id", str, description="Only events of this session"),
            OpenApiParameter("status", str, enum=["", "success", "error"]),
            OpenApiParameter("cost_source", str, enum=["", "computed", "caller", "unpriced"]),
            *RANGE_PARAMETERS,
            OpenApiParameter("period", str, enum=["", "day", "week", "month"]),
            OpenApiParameter("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
            OpenApiParameter("cursor", str, description="next_cursor of the previous page"),
            OpenApiParameter("format", str, enum=["json", "csv"]),
        ],
        responses={
            (200, "application/json"): UsageEventPage,
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.STR, description="With format=csv: every matching event."
            ),
        },
    )
    def get(self, request: Request) -> Any:
        params = request.query_params
        fmt = params.get("format", "json")
        if fmt not in ("json", "csv"):
            raise DomainError("format must be json or csv.", field="format")
        limit = _int_param(request, "limit", 100, 1000)  # checked for CSV too, which ignores it
        query = event_query(
            time_range=time_range_from(request, self.tenant, default=params.get("period")),
            filters=filters_from(request),
            session_id=params.get("session_id") or None,
            status=params.get("status") or None,
            cost_source=params.get("cost_source") or None,
        )
        store = event_store()
        if fmt == "csv":
            return self._csv(store, query)
        page = store.page(self.tenant, query, params.get("cursor"), limit)
        return Response(
            {"results": [event_json(e) for e in page.events], "next_cursor": page.next_cursor}
        )

    def _csv(self, store: EventStore, query: EventQuery) -> StreamingHttpResponse:
        tenant = self.tenant
        events = store.iter_events(tenant, query)
        # The first page is read now, before the response starts: a store that cannot be
        # reached is a 503 with Retry-After, not a cut-off download.
        first = next(events, None)

        def rows() -> Iterator[str]:
            writer = csv.writer(_Echo())
            yield writer.writerow(CSV_COLUMNS)
            if first is None:
                return
            # The response streams after the view returns: hold the tenant's context here.
            with tenant_context(tenant):
                for event in itertools.chain([first], events):
                    data = event_json(event)
                    data["tags"] = json.dumps(data["tags"]) if data["tags"] else ""
                    yield writer.writerow([data[c] for c in CSV_COLUMNS])

        response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{tenant.slug}-usage.csv"'
        return response


class UsageEventApi(TenantAPIView):
    required_scope = ApiKey.Scope.READ

    @extend_schema(
        summary="One usage event with its cost explained",
        description="The event as the list shows it, plus `cost`: the catalog row used (its "
        "provider, model, tier and start), whether the long-context rates applied, and one line "
        "per token kind with its count, unit price and cost, so the figure can be recomputed "
        "by hand.",
        parameters=[EVENT_TIME_PARAMETER],
        responses={200: UsageEventExplained},
    )
    def get(self, request: Request, event_id: str) -> Response:
        occurred_at = _time_param(request, "occurred_at")
        explained = cost_explanation(tenant=self.tenant, event_id=event_id, occurred_at=occurred_at)
        return Response({**event_json(explained.event), "cost": explanation_json(explained)})


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def totals_json(sums: dict[str, int]) -> dict[str, Any]:
    calls = sums["calls"]
    return {
        "cost_usd": format_usd(sums["cost_nanos"]),
        "calls": calls,
        "input_tokens": sums["input_tokens"],
        "output_tokens": sums["output_tokens"],
        "cached_input_tokens": sums["cached_input_tokens"],
        "cache_write_tokens": sums["cache_write_tokens"],
        "reasoning_tokens": sums["reasoning_tokens"],
        "cache_hits": sums["cache_hits"],
        "cache_hit_rate": _rate(sums["cache_hits"], calls),
        "prompt_cache_rate": _rate(sums["cached_input_tokens"], sums["input_tokens"]),
        "errors": sums["errors"],
        "error_rate": _rate(sums["errors"], calls),
        "unpriced_calls": sums["unpriced_calls"],
        "avg_cost_usd": format_usd(sums["cost_nanos"] // calls) if calls else None,
        "avg_latency_ms": round(sums["latency_ms_sum"] / sums["latency_count"])
        if sums["latency_count"]
        else None,
    }


def metrics_json(m: Metrics) -> dict[str, Any]:
    return {
        "start": m.range.start.isoformat().replace("+00:00", "Z"),
        "end": m.range.end.isoformat().replace("+00:00", "Z"),
        "period": m.range.period,
        "time_zone": str(m.range.tz),
        "group_by": m.group_by,
        "interval": m.interval,
        "total": totals_json(m.totals),
        "breakdown": [{"key": row["key"], **totals_json(row)} for row in m.breakdown],
        "series": [
            {
                "bucket": s["bucket"].isoformat(),
                "cost_usd": format_usd(s["cost_nanos"]),
                "calls": s["calls"],
            }
            for s in m.series
        ],
    }


class MetricsApi(TenantAPIView):
    required_scope = ApiKey.Scope.READ

    @extend_schema(
        operation_id="metrics_read",
        summary="Aggregated usage: totals, a breakdown and a time series",
        parameters=[
            OpenApiParameter("period", str, enum=["", "day", "week", "month"]),
            *RANGE_PARAMETERS,
            OpenApiParameter(
                "group_by",
                str,
                pattern=GROUP_BY_PATTERN,
                description="provider, model, operation, end_user, session_id or tag:<name>",
            ),
            OpenApiParameter("interval", str, enum=["", "hour", "day"]),
            OpenApiParameter(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 1000},
                description="Rows of the breakdown",
            ),
            *FILTER_PARAMETERS,
        ],
        responses={200: MetricsReply},
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        metrics = usage_metrics(
            tenant=self.tenant,
            time_range=time_range_from(request, self.tenant),  # type: ignore[arg-type]
            filters=filters_from(request),
            group_by=params.get("group_by") or None,
            interval=params.get("interval") or None,
            limit=_int_param(request, "limit", 100, 1000),
            keep=True,
        )
        return Response(metrics_json(metrics))
