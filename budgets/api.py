"""Budgets API: budgets, the pre-flight check, and the emergency stop."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from budgets.check import CheckRequest, CheckResult, budget_check
from budgets.emergency_stop import emergency_stop_active, emergency_stop_lift, emergency_stop_trip
from budgets.models import Budget, EmergencyStop
from budgets.openapi import (
    BudgetList,
    BudgetOut,
    CheckReply,
    EmergencyStopReply,
    check_request_schema,
)
from budgets.scopes import SCOPES
from budgets.selectors import BudgetView, budget_views, emergency_stop_history
from budgets.services import api_key_for_budget, budget_create, budget_delete, budget_update
from budgets.standing import BudgetState, budget_status
from costmon.core import instruments
from costmon.core.exceptions import BatchInvalid, Conflict, DomainError, NotFound
from costmon.core.fields import (
    StrictBooleanField,
    StrictCharField,
    StrictChoiceField,
    StrictDecimalField,
    StrictIntegerField,
)
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
from costmon.core.openapi import Error
from costmon.core.scoping import TenantAPIView


def _iso(moment: Any) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def state_json(state: BudgetState) -> dict[str, Any]:
    spec = state.spec
    percent = state.percent
    data = {
        "id": spec.id,
        "name": spec.name,
        "scope": spec.scope,
        "scope_value": spec.value,
        "period": spec.period,
        "limit_usd": format_usd(spec.limit_nanos),
        "used_usd": format_usd(state.spent),
        "reserved_usd": format_usd(state.reserved),
        "remaining_usd": format_usd(state.remaining),
        "percent": float(percent),
        "status": budget_status(percent, spec.thresholds),
        "resets_at": _iso(state.window.end),
        "enforcement": "hard" if spec.hard else "soft",
        "fail_mode": spec.fail_mode,
    }
    if SCOPES[spec.scope].per_end_user:
        data["end_user"] = state.end_user
    return data


def budget_json(view: BudgetView) -> dict[str, Any]:
    budget = view.budget
    data = state_json(view.state)
    data.update(
        {
            "api_key": budget.api_key_id,
            "rolling_days": budget.rolling_days,
            "thresholds": budget.thresholds,
            "suggested_model": budget.suggested_model,
            "is_active": budget.is_active,
            "fail_mode_inherited": not budget.fail_mode,
            "projected_usd": format_usd(view.projected_nanos)
            if view.projected_nanos is not None
            else None,
            "period_start": _iso(view.state.window.start),
            "source": view.source,
        }
    )
    return data


class BudgetInput(serializers.Serializer):
    name = StrictCharField(max_length=100)
    scope = StrictChoiceField(choices=Budget.Scope.choices, default=Budget.Scope.TENANT)
    scope_value = StrictCharField(max_length=255, required=False, allow_blank=True, default="")
    api_key = StrictIntegerField(required=False, allow_null=True, default=None)
    period = StrictChoiceField(choices=Budget.Period.choices, default=Budget.Period.MONTH)
    rolling_days = StrictIntegerField(required=False, allow_null=True, default=None)
    limit_usd = StrictDecimalField(max_digits=14, decimal_places=6)
    thresholds = serializers.ListField(
        child=StrictDecimalField(max_digits=6, decimal_places=3), required=False
    )
    enforcement = StrictChoiceField(
        choices=Budget.Enforcement.choices, default=Budget.Enforcement.SOFT
    )
    suggested_model = StrictCharField(max_length=200, required=False, allow_blank=True, default="")
    fail_mode = StrictChoiceField(
        choices=["closed", "open"],
        required=False,
        allow_blank=True,
        allow_null=True,
        default="",
        help_text="When spend cannot be known at all: closed refuses calls, open allows them "
        "with a warning. Empty or null: the tenant's default (closed for a hard budget).",
    )
    is_active = StrictBooleanField(required=False, default=True)


def _budget_data(view: TenantAPIView, validated: dict[str, Any]) -> dict[str, Any]:
    data = dict(validated)
    if "fail_mode" in data:
        data["fail_mode"] = data["fail_mode"] or ""
    if "thresholds" in data:
        data["thresholds"] = [
            int(t) if t == t.to_integral_value() else float(t) for t in data["thresholds"]
        ]
    if "api_key" in data:
        data["api_key"] = (
            api_key_for_budget(tenant=view.tenant, key_id=data["api_key"])
            if data["api_key"]
            else None
        )
    return data


class BudgetListApi(TenantAPIView):
    method_scopes = {"GET": ApiKey.Scope.READ, "POST": ApiKey.Scope.ADMIN}

    @extend_schema(
        operation_id="budgets_list",
        summary="Budgets with their spend this period",
        responses={200: BudgetList},
    )
    def get(self, request: Request) -> Response:
        return Response({"results": [budget_json(v) for v in budget_views(tenant=self.tenant)]})

    @extend_schema(
        operation_id="budgets_create",
        summary="Create a budget (admin scope)",
        request=BudgetInput,
        responses={201: BudgetOut},
    )
    def post(self, request: Request) -> Response:
        incoming = BudgetInput(data=request.data)
        incoming.is_valid(raise_exception=True)
        budget = budget_create(tenant=self.tenant, data=_budget_data(self, incoming.validated_data))
        [view] = budget_views(tenant=self.tenant, budgets=[budget])
        return Response(budget_json(view), status=201)


class BudgetDetailApi(TenantAPIView):
    method_scopes = {
        "GET": ApiKey.Scope.READ,
        "PATCH": ApiKey.Scope.ADMIN,
        "DELETE": ApiKey.Scope.ADMIN,
    }

    def _budget(self, budget_id: int) -> Budget:
        budget = (
            Budget.objects.for_tenant(self.tenant)
            .select_related("api_key")
            .filter(pk=budget_id)
            .first()
        )
        if budget is None:
            raise NotFound(f"No budget {budget_id} in this tenant.")
        return budget

    @extend_schema(
        operation_id="budgets_read", summary="One budget with its spend", responses={200: BudgetOut}
    )
    def get(self, request: Request, budget_id: int) -> Response:
        [view] = budget_views(tenant=self.tenant, budgets=[self._budget(budget_id)])
        return Response(budget_json(view))

    @extend_schema(
        operation_id="budgets_update",
        summary="Change a budget (admin scope)",
        request=BudgetInput,
        responses={200: BudgetOut},
    )
    def patch(self, request: Request, budget_id: int) -> Response:
        budget = self._budget(budget_id)
        incoming = BudgetInput(data=request.data, partial=True)
        incoming.is_valid(raise_exception=True)
        given = {k: v for k, v in incoming.validated_data.items() if k in request.data}
        budget = budget_update(budget=budget, data=_budget_data(self, given))
        [view] = budget_views(tenant=self.tenant, budgets=[budget])
        return Response(budget_json(view))

    @extend_schema(
        operation_id="budgets_delete",
        summary="Delete a budget (admin scope)",
        responses={204: None},
    )
    def delete(self, request: Request, budget_id: int) -> Response:
        budget_delete(budget=self._budget(budget_id))
        return Response(status=204)


# --- the pre-flight check ------------------------------------------------------------------------

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
    strings: dict[str, str] = {}
    for name in ("end_user", "provider", "model", "operation", "event_id"):
        value = data.get(name)
        if value is None:
            value = ""
        if not isinstance(value, str) or len(value) > 255:
            bad(name, "Must be a string of at most 255 characters.")
            value = ""
        strings[name] = value.strip()
    tokens: dict[str, int] = {}
    for name in ("estimated_input_tokens", "estimated_output_tokens"):
        value = data.get(name)
        if value is None:
            value = 0
        whole = isinstance(value, int) or (
            isinstance(value, Decimal) and value == value.to_integral_value()
        )
        if isinstance(value, bool) or not whole or not 0 <= value <= 100_000_000:
            bad(name, "Must be a whole number of tokens between 0 and 100,000,000.")
            value = 0
        tokens[name] = int(value)
    cost = data.get("estimated_cost_usd")
    parsed_cost: Decimal | None = None
    if cost is not None:
        try:
            if isinstance(cost, bool) or not isinstance(cost, str | int | Decimal):
                raise InvalidOperation
            if isinstance(cost, str) and not DECIMAL_TEXT.fullmatch(cost):
                raise InvalidOperation
            parsed_cost = Decimal(cost)
            negative = parsed_cost < 0 or (isinstance(cost, str) and cost.startswith("-"))
            if not parsed_cost.is_finite() or negative or parsed_cost > 100_000:
                raise InvalidOperation
        except (InvalidOperation, ValueError):
            bad(
                "estimated_cost_usd",
                'Must be a decimal number of US dollars between 0 and 100000, e.g. "0.02".',
            )
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
            return self._drf_error(request, exc)
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

    def _drf_error(self, request: HttpRequest, exc: Exception) -> Any:
        """What DRF's `dispatch` answers when the handler raises `exc`."""
        self.args, self.format_kwarg = (), None
        self.kwargs: dict[str, Any] = {}
        drf_request = self.request = self.initialize_request(request)
        self.headers = self.default_response_headers
        drf_request.accepted_renderer, drf_request.accepted_media_type = (
            self.perform_content_negotiation(drf_request)
        )
        return self.finalize_response(drf_request, self.handle_exception(exc))

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


# --- the emergency stop --------------------------------------------------------------------------


def stop_json(stop: EmergencyStop) -> dict[str, Any]:
    return {
        "id": stop.pk,
        "scope": "tenant" if stop.tenant_id else "global",
        "reason": stop.reason,
        "tripped_at": _iso(stop.tripped_at),
        "tripped_by": stop.tripped_by.get_username()
        if stop.tripped_by
        else ("rule" if stop.rule_id else ("api key" if stop.tripped_by_key_id else None)),
        "rule_id": stop.rule_id,
        "spend_at_trip_usd": format_usd(stop.spend_at_trip_nanos)
        if stop.spend_at_trip_nanos is not None
        else None,
        "expires_at": _iso(stop.expires_at),
        "lifted_at": _iso(stop.lifted_at),
        "lifted_by": stop.lifted_by.get_username()
        if stop.lifted_by
        else ("api key" if stop.lifted_by_key_id else None),
        "tripped_by_key": stop.tripped_by_key.prefix if stop.tripped_by_key else None,
        "lifted_by_key": stop.lifted_by_key.prefix if stop.lifted_by_key else None,
        "lift_reason": stop.lift_reason,
        "active": stop.is_active_at(timezone.now()),
    }


class EmergencyStopInput(serializers.Serializer):
    action = StrictChoiceField(choices=["trip", "lift"])
    reason = StrictCharField(
        multiline=True, max_length=500, required=False, allow_blank=True, default=""
    )
    duration_minutes = StrictIntegerField(
        required=False, default=60, min_value=1, max_value=7 * 24 * 60
    )


class EmergencyStopApi(TenantAPIView):
    method_scopes = {"GET": ApiKey.Scope.READ, "POST": ApiKey.Scope.ADMIN}

    def _reply(self) -> dict[str, Any]:
        active = emergency_stop_active(tenant=self.tenant)
        return {
            "active": active is not None,
            "stop": stop_json(active) if active else None,
            "history": [stop_json(s) for s in emergency_stop_history(tenant=self.tenant)],
        }

    @extend_schema(
        operation_id="emergency_stop_read",
        summary="The emergency stop and its history",
        responses={200: EmergencyStopReply},
    )
    def get(self, request: Request) -> Response:
        return Response(self._reply())

    @extend_schema(
        operation_id="emergency_stop_change",
        summary="Trip or lift the tenant's emergency stop (admin scope)",
        request=EmergencyStopInput,
        responses={
            200: EmergencyStopReply,
            409: OpenApiResponse(Error, description="A lift with no stop to lift."),
        },
    )
    def post(self, request: Request) -> Response:
        incoming = EmergencyStopInput(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        user = request.user if getattr(request.user, "pk", None) and not self.api_key_id else None
        if data["action"] == "trip":
            emergency_stop_trip(
                tenant=self.tenant,
                reason=data["reason"] or "tripped through the API",
                duration_minutes=data["duration_minutes"],
                user=user,
                api_key_id=self.api_key_id,
            )
        elif (
            emergency_stop_lift(
                tenant=self.tenant, user=user, api_key_id=self.api_key_id, reason=data["reason"]
            )
            is None
        ):
            raise Conflict("There is no emergency stop to lift for this tenant.", field="action")
        return Response(self._reply())
