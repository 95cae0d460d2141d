"""Budgets API: list, create, read, change and delete budgets."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from budgets.models import Budget
from budgets.openapi import (
    BudgetList,
    BudgetOut,
)
from budgets.scopes import SCOPES
from budgets.selectors import BudgetView, budget_views
from budgets.services import api_key_for_budget, budget_create, budget_delete, budget_update
from budgets.standing import BudgetState, budget_status
from costmon.core.exceptions import NotFound
from costmon.core.fields import (
    StrictBooleanField,
    StrictCharField,
    StrictChoiceField,
    StrictDecimalField,
    StrictIntegerField,
)
from costmon.core.models import ApiKey
from costmon.core.money import format_usd
from costmon.core.scoping import TenantAPIView


def iso_time(moment: Any) -> str | None:
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
        "resets_at": iso_time(state.window.end),
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
            "period_start": iso_time(view.state.window.start),
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
