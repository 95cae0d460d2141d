"""The budget page's figures: the budgets a tenant has, and one budget's spend per day with
its month-end outlook."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from django.db.models import QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDay

from budgets.models import Budget
from budgets.scopes import tag_of
from budgets.selectors import BudgetView, budget_views
from costmon.core.models import Tenant
from costmon.core.periods import tenant_zone
from usage.event_sums import event_groups, time_range
from usage.models import Dimension
from usage.pricing import candidate_names
from usage.selectors import UsageFilters, named, rollups_of
from usage.user_sums import kept_by_store, user_sums


def dashboard_budgets(*, tenant: Tenant, budget_id: int | None = None) -> list[BudgetView]:
    """Active budgets with spend, status and projection (one budget when `budget_id` is given,
    none when it is not this tenant's)."""
    qs = Budget.objects.for_tenant(tenant).select_related("api_key").order_by("name", "pk")
    qs = qs.filter(pk=budget_id) if budget_id is not None else qs.filter(is_active=True)
    budgets = list(qs)
    return budget_views(tenant=tenant, budgets=budgets) if budgets else []


@dataclass(frozen=True)
class BurnDown:
    days: list[date]
    daily_nanos: list[int]
    period_end: date  # the window's last local day


def budget_daily_spend(*, tenant: Tenant, view: BudgetView) -> BurnDown:
    """What the budget's scope spent on each local day of its window so far."""
    state = view.state
    spec = state.spec
    window = state.window
    tz = tenant_zone(tenant)
    days = list(window.days)
    last = (window.end.astimezone(tz) - timedelta(microseconds=1)).date()
    if spec.scope == Budget.Scope.TAG:
        # Tags are on the events only: summed per local day by the event store.
        groups = event_groups(
            tenant=tenant,
            time_range=time_range(window.start, window.end, tz),
            filters=UsageFilters(tag=tag_of(spec)),
            bucket="day",
        )
        per_day = {
            g.bucket.astimezone(tz).date(): g.sums["cost_nanos"]
            for g in groups
            if g.bucket is not None
        }
        return BurnDown(days=days, daily_nanos=[per_day.get(d, 0) for d in days], period_end=last)
    by_end_user = spec.scope in (
        Budget.Scope.END_USER,
        Budget.Scope.EVERY_END_USER,
        Budget.Scope.API_KEY,
    )
    if by_end_user and kept_by_store():
        # With a store that keeps the sums by end user and key, summed there (`usage.user_sums`).
        key = spec.scope == Budget.Scope.API_KEY
        who = None if key else UsageFilters(end_user=state.end_user or spec.value)
        per_day = {
            g.bucket.astimezone(tz).date(): g.sums["cost_nanos"]
            for g in user_sums(
                tenant,
                window.start,
                window.end,
                by=("api_key",) if key else (),
                filters=who,
                bucket="day",
                tz=tz,
            )
            if g.bucket is not None and (not key or g.key[0] == (spec.api_key_id or 0))
        }
        return BurnDown(days=days, daily_nanos=[per_day.get(d, 0) for d in days], period_end=last)
    qs: QuerySet[Any] = rollups_of(tenant, by_end_user=by_end_user).filter(
        hour__gte=window.start, hour__lt=window.end
    )
    if spec.scope in (Budget.Scope.END_USER, Budget.Scope.EVERY_END_USER):
        qs = qs.filter(named(tenant, "end_user", state.end_user or spec.value))
    elif spec.scope == Budget.Scope.API_KEY:
        qs = qs.filter(api_key_id=spec.api_key_id or 0)
    elif spec.scope == Budget.Scope.PROVIDER:
        qs = qs.filter(provider__value=spec.value)
    elif spec.scope == Budget.Scope.OPERATION:
        qs = qs.filter(operation__value=spec.value)
    elif spec.scope == Budget.Scope.MODEL:
        # As the budget counts: every dated name of the model.
        models = [
            pk
            for pk, model in Dimension.objects.for_tenant(tenant)
            .filter(kind=Dimension.Kind.MODEL)
            .values_list("pk", "value")
            if spec.value in candidate_names(model)
        ]
        qs = qs.filter(model_id__in=models)
    per_day = {
        r["day"].date(): int(r["cost"])
        for r in qs.annotate(day=TruncDay("hour", tzinfo=tz))
        .values("day")
        .annotate(cost=Coalesce(Sum("cost_nanos"), 0))
    }
    return BurnDown(days=days, daily_nanos=[per_day.get(d, 0) for d in days], period_end=last)
