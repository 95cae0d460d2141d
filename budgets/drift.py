"""Drift sampling: do the counters of recently active tenants still equal PostgreSQL?

A sample compares, for each tenant the sweeper saw ingest for lately, today's day hash (every
field) and this week's and month's totals with the rollups, holding the tenant's ingest lock
exclusively for those few reads (no batch commits meanwhile; updates still pending, also those
of batches committed just before, are applied first, so they are not mistaken for drift). A tenant whose
figures differ is rebuilt at once (`counters_reconcile`), which corrects every hash, logs the
drift and records it (`CounterCorrection`, exported to Prometheus).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

import structlog
from django.db.models import Sum
from django.utils import timezone

from budgets import config as tenant_config
from budgets import counters
from budgets import redis as bredis
from budgets.periods import buckets_of_day
from budgets.updates import ACTIVE_KEY, settle_updates
from costmon.core.models import Tenant
from costmon.core.periods import tenant_zone
from costmon.core.tenancy import tenant_context, unscoped
from usage.selectors import rollups_of

log = structlog.get_logger(__name__)

ACTIVE_WINDOW = timedelta(minutes=15)


@dataclass
class DriftSample:
    tenant: str
    compared: int = 0  # counter fields compared
    differing: int = 0
    corrected_nanos: int = 0  # what the rebuild corrected (0 when nothing differed)


def counters_sample(*, tenant: Tenant) -> DriftSample | None:
    """Compare one tenant's counters with PostgreSQL and rebuild them if they differ; None
    when there is nothing to compare (no Redis, or counters not trusted: a rebuild is due)."""
    r = bredis.client()
    if r is None:
        return None
    sample = DriftSample(tenant=tenant.slug)
    tz = tenant_zone(tenant)
    today = timezone.now().astimezone(tz).date()
    day_b, week_b, month_b = buckets_of_day(today)
    conf = tenant_config.for_tenant(tenant.pk)
    with tenant_context(tenant), counters.ingest_lock(tenant.pk, shared=False):
        if not counters.counters_trusted(r, tenant.pk):
            return None
        settle_updates(r, tenant.pk)
        expected = counters.expected_counters(tenant=tenant, since=today, tag_names=conf.tag_names)
        want_day = expected.get(counters.bucket_key(tenant.pk, day_b), {})
        week_start = today - timedelta(days=today.weekday())
        want_totals = {
            counters.bucket_key(tenant.pk, week_b): _spent_since(tenant, week_start, tz),
            counters.bucket_key(tenant.pk, month_b): _spent_since(tenant, today.replace(day=1), tz),
        }
        pipe = r.pipeline(transaction=False)
        pipe.hgetall(counters.bucket_key(tenant.pk, day_b))
        for key in want_totals:
            pipe.hget(key, "t")
        have_day_raw, *have_totals = pipe.execute()
    have_day = {k.decode(): int(v) for k, v in have_day_raw.items()}
    names = set(want_day) | set(have_day)
    sample.compared = len(names) + len(want_totals)
    sample.differing = sum(1 for n in names if want_day.get(n, 0) != have_day.get(n, 0))
    sample.differing += sum(
        1
        for want, have in zip(want_totals.values(), have_totals, strict=True)
        if want != int(have or 0)
    )
    if sample.differing:
        report = counters.counters_reconcile(tenant=tenant, cause="sample")
        sample.corrected_nanos = report.drift_nanos
    return sample


def _spent_since(tenant: Tenant, day: date, tz: tzinfo) -> int:
    start = datetime.combine(day, time(), tzinfo=tz)
    total = rollups_of(tenant).filter(hour__gte=start).aggregate(s=Sum("cost_nanos"))["s"]
    return int(total or 0)


def counters_sample_drift(*, max_tenants: int = 200) -> list[DriftSample]:
    """Sample the tenants whose ingest the sweeper saw in the last 15 minutes."""
    r = bredis.client()
    if r is None:
        return []
    now = timezone.now().timestamp()
    try:
        r.zremrangebyscore(ACTIVE_KEY, "-inf", now - 86400)
        found: list[Any] = list(
            r.zrevrangebyscore(
                ACTIVE_KEY, "+inf", now - ACTIVE_WINDOW.total_seconds(), start=0, num=max_tenants
            )
        )
    except bredis.RedisError as exc:
        bredis.failed(exc)
        return []
    ids = [int(t) for t in found]
    with unscoped():
        tenants = list(Tenant.objects.filter(pk__in=ids).order_by("pk"))
    samples = []
    for tenant in tenants:
        try:
            sample = counters_sample(tenant=tenant)
        except bredis.RedisError as exc:
            bredis.failed(exc)
            break
        if sample is not None:
            samples.append(sample)
            if sample.differing:
                log.warning("counters_drift_sampled", **sample.__dict__)
    return samples
