"""Where a budget stands: its spend, reservations and status in a window (plain data), and its
spend read from PostgreSQL when the counters cannot be used."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import Sum

from budgets.config import BudgetSpec
from budgets.periods import Window
from budgets.scopes import SCOPES, tag_of
from costmon.core.models import Tenant
from costmon.core.tenancy import tenant_context
from usage.event_sums import event_totals, time_range
from usage.selectors import UsageFilters, rollups_of
from usage.user_sums import kept_by_store, key_cost, user_totals


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
    """A budget's spend in its window from PostgreSQL's rollups, or for a tag from the events
    in whichever store keeps them: the fallback when Redis is away."""
    scope = SCOPES[spec.scope]
    with tenant_context(tenant):
        if scope.spend_rows == "events":
            return event_totals(
                tenant=tenant,
                time_range=time_range(window.start, window.end),
                filters=UsageFilters(tag=tag_of(spec)),
            )["cost_nanos"]
        # End users and keys are in the full rollups only, or with a store that keeps their
        # sums in the store (`usage.user_sums`); the rest reads the by-model rollups.
        by_end_user = scope.spend_rows == "rollups_by_end_user"
        if by_end_user and kept_by_store():
            if scope.name == "api_key":
                return key_cost(tenant, window.start, window.end, spec.api_key_id)
            only = UsageFilters(end_user=end_user or spec.value)
            return user_totals(tenant, window.start, window.end, only)["cost_nanos"]
        rows: Any = rollups_of(tenant, by_end_user=by_end_user).filter(
            hour__gte=window.start, hour__lt=window.end
        )
        rows = scope.narrow(tenant, spec, end_user, rows)
        return int(rows.aggregate(s=Sum("cost_nanos"))["s"] or 0)
