"""One scrape: the figures read from the database, plus every web process's own metrics.

Label sets stay bounded by what staff configure: tenants, providers, models, budgets, channel
kinds. There is no end-user label anywhere; a budget on every end user is one series (the
figures of its top spender, as the API shows).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from django.conf import settings
from django.db.models import Count, Sum
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from alerts.models import Channel, Notification
from budgets.models import Budget, CounterCorrection, EmergencyStop
from budgets.selectors import budget_views
from costmon.core import instruments
from costmon.core.models import Tenant
from costmon.core.money import NANOS_PER_USD
from costmon.core.tenancy import tenant_context, unscoped
from costmon.web.prometheus.totals import FIELDS, usage_totals
from usage.models import Dimension

TOKEN_KINDS = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cached_input", "cached_input_tokens"),
    ("cache_write", "cache_write_tokens"),
    ("reasoning", "reasoning_tokens"),
)
_USAGE_LABELS = ["tenant", "provider", "model"]
_BUDGET_LABELS = ["tenant", "budget_id", "budget", "scope", "period"]


def usd(nanos: int) -> float:
    # The exposition format has only floats: sums stay integers until this last step.
    return nanos / NANOS_PER_USD


def scrape(*, now: datetime | None = None) -> bytes:
    """The whole exposition, in Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    if settings.PROMETHEUS_MULTIPROC_DIR:
        MultiProcessCollector(registry, path=str(settings.PROMETHEUS_MULTIPROC_DIR))
    else:
        # One process only (no folder configured): its own values are the figures.
        for instrument in instruments.INSTRUMENTS:
            registry.register(instrument)
    registry.register(DatabaseCollector(now=now))
    return generate_latest(registry)


class DatabaseCollector(Collector):
    def __init__(self, *, now: datetime | None = None) -> None:
        self.now = now

    def collect(self) -> Iterable[Metric]:
        started = time.perf_counter()
        now = self.now or timezone.now()
        # Staff-level read across tenants; each tenant's budgets are read in its own context.
        with unscoped():
            tenants = {t.pk: t for t in Tenant.objects.order_by("slug")}
            metrics = [
                *usage_metrics(tenants, now=now),
                *budget_metrics(tenants, now=now),
                *alert_metrics(tenants),
                emergency_stop_metric(tenants, now=now),
                counter_drift_metric(tenants),
            ]
        metrics.append(
            GaugeMetricFamily(
                "costmon_metrics_database_seconds",
                "Time this scrape spent reading the database.",
                value=time.perf_counter() - started,
            )
        )
        return metrics


def usage_metrics(tenants: dict[int, Tenant], *, now: datetime) -> list[Metric]:
    spend = CounterMetricFamily(
        "costmon_spend_usd",
        "USD spent on LLM calls since the beginning (exact sums of nano-dollars).",
        labels=_USAGE_LABELS,
    )
    calls = CounterMetricFamily(
        "costmon_calls", "LLM calls reported since the beginning.", labels=_USAGE_LABELS
    )
    errors = CounterMetricFamily(
        "costmon_call_errors",
        "LLM calls reported with status error since the beginning.",
        labels=_USAGE_LABELS,
    )
    tokens = CounterMetricFamily(
        "costmon_tokens",
        "Tokens since the beginning, by kind. input counts every input token, cached ones "
        "included (cached_input is the part read from the provider's prompt cache); "
        "reasoning tokens are part of output.",
        labels=[*_USAGE_LABELS, "kind"],
    )
    totals = usage_totals(now=now)
    dimension_ids = {key[1] for key in totals} | {key[2] for key in totals}
    names = dict(
        Dimension.objects.unscoped().filter(pk__in=dimension_ids).values_list("pk", "value")
    )
    rows = []
    for (tenant_id, provider_id, model_id), sums in totals.items():
        tenant = tenants.get(tenant_id)
        if tenant is not None:  # else deleted since the cached sums were made
            labels = [tenant.slug, names.get(provider_id, ""), names.get(model_id, "")]
            rows.append((labels, dict(zip(FIELDS, sums, strict=True))))
    for labels, by_field in sorted(rows, key=lambda row: row[0]):
        spend.add_metric(labels, usd(by_field["cost_nanos"]))
        calls.add_metric(labels, by_field["calls"])
        errors.add_metric(labels, by_field["errors"])
        for kind, field in TOKEN_KINDS:
            tokens.add_metric([*labels, kind], by_field[field])
    return [spend, calls, errors, tokens]


def budget_metrics(tenants: dict[int, Tenant], *, now: datetime) -> list[Metric]:
    """The active budgets with the API's figures (`budget_views`: Redis counters when trusted,
    else the rollups)."""
    limit = GaugeMetricFamily(
        "costmon_budget_limit_usd", "A budget's limit for its period.", labels=_BUDGET_LABELS
    )
    used = GaugeMetricFamily(
        "costmon_budget_used_usd",
        "Spend counted against a budget this period (for a budget on every end user: the end "
        "user who spent most).",
        labels=_BUDGET_LABELS,
    )
    remaining = GaugeMetricFamily(
        "costmon_budget_remaining_usd",
        "What a budget has left this period (0 once exceeded).",
        labels=_BUDGET_LABELS,
    )
    projected = GaugeMetricFamily(
        "costmon_budget_projected_usd",
        "Spend a calendar budget is on course for by the end of its period.",
        labels=_BUDGET_LABELS,
    )
    by_tenant: dict[int, list[Budget]] = defaultdict(list)
    for budget in (
        Budget.objects.unscoped()
        .filter(is_active=True)
        .select_related("api_key")
        .order_by("tenant_id", "name", "pk")
    ):
        by_tenant[budget.tenant_id].append(budget)
    for tenant_id, budgets in by_tenant.items():
        tenant = tenants.get(tenant_id)
        if tenant is None:
            continue
        with tenant_context(tenant):
            views = budget_views(tenant=tenant, budgets=budgets, now=now)
        for view in views:
            spec, state = view.state.spec, view.state
            labels = [tenant.slug, str(spec.id), spec.name, spec.scope, spec.period]
            limit.add_metric(labels, usd(spec.limit_nanos))
            used.add_metric(labels, usd(state.spent))
            remaining.add_metric(labels, usd(state.remaining))
            if view.projected_nanos is not None:
                projected.add_metric(labels, usd(view.projected_nanos))
    return [limit, used, remaining, projected]


def alert_metrics(tenants: dict[int, Tenant]) -> list[Metric]:
    """Deliveries of alerts (test messages excluded), from the Notification rows."""
    labels = ["tenant", "channel"]
    sent = CounterMetricFamily(
        "costmon_alerts_sent", "Alert notifications delivered, by channel kind.", labels=labels
    )
    failed = CounterMetricFamily(
        "costmon_alerts_failed",
        "Alert notifications given up on (permanent error or retries exhausted), by channel kind.",
        labels=labels,
    )
    counts: dict[tuple[int, str], dict[str, int]] = defaultdict(dict)
    # Every channel kind a tenant has starts at 0, so the first failure shows in increase().
    for tenant_id, kind in Channel.objects.unscoped().values_list("tenant_id", "kind").distinct():
        counts[(tenant_id, kind)] = {}
    for tenant_id, kind, status, n in (
        Notification.objects.unscoped()
        .exclude(kind=Notification.Kind.TEST)
        .filter(status__in=[Notification.Status.SENT, Notification.Status.FAILED])
        .values_list("tenant_id", "channel__kind", "status")
        .annotate(n=Count("pk"))
        .order_by()
    ):
        counts[(tenant_id, kind)][status] = n
    rows = [
        (tenants[tenant_id].slug, kind, by_status)
        for (tenant_id, kind), by_status in counts.items()
        if tenant_id in tenants
    ]
    for slug, kind, by_status in sorted(rows, key=lambda row: row[:2]):
        sent.add_metric([slug, kind], by_status.get(Notification.Status.SENT, 0))
        failed.add_metric([slug, kind], by_status.get(Notification.Status.FAILED, 0))
    return [sent, failed]


def emergency_stop_metric(tenants: dict[int, Tenant], *, now: datetime) -> Metric:
    stops = GaugeMetricFamily(
        "costmon_emergency_stop_active",
        "1 while an emergency stop blocks every check: a tenant's own (scope tenant) or the "
        "global one (scope global, which stops every tenant).",
        labels=["scope", "tenant"],
    )
    active = set(
        EmergencyStop.objects.unscoped()
        .filter(lifted_at__isnull=True, expires_at__gt=now)
        .values_list("tenant_id", flat=True)
    )
    stops.add_metric(["global", ""], 1 if None in active else 0)
    for tenant_id, tenant in tenants.items():
        stops.add_metric(["tenant", tenant.slug], 1 if tenant_id in active else 0)
    return stops


def counter_drift_metric(tenants: dict[int, Tenant]) -> Metric:
    """Drift corrected in Redis counters that checks were trusting (`CounterCorrection` rows,
    written by the periodic drift sample and by rebuilds)."""
    drift = CounterMetricFamily(
        "costmon_counter_drift_corrected_usd",
        "USD of difference corrected between the Redis spend counters and PostgreSQL while "
        "checks trusted the counters (sum of absolute differences per counter field).",
        labels=["tenant"],
    )
    sums = dict(
        CounterCorrection.objects.unscoped()
        .values_list("tenant_id")
        .annotate(total=Sum("drift_nanos"))
        .order_by()
    )
    for tenant_id, tenant in tenants.items():  # every tenant from 0, so increase() works
        drift.add_metric([tenant.slug], usd(int(sums.get(tenant_id) or 0)))
    return drift
