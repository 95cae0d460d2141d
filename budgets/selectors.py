"""Reads of the budgets app."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q, Sum
from django.utils import timezone

from budgets import config as tenant_config
from budgets import counters
from budgets import redis as bredis
from budgets.models import Budget, EmergencyStop
from budgets.periods import budget_window
from budgets.scopes import SCOPES
from budgets.standing import BudgetState, spent_from_database
from costmon.core.models import Tenant
from costmon.core.periods import LATEST, project, tenant_zone
from usage.event_sums import dimension_names
from usage.models import Dimension, HourlyRollup
from usage.user_sums import kept_by_store, user_sums


@dataclass
class BudgetView:
    budget: Budget
    state: BudgetState
    projected_nanos: int | None
    source: str


def budget_views(
    *, tenant: Tenant, budgets: list[Budget] | None = None, now: datetime | None = None
) -> list[BudgetView]:
    """Each budget with its spend this period, status and projected end-of-period spend.

    Spend comes from the Redis counters (constant time per budget) when they are trusted,
    else from the rollups. For a budget on every end user, the figures are those of the end
    user who spent most this period.
    """
    now = now or timezone.now()
    tz = tenant_zone(tenant)
    if budgets is None:
        budgets = list(
            Budget.objects.for_tenant(tenant).select_related("api_key").order_by("name", "pk")
        )
    states: list[BudgetState] = []
    default_fail_mode = tenant_config.for_tenant(tenant.pk).default_fail_mode
    for budget in budgets:
        spec = tenant_config.spec_of(budget, default_fail_mode=default_fail_mode)
        window = budget_window(period=spec.period, rolling_days=spec.rolling_days, now=now, tz=tz)
        end_user = _top_end_user(tenant, window.start) if SCOPES[spec.scope].per_end_user else ""
        states.append(BudgetState(spec=spec, window=window, spent=0, end_user=end_user))
    source = _fill_spend(tenant, states)
    views = []
    for budget, state in zip(budgets, states, strict=True):
        projected = None
        if state.spec.period != "rolling":
            projected = project(
                state.spent, start=state.window.start, end=state.window.end, now=now
            )
        views.append(
            BudgetView(budget=budget, state=state, projected_nanos=projected, source=source)
        )
    return views


def _top_end_user(tenant: Tenant, since: datetime) -> str:
    """The end user who spent most since `since` (calls without an end user do not count)."""
    # Grouped by the dictionary id and named afterwards, with the empty name excluded by its
    # id: a join to the names before grouping took ten times as long on a month of rollups.
    unnamed = (
        Dimension.objects.for_tenant(tenant)
        .filter(kind=Dimension.Kind.END_USER, value="")
        .values_list("pk", flat=True)
        .first()
    )
    if kept_by_store():
        return _top_end_user_in_store(tenant, since, unnamed)
    row = (
        HourlyRollup.objects.for_tenant(tenant)
        .filter(hour__gte=since)
        .exclude(end_user_id=unnamed or 0)
        .values("end_user_id")
        .annotate(cost=Sum("cost_nanos"))
        .order_by("-cost", "end_user_id")
        .first()
    )
    if row is None:
        return ""
    return str(
        Dimension.objects.for_tenant(tenant)
        .values_list("value", flat=True)
        .get(pk=row["end_user_id"])
    )


def _top_end_user_in_store(tenant: Tenant, since: datetime, unnamed: int | None) -> str:
    """`_top_end_user` from an event store that keeps the sums by end user (`usage.user_sums`)."""
    spent = [
        (-g.sums["cost_nanos"], g.key[0])
        for g in user_sums(tenant, since, LATEST)
        if g.key[0] is not None and g.key[0] != unnamed
    ]
    if not spent:
        return ""
    pk = min(spent)[1]
    return dimension_names(tenant, [pk]).get(pk or 0, "")


def _fill_spend(tenant: Tenant, states: list[BudgetState]) -> str:
    r = bredis.client()
    if r is not None and states:
        try:
            if counters.counters_trusted(r, tenant.pk):
                requests = [
                    (
                        [counters.bucket_key(tenant.pk, b) for b in s.window.buckets],
                        counters.budget_field(s.spec, end_user=s.end_user),
                    )
                    for s in states
                ]
                for state, spent in zip(states, counters.read_fields(r, requests), strict=True):
                    state.spent = spent
                return "redis"
        except bredis.RedisError as exc:
            bredis.failed(exc)
    for state in states:
        state.spent = spent_from_database(
            tenant=tenant, spec=state.spec, window=state.window, end_user=state.end_user
        )
    return "database"


def emergency_stop_history(*, tenant: Tenant, limit: int = 50) -> list[EmergencyStop]:
    return list(
        EmergencyStop.objects.unscoped()
        .filter(Q(tenant=tenant) | Q(tenant__isnull=True))
        .select_related("tripped_by", "lifted_by", "tripped_by_key", "lifted_by_key")
        .order_by("-tripped_at")[:limit]
    )
