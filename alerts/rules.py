"""What each kind of alert rule watches: one evaluator per kind, returning the conditions that
hold now. Reads only (rollups, counters); raising and notifying is `alerts.services`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Sum
from django.db.models.functions import Coalesce

from alerts.models import AlertRule
from alerts.reads import usage_totals
from budgets.models import Budget
from budgets.periods import budget_window
from budgets.scopes import SCOPES
from budgets.selectors import budget_views
from budgets.standing import budget_status
from costmon.core.models import Tenant
from costmon.core.money import format_money, usd_to_nanos
from costmon.core.periods import elapsed_share, period_range, project, tenant_zone
from usage.anomalies import HIGH, anomaly_band
from usage.links import drilldown_url
from usage.selectors import (
    UsageFilters,
    held_syncs,
    models_used,
    named,
    price_syncs_since,
    rollups_of,
)
from usage.user_sums import kept_by_store, named_user_costs, user_totals


@dataclass(frozen=True)
class Condition:
    scope: str  # what the alert is about (dedup key part)
    period: str  # which period instance (dedup key part)
    level: str  # how bad (dedup key part): above, warning, critical, exceeded, ...
    title: str
    text: str
    figure: str = ""
    threshold: str = ""
    link: str = ""
    severity: str | None = None  # None: the rule's
    period_label: str = ""  # "2026-11-21", "November 2026", for people


def dashboard_link(tenant: Tenant, path: str = "") -> str:
    """Where the dashboard shows it (the dashboard keeps these paths)."""
    return f"{settings.SITE_URL}/t/{tenant.slug}/{path}"


DEFAULT_CACHE_HIT_TARGET = Decimal(70)
DEFAULT_ERROR_RATE = Decimal(5)


def _percent(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.1'))}%"


def _filters(rule: AlertRule) -> UsageFilters:
    tag = None
    if rule.tag and "=" in rule.tag:
        name, _, value = rule.tag.partition("=")
        tag = (name, value)
    return UsageFilters(
        provider=rule.provider.lower() or None,
        model=rule.model or None,
        operation=rule.operation or None,
        end_user=rule.end_user or None,
        tag=tag,
    )


def filter_label(rule: AlertRule) -> str:
    parts = [
        f"{name} {value}"
        for name, value in (
            ("provider", rule.provider),
            ("model", rule.model),
            ("operation", rule.operation),
            ("end user", rule.end_user),
            ("tag", rule.tag),
        )
        if value
    ]
    return f" for {', '.join(parts)}" if parts else ""


def _scope(rule: AlertRule) -> str:
    return (
        "|".join([rule.provider, rule.model, rule.operation, rule.end_user, rule.tag]) or "tenant"
    )


_PERIOD_WORDS = {"day": "today", "week": "this week", "month": "this month"}


def evaluate_spend(rule: AlertRule, tenant: Tenant, now: datetime) -> list[Condition]:
    period = rule.period if rule.period in _PERIOD_WORDS else "day"
    window = period_range(tenant=tenant, period=period, now=now)
    totals = usage_totals(tenant=tenant, time_range=window, filters=_filters(rule))
    spent = int(totals["cost_nanos"])
    limit = usd_to_nanos(rule.threshold_usd or Decimal(0))
    if spent <= limit:
        return []
    words = _PERIOD_WORDS[period]
    return [
        Condition(
            scope=_scope(rule),
            period=f"{window.start.astimezone(window.tz):%Y%m%d}",
            period_label=_label(window.start.astimezone(window.tz), period),
            level="above",
            title=f"Spend {words}{filter_label(rule)} is above {format_money(limit)}",
            text=f"{tenant.name} has spent {format_money(spent)} {words}{filter_label(rule)}, above the {format_money(limit)} threshold.",
            figure=format_money(spent),
            threshold=format_money(limit),
            link=dashboard_link(tenant),
        )
    ]


_BUDGET_SEVERITY = {"warning": "warning", "critical": "critical", "exceeded": "critical"}


def evaluate_budgets(rule: AlertRule, tenant: Tenant, now: datetime) -> list[Condition]:
    """Each budget past a threshold, at the highest level it reached (each level alerts once a
    period). A budget on every end user is watched for each end user separately."""
    budgets = list(
        Budget.objects.for_tenant(tenant).filter(is_active=True).select_related("api_key")
    )
    conditions = []
    for view in budget_views(
        tenant=tenant, budgets=[b for b in budgets if not SCOPES[b.scope].per_end_user], now=now
    ):
        state = view.state
        if state.status != "ok":
            conditions.append(
                _budget_condition(
                    tenant,
                    view.budget,
                    state.status,
                    state.percent,
                    state.spent,
                    state.window.key,
                    "",
                )
            )
    tz = tenant_zone(tenant)
    for budget in (b for b in budgets if SCOPES[b.scope].per_end_user):
        window = budget_window(
            period=budget.period, rolling_days=budget.rolling_days, now=now, tz=tz
        )
        limit = usd_to_nanos(budget.limit_usd)
        for end_user, spent in named_user_costs(tenant, window.start, window.end):
            percent = (Decimal(spent) * 100 / limit).quantize(Decimal("0.01"))
            status = budget_status(percent, budget.sorted_thresholds)
            if status != "ok":
                conditions.append(
                    _budget_condition(tenant, budget, status, percent, spent, window.key, end_user)
                )
    return conditions


def _budget_condition(
    tenant: Tenant,
    budget: Budget,
    status: str,
    percent: Decimal,
    spent: int,
    period: str,
    end_user: str,
) -> Condition:
    who = f" for {end_user}" if end_user else ""
    limit = usd_to_nanos(budget.limit_usd)
    period_label = f"{budget.get_period_display()} from {period[:4]}-{period[4:6]}-{period[6:]}"
    word = {
        "warning": "passed its warning threshold",
        "critical": "passed its critical threshold",
        "exceeded": "is exhausted",
    }[status]
    return Condition(
        scope=f"budget:{budget.pk}" + (f":{end_user}" if end_user else ""),
        period=period,
        period_label=period_label,
        level=status,
        title=f"Budget '{budget.name}'{who} {word} ({_percent(percent)})",
        text=(
            f"Budget '{budget.name}'{who} has used {format_money(spent)} of {format_money(limit)} this "
            f"{budget.get_period_display()} period ({_percent(percent)})."
        ),
        figure=format_money(spent),
        threshold=format_money(limit),
        link=dashboard_link(tenant, f"budgets/{budget.pk}/"),
        severity=_BUDGET_SEVERITY[status],
    )


def evaluate_projection(rule: AlertRule, tenant: Tenant, now: datetime) -> list[Condition]:
    window = period_range(tenant=tenant, period="month", now=now)
    elapsed, total = elapsed_share(start=window.start, end=window.end, now=now)
    if elapsed * 31 < total:  # less than a day of data: a projection would be noise
        return []
    spent = int(
        usage_totals(tenant=tenant, time_range=window, filters=_filters(rule))["cost_nanos"]
    )
    projected = project(spent, start=window.start, end=window.end, now=now)
    limit = usd_to_nanos(rule.threshold_usd or Decimal(0))
    if projected <= limit:
        return []
    month = f"{window.start.astimezone(window.tz):%B %Y}"
    return [
        Condition(
            scope=_scope(rule),
            period=f"{window.start.astimezone(window.tz):%Y%m}",
            period_label=month,
            level="projected",
            title=f"Spend{filter_label(rule)} is on track for {format_money(projected)} in {month}",
            text=(
                f"At the month-to-date rate ({format_money(spent)} so far), {tenant.name} will spend about "
                f"{format_money(projected)} in {month}, above the {format_money(limit)} threshold."
            ),
            figure=format_money(projected),
            threshold=format_money(limit),
            link=dashboard_link(tenant),
        )
    ]


def evaluate_spike(rule: AlertRule, tenant: Tenant, now: datetime) -> list[Condition]:
    """The last complete hour against the same hour of the trailing days."""
    hour_end = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    hour_start = hour_end - timedelta(hours=1)
    field = "cost_nanos" if rule.metric == AlertRule.Metric.COST else "input_tokens"
    flt = _filters(rule)
    base = rollups_of(tenant, by_end_user=flt.end_user is not None)
    for name in ("provider", "model", "operation", "end_user"):
        if getattr(flt, name):
            base = base.filter(named(tenant, name, getattr(flt, name)))

    def amount(start: datetime) -> int:
        if flt.end_user is not None and kept_by_store():  # summed by the store (user_sums)
            found = user_totals(tenant, start, start + timedelta(hours=1), replace(flt, tag=None))
            sums = {"a": found[field], "b": found["output_tokens"]}
        else:
            sums = base.filter(hour=start).aggregate(
                a=Coalesce(Sum(field), 0), b=Coalesce(Sum("output_tokens"), 0)
            )
        return int(sums["a"]) + (int(sums["b"]) if rule.metric == AlertRule.Metric.TOKENS else 0)

    current = amount(hour_start)
    past = [amount(hour_start - timedelta(days=d)) for d in range(1, rule.trailing_days + 1)]
    average = sum(past) / len(past)
    minimum = (
        usd_to_nanos(rule.min_volume)
        if rule.metric == AlertRule.Metric.COST
        else int(rule.min_volume)
    )
    if current < minimum or current <= average * float(rule.multiplier):
        return []
    show = format_money if rule.metric == AlertRule.Metric.COST else (lambda n: f"{n:,} tokens")
    ratio = f"{current / average:.1f}x" if average else "new"
    local = hour_start.astimezone(tenant_zone(tenant))
    return [
        Condition(
            scope=_scope(rule),
            period=f"{hour_start:%Y%m%d%H}",
            period_label=f"{local:%Y-%m-%d %H:00}",
            level="spike",
            title=f"{rule.get_metric_display().capitalize()} spike{filter_label(rule)}: {show(current)} in the hour from {local:%H:%M} ({ratio} usual)",
            text=(
                f"{show(current)} in the hour from {local:%Y-%m-%d %H:%M}, against {show(int(average))} on average "
                f"at that hour over the last {rule.trailing_days} days (alert above {rule.multiplier}x)."
            ),
            figure=show(current),
            threshold=f"{rule.multiplier}x {show(int(average))}",
            link=dashboard_link(tenant),
        )
    ]


def anomaly_weeks(rule: AlertRule) -> int:
    """An anomaly rule learns from the whole weeks in its trailing days (28 days: 4 weeks)."""
    return rule.trailing_days // 7


def evaluate_anomaly(rule: AlertRule, tenant: Tenant, now: datetime) -> list[Condition]:
    """The last complete hour against the band learned from the same hour of the week in the
    rule's last whole weeks (usage.anomalies): alerts when above it, with `multiplier` as the
    sensitivity and `min_volume` as the least amount that may alert."""
    hour_end = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    hour_start = hour_end - timedelta(hours=1)
    cost = rule.metric == AlertRule.Metric.COST
    minimum = usd_to_nanos(rule.min_volume) if cost else int(rule.min_volume)
    weeks = anomaly_weeks(rule)
    if weeks < 1:
        return []
    (point,) = anomaly_band(
        tenant=tenant,
        start=hour_start,
        end=hour_end,
        filters=_filters(rule),
        metric="cost" if cost else "tokens",
        weeks=weeks,
        sensitivity=rule.multiplier,
        floor=minimum,
    )
    baseline = point.baseline
    if point.flag != HIGH or baseline is None or point.value < minimum:
        return []
    show = format_money if cost else (lambda n: f"{n:,} tokens")
    usual = baseline.usual
    local = hour_start.astimezone(tenant_zone(tenant))
    return [
        Condition(
            scope=_scope(rule),
            period=f"{hour_start:%Y%m%d%H}",
            period_label=f"{local:%Y-%m-%d %H:00}",
            level="anomaly",
            title=(
                f"Unusual {rule.get_metric_display().lower()}{filter_label(rule)}: {show(point.value)} in "
                f"the hour from {local:%a %H:%M}, usually {show(usual)}"
            ),
            text=(
                f"{show(point.value)} in the hour from {local:%Y-%m-%d %H:%M}, above the usual "
                f"band for {local:%A} {local:%H}:00 (median {show(usual)}, up to "
                f"{show(baseline.upper)}, learned from the last {baseline.weeks} weeks)."
            ),
            figure=show(point.value),
            threshold=show(baseline.upper),
            link=dashboard_link(tenant),
        )
    ]


def _label(start: datetime, period: str) -> str:
    if period == "month":
        return f"{start:%B %Y}"
    if period == "week":
        return f"week of {start:%Y-%m-%d}"
    return f"{start:%Y-%m-%d}"


def _rates(rule: AlertRule, tenant: Tenant, now: datetime) -> tuple[str, dict[str, int]]:
    window = period_range(tenant=tenant, period="day", now=now)
    return f"{window.start.astimezone(window.tz):%Y%m%d}", usage_totals(
        tenant=tenant, time_range=window, filters=_filters(rule)
    )


def _rate_rule(
    rule: AlertRule, tenant: Tenant, now: datetime, *, count: str, default: Decimal, low: bool
) -> list[Condition]:
    """Today's share of calls with `count` against the rule's percentage: alerting when it is
    below (`low`) or above it, once there are at least `min_volume` calls."""
    period, totals = _rates(rule, tenant, now)
    calls = int(totals["calls"])
    threshold = rule.threshold_percent if rule.threshold_percent is not None else default
    if calls == 0 or calls < int(rule.min_volume):
        return []
    rate = Decimal(int(totals[count]) * 100) / calls
    if (rate >= threshold) if low else (rate <= threshold):
        return []
    if low:
        title = f"Cache hit rate today{filter_label(rule)} is {_percent(rate)}, below {_percent(threshold)}"
        text = f"{totals[count]} of {calls} calls today were answered from the cache ({_percent(rate)}); the target is {_percent(threshold)}."
    else:
        title = (
            f"Error rate today{filter_label(rule)} is {_percent(rate)}, above {_percent(threshold)}"
        )
        text = f"{totals[count]} of {calls} calls today failed ({_percent(rate)}); the threshold is {_percent(threshold)}."
    return [
        Condition(
            scope=_scope(rule),
            period=period,
            period_label=f"{period[:4]}-{period[4:6]}-{period[6:]}",
            level="below" if low else "above",
            title=title,
            text=text,
            figure=_percent(rate),
            threshold=_percent(threshold),
            link=dashboard_link(tenant),
        )
    ]


def evaluate_cache_hit_rate(rule: AlertRule, tenant: Tenant, now: datetime) -> list[Condition]:
    return _rate_rule(
        rule, tenant, now, count="cache_hits", default=DEFAULT_CACHE_HIT_TARGET, low=True
    )


def evaluate_error_rate(rule: AlertRule, tenant: Tenant, now: datetime) -> list[Condition]:
    return _rate_rule(rule, tenant, now, count="errors", default=DEFAULT_ERROR_RATE, low=False)


def evaluate_unpriced(rule: AlertRule, tenant: Tenant, now: datetime) -> list[Condition]:
    window = period_range(tenant=tenant, period="day", now=now)
    rows = (
        rollups_of(tenant)
        .filter(hour__gte=window.start, hour__lt=window.end, unpriced_calls__gt=0)
        .values_list("provider__value", "model__value")
        .annotate(calls=Sum("unpriced_calls"))
    )
    period = f"{window.start.astimezone(window.tz):%Y%m%d}"
    return [
        Condition(
            scope=f"model:{provider}/{model}",
            period=period,
            period_label=f"{period[:4]}-{period[4:6]}-{period[6:]}",
            level="seen",
            title=f"Unpriced model seen: {provider}/{model}",
            text=(
                f"{calls} call(s) to {provider}/{model} today have no price in the catalog, so their cost "
                "counts as $0. Add the price (admin, or load_prices) and they are priced at once."
            ),
            figure=f"{calls} calls",
            # Any model name that was ever accepted has its page (usage.links).
            link=f"{settings.SITE_URL}{drilldown_url(tenant.slug, 'model', model)}",
        )
        for provider, model, calls in rows
    ]


def _rate_change(change: dict[str, Any]) -> str:
    old, new = change.get("old", {}), change["new"]
    parts = []
    for name, label in (("input_per_mtok", "input"), ("output_per_mtok", "output")):
        if old.get(name) != new.get(name) or not old:
            before = f"${old[name]} → " if old.get(name) is not None else ""
            parts.append(f"{label} {before}${new.get(name) or 0}")
    tier = "" if change["service_tier"] == "standard" else f" ({change['service_tier']})"
    what = ", ".join(parts) or "other rates"
    return f"{change['provider']}/{change['model']}{tier}: {what} per 1M tokens"


def evaluate_price_changed(rule: AlertRule, tenant: Tenant, now: datetime) -> list[Condition]:
    """One alert per catalog load of the last day that added or changed prices (since the rule
    exists), naming the models the tenant used in the last 30 days first."""
    since = max(now - timedelta(days=1), rule.created_at)
    used = models_used(tenant=tenant, since=now - timedelta(days=30))
    held = held_syncs(tenant=tenant)
    conditions = []
    for sync in price_syncs_since(tenant=tenant, since=since):
        changes = [*sync.details.get("changed", []), *sync.details.get("added", [])]
        mine = [c for c in changes if (c["provider"], c["model"]) in used]
        lines = [_rate_change(c) for c in mine + [c for c in changes if c not in mine]]
        shown = "\n".join(f"- {line}" for line in lines[:15])
        more = (
            f"\n… and {len(lines) - 15} more (Price syncs in the admin)." if len(lines) > 15 else ""
        )
        waiting = (
            "\nThese changes wait for staff approval before they apply to this tenant."
            if sync.pk in held
            else ""
        )
        day = sync.started_at.astimezone(tenant_zone(tenant))
        conditions.append(
            Condition(
                scope=f"prices:{sync.pk}",
                period=f"{day:%Y%m%d}",
                period_label=f"{day:%Y-%m-%d}",
                level="changed",
                title=(
                    f"Prices changed: {sync.changed} changed, {sync.added} added"
                    f" ({len(mine)} of them models you use)"
                ),
                text=(
                    f"The price catalog was updated from {sync.source} "
                    f"({sync.catalog_version or sync.format}). New prices apply to calls "
                    f"from {day:%Y-%m-%d %H:%M} on; earlier calls keep theirs.\n{shown}{more}"
                    f"{waiting}"
                ),
                figure=f"{sync.changed + sync.added} prices",
                link=dashboard_link(tenant),
            )
        )
    return conditions


EVALUATORS: dict[str, Callable[[AlertRule, Tenant, datetime], list[Condition]]] = {
    AlertRule.Kind.SPEND: evaluate_spend,
    AlertRule.Kind.BUDGET: evaluate_budgets,
    AlertRule.Kind.PROJECTED: evaluate_projection,
    AlertRule.Kind.SPIKE: evaluate_spike,
    AlertRule.Kind.CACHE_HIT_RATE: evaluate_cache_hit_rate,
    AlertRule.Kind.ERROR_RATE: evaluate_error_rate,
    AlertRule.Kind.UNPRICED: evaluate_unpriced,
    AlertRule.Kind.PRICE_CHANGED: evaluate_price_changed,
    AlertRule.Kind.ANOMALY: evaluate_anomaly,
}

# Evaluated every minute; the others hourly (projections and spikes look at whole hours).
FREQUENT_KINDS = (
    AlertRule.Kind.SPEND,
    AlertRule.Kind.BUDGET,
    AlertRule.Kind.CACHE_HIT_RATE,
    AlertRule.Kind.ERROR_RATE,
    AlertRule.Kind.UNPRICED,
    AlertRule.Kind.PRICE_CHANGED,
)
HOURLY_KINDS = (AlertRule.Kind.PROJECTED, AlertRule.Kind.SPIKE, AlertRule.Kind.ANOMALY)
