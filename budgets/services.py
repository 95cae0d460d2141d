"""Writes of the budgets app: budgets, and where a budget stands (the emergency stop is in
budgets.emergency_stop, the pre-flight check in budgets.check)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog
from django.db import transaction
from django.db.models import Sum

from budgets import config as tenant_config
from budgets.config import BudgetSpec

# Moved to budgets.emergency_stop; named here too until the callers outside budgets and alerts
# (budgets.updates, the dashboard, a few tests) import them from there.
from budgets.emergency_stop import emergency_stop_active as emergency_stop_active
from budgets.emergency_stop import emergency_stop_check as emergency_stop_check
from budgets.emergency_stop import emergency_stop_lift as emergency_stop_lift
from budgets.emergency_stop import emergency_stop_trip as emergency_stop_trip
from budgets.models import Budget
from budgets.periods import Window
from budgets.periods import budget_window as budget_window  # alerts and selectors import it here
from costmon.core.exceptions import DomainError
from costmon.core.models import ApiKey, Tenant
from costmon.core.tenancy import tenant_context
from usage.models import Dimension, UsageEvent
from usage.pricing import candidate_names
from usage.selectors import named, rollups_of, with_tag

log = structlog.get_logger(__name__)

# --- budgets --------------------------------------------------------------------------------

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


# --- where a budget stands ------------------------------------------------------------------


@dataclass
class BudgetState:
    spec: BudgetSpec
    window: Window
    spent: int
    reserved: int = 0
    end_user: str = ""

    @property
    def percent(self) -> Decimal:
        return (Decimal(self.spent) * 100 / self.spec.limit_nanos).quantize(Decimal("0.01"))

    @property
    def remaining(self) -> int:
        return max(0, self.spec.limit_nanos - self.spent - self.reserved)

    @property
    def status(self) -> str:
        return budget_status(self.percent, self.spec.thresholds)


def budget_status(percent: Decimal, thresholds: Sequence[Decimal]) -> str:
    if percent >= 100:
        return "exceeded"
    if len(thresholds) > 1 and percent >= thresholds[-1]:
        return "critical"
    if thresholds and percent >= thresholds[0]:
        return "warning"
    return "ok"


def spent_from_database(
    *, tenant: Tenant, spec: BudgetSpec, window: Window, end_user: str = ""
) -> int:
    """A budget's spend in its window from PostgreSQL: the fallback when Redis is away."""
    with tenant_context(tenant):
        if spec.scope == "tag":
            name, _, value = spec.value.partition("=")
            qs: Any = with_tag(
                UsageEvent.objects.for_tenant(tenant).filter(
                    occurred_at__gte=window.start, occurred_at__lt=window.end
                ),
                (name, value),
            )
        else:
            # End users and keys are in the full rollups only; the rest reads the by-model ones.
            by_end_user = spec.scope in ("end_user", "every_end_user", "api_key")
            qs = rollups_of(tenant, by_end_user=by_end_user).filter(
                hour__gte=window.start, hour__lt=window.end
            )
            if spec.scope in ("end_user", "every_end_user"):
                qs = qs.filter(named(tenant, "end_user", end_user or spec.value))
            elif spec.scope == "api_key":
                qs = qs.filter(api_key_id=spec.api_key_id)
            elif spec.scope == "provider":
                qs = qs.filter(provider__value=spec.value)
            elif spec.scope == "operation":
                qs = qs.filter(operation__value=spec.value)
            elif spec.scope == "model":
                models = [
                    pk
                    for pk, name in Dimension.objects.for_tenant(tenant)
                    .filter(kind=Dimension.Kind.MODEL)
                    .values_list("pk", "value")
                    if spec.value in candidate_names(name)
                ]
                qs = qs.filter(model_id__in=models)
        return int(qs.aggregate(s=Sum("cost_nanos"))["s"] or 0)
