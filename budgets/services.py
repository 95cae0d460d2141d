"""Writes of the budgets app: budgets (the emergency stop is in budgets.emergency_stop, the
pre-flight check in budgets.check, where a budget stands in budgets.standing)."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from budgets import config as tenant_config

# Moved to budgets.emergency_stop; named here too until the callers outside budgets and alerts
# (budgets.updates, the dashboard, a few tests) import them from there.
from budgets.emergency_stop import emergency_stop_active as emergency_stop_active
from budgets.emergency_stop import emergency_stop_check as emergency_stop_check
from budgets.emergency_stop import emergency_stop_lift as emergency_stop_lift
from budgets.emergency_stop import emergency_stop_trip as emergency_stop_trip
from budgets.models import Budget
from costmon.core.exceptions import DomainError
from costmon.core.models import ApiKey, Tenant
from costmon.core.tenancy import tenant_context

BUDGET_FIELDS = (
    "name",
    "scope",
    "scope_value",
    "api_key",
    "period",
    "rolling_days",
    "limit_usd",
    "thresholds",
    "enforcement",
    "suggested_model",
    "fail_mode",
    "is_active",
)


def budget_create(*, tenant: Tenant, data: dict[str, Any]) -> Budget:
    budget = Budget(tenant=tenant)
    return _budget_save(budget, data)


def budget_update(*, budget: Budget, data: dict[str, Any]) -> Budget:
    return _budget_save(budget, data)


def budget_delete(*, budget: Budget) -> None:
    tenant_id = budget.tenant_id
    with tenant_context(tenant_id):
        budget.delete()
    tenant_config.bump_now_and_after_commit(tenant_id)


def _budget_save(budget: Budget, data: dict[str, Any]) -> Budget:
    unknown = set(data) - set(BUDGET_FIELDS)
    if unknown:
        raise DomainError(f"Unknown field {', '.join(sorted(unknown))}.", field=sorted(unknown)[0])
    for name, value in data.items():
        setattr(budget, name, value)
    if budget.scope not in Budget.VALUE_SCOPES and "scope_value" not in data:
        budget.scope_value = ""
    if budget.scope != Budget.Scope.API_KEY and "api_key" not in data:
        budget.api_key = None
    if budget.period != Budget.Period.ROLLING and "rolling_days" not in data:
        budget.rolling_days = None
    budget.full_clean()
    with tenant_context(budget.tenant_id), transaction.atomic():
        budget.save()
    # Checks in every process pick the change up at once; spend needs no seeding (counters
    # hold the period's real spend whatever the budget).
    tenant_config.bump_now_and_after_commit(budget.tenant_id)
    return budget


def api_key_for_budget(*, tenant: Tenant, key_id: Any) -> ApiKey:
    key = (
        ApiKey.objects.for_tenant(tenant).filter(pk=key_id).first()
        if str(key_id).isdigit()
        else None
    )
    if key is None:
        raise DomainError(f"No API key {key_id} in this tenant.", field="api_key")
    return key
