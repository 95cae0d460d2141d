"""The pre-flight check API: `POST /api/v1/check/` (budgets.check decides)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from django.http import HttpRequest, HttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from budgets.api.budgets import state_json
from budgets.check import CheckRequest, CheckResult, budget_check
from budgets.openapi import (
    CheckReply,
    check_request_schema,
)
from costmon.core import instruments
from costmon.core.exceptions import BatchInvalid, DomainError
from costmon.core.inputs import (
    DECIMAL_TEXT,
    DeferredJsonParser,
    field_name,
    load_json,
    may_hold_refused,
    text_problems,
)
from costmon.core.models import ApiKey
from costmon.core.money import format_usd
from costmon.core.scoping import TenantAPIView

_CHECK_FIELDS = {
    "end_user",
    "provider",
    "model",
    "operation",
    "tags",
    "estimated_input_tokens",
    "estimated_output_tokens",
    "estimated_cost_usd",
    "reserve",
    "event_id",
}


Bad = Callable[[str, str], None]  # (field, message): records one problem


def parse_check(body: bytes, *, api_key_id: int | None, client_ip: str) -> CheckRequest:
    data = load_json(body or b"{}", strings_checked=True)
    if not isinstance(data, dict):
        raise DomainError("Send the check as a JSON object.")
    errors: list[dict[str, Any]] = []

    def bad(field: str, message: str) -> None:
        errors.append({"index": 0, "field": field_name(field), "message": message})

    # The same names as usage events: no control characters, no lone surrogates.
    for where, problem in text_problems(data) if may_hold_refused(body) else ():
        bad(where, problem)
    for name in sorted(data.keys() - _CHECK_FIELDS):
        bad(name, f"Unknown field {name!r}. Known fields: {', '.join(sorted(_CHECK_FIELDS))}.")
    strings = {
        name: _string(data.get(name), name, bad)
        for name in ("end_user", "provider", "model", "operation", "event_id")
    }
    tokens = {
        name: _tokens(data.get(name), name, bad)
        for name in ("estimated_input_tokens", "estimated_output_tokens")
    }
    parsed_cost = _cost(data.get("estimated_cost_usd"), bad)
    tags = data.get("tags")
    if tags is None:
        tags = {}
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        bad("tags", "Must be an object of string keys to string values.")
        tags = {}
    reserve = data.get("reserve", False)
    if not isinstance(reserve, bool):
        bad("reserve", "Must be true or false.")
    if errors:
        raise BatchInvalid(errors)
    return CheckRequest(
        end_user=strings["end_user"],
        provider=strings["provider"].lower(),
        model=strings["model"],
        operation=strings["operation"],
        tags=tags,
        estimated_input_tokens=tokens["estimated_input_tokens"],
        estimated_output_tokens=tokens["estimated_output_tokens"],
        estimated_cost_usd=parsed_cost,
        reserve=bool(reserve),
        event_id=strings["event_id"],
        api_key_id=api_key_id,
        client_ip=client_ip,
    )


def _string(value: Any, name: str, bad: Bad) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str) or len(value) > 255:
        bad(name, "Must be a string of at most 255 characters.")
        value = ""
    return value.strip()


def _tokens(value: Any, name: str, bad: Bad) -> int:
    if value is None:
        value = 0
    whole = isinstance(value, int) or (
        isinstance(value, Decimal) and value == value.to_integral_value()
    )
    if isinstance(value, bool) or not whole or not 0 <= value <= 100_000_000:
        bad(name, "Must be a whole number of tokens between 0 and 100,000,000.")
        value = 0
    return int(value)


def _cost(cost: Any, bad: Bad) -> Decimal | None:
    if cost is None:
        return None
    try:
        if isinstance(cost, bool) or not isinstance(cost, str | int | Decimal):
            raise InvalidOperation
        if isinstance(cost, str) and not DECIMAL_TEXT.fullmatch(cost):
            raise InvalidOperation
        parsed = Decimal(cost)
        negative = parsed < 0 or (isinstance(cost, str) and cost.startswith("-"))
        if not parsed.is_finite() or negative or parsed > 100_000:
            raise InvalidOperation
    except (InvalidOperation, ValueError):
        bad(
            "estimated_cost_usd",
            'Must be a decimal number of US dollars between 0 and 100000, e.g. "0.02".',
        )
        return None
    return parsed


def check_json(result: CheckResult) -> dict[str, Any]:
    return {
        "allowed": result.allowed,
        "reasons": result.reasons,
        "budgets": [state_json(s) for s in result.budgets],
        "warnings": result.warnings,
        "suggested_model": result.suggested_model,
        "reservation_id": result.reservation_id,
        "estimated_cost_usd": format_usd(result.estimate_nanos),
        "source": result.source,
        "fail_mode": result.fail_mode,
    }


def check_headers(result: CheckResult) -> dict[str, str]:
    headers = {}
    hit = result.rate_limit
    if hit is not None:
        headers["X-RateLimit-Limit"] = str(hit.limit)
        headers["X-RateLimit-Remaining"] = str(hit.remaining)
        headers["X-RateLimit-Reset"] = str(hit.reset_seconds)
    if result.rate_limited is not None:
        headers["Retry-After"] = str(result.rate_limited.retry_after)
    return headers


RATE_LIMIT_HEADERS = [
    OpenApiParameter(
        name,
        int,
        location=OpenApiParameter.HEADER,
        response=[200, 429],
        description=description,
    )
    for name, description in (
        ("X-RateLimit-Limit", "The tightest rate limit that applied (with request limits)."),
        ("X-RateLimit-Remaining", "What is left of it in this window."),
        ("X-RateLimit-Reset", "Seconds until the window ends."),
    )
] + [
    OpenApiParameter(
        "Retry-After",
        int,
        location=OpenApiParameter.HEADER,
        response=[429],
        description="Seconds to wait before asking again.",
    )
]


class CheckApi(TenantAPIView):
    """Ask before an LLM call whether it may spend."""

    required_scope = ApiKey.Scope.INGEST
    parser_classes: list[Any] = [DeferredJsonParser]  # parse_check reads the body itself

    @instruments.timed(instruments.CHECK_SECONDS)
    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        response = self._answer_directly(request)
        if response is None:
            response = super().dispatch(request, *args, **kwargs)
        return response

    def _answer_directly(self, request: HttpRequest) -> HttpResponse | None:
        """The common case without DRF's request machinery (about 0.2 ms of a check): a POST
        with a valid key and a well-formed check, JSON accepted. The reply is the one `post`
        gives, byte for byte. None: DRF answers, and words any error, as for any other view."""
        if request.method != "POST" or request.META.get("HTTP_ACCEPT") not in _PLAIN_ACCEPT:
            return None
        if not self.enter_as_key(request):
            return None
        if "%00" in request.META.get("QUERY_STRING", ""):
            return None  # DRF refuses a NUL in any parameter (TenantAPIView.initial)
        try:
            req = parse_check(
                request.body,
                api_key_id=self.api_key_id,
                client_ip=request.META.get("REMOTE_ADDR", ""),
            )
        except DomainError:
            return None  # nothing happened yet: DRF parses again and gives the 400
        try:
            result = budget_check(tenant=self.tenant, req=req)
        except Exception as exc:  # noqa: BLE001 - answered exactly as DRF's dispatch would
            return self.drf_error(request, exc)
        response = HttpResponse(
            _RENDERER.render(check_json(result)),
            content_type=_RENDERER.media_type,
            status=429 if result.rate_limited else 200,
        )
        for name, value in check_headers(result).items():
            response[name] = value
        for name, value in self.default_response_headers.items():
            response[name] = value
        return response

    @extend_schema(
        operation_id="check",
        summary="May this call spend? (ingest scope)",
        request={"application/json": check_request_schema()},
        responses={
            200: CheckReply,
            429: OpenApiResponse(
                CheckReply, description="Rate-limited: `Retry-After` says when to ask again."
            ),
        },
        parameters=RATE_LIMIT_HEADERS,
    )
    def post(self, request: Request) -> Response:
        req = parse_check(
            request._request.body,
            api_key_id=self.api_key_id,
            client_ip=request.META.get("REMOTE_ADDR", ""),
        )
        result = budget_check(tenant=self.tenant, req=req)
        return Response(
            check_json(result),
            status=429 if result.rate_limited else 200,
            headers=check_headers(result),
        )


# What DRF's content negotiation answers with plain JSON (no Accept header is */*); any other
# Accept header takes DRF's path, which may answer differently (406, or indented JSON).
_PLAIN_ACCEPT = frozenset({None, "*/*", "application/json"})
_RENDERER = JSONRenderer()
