"""Spend, calls and tokens since the beginning, per tenant, provider and model, kept cheap.

Summing every hourly rollup on every scrape would read millions of rows. Instead the sums of
the settled hours (every hour before the last `SETTLE_HOURS`) are kept in the shared cache with
the hour they stop at. A scrape re-sums only the recent hours (an index range scan) and, when
the hour turns, folds the hours that settled into the cached sums.

A settled hour can still change: a late event (a client that retried for hours, an import of
old usage), a re-pricing, a tenant's reset. So the cached sums are summed again from scratch
every `RESUM_SECONDS`, and `STALE_RESUM_SECONDS` after `usage_recorded` saw an event land
in a settled hour. With a shared cache (Redis) that full sum runs in a Celery worker while the
scrapes keep answering from the previous sums; without one (the embedded default: every
process has its own cache, and little data) it runs in the scrape.

This module does not import prometheus_client: its receiver runs in every ingesting process.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from celery import shared_task
from django.conf import settings
from django.core.cache import cache
from django.db.models import Sum
from django.utils import timezone

from costmon.core.cache import cache_delete, cache_get, cache_set
from costmon.core.marks import mark_soon
from costmon.core.models import Tenant
from costmon.core.tenancy import unscoped
from usage.models import ModelHourlyRollup
from usage.signals import RecordedBatch

# Rollups of the current hour and the ones just before it still grow as events arrive.
SETTLE_HOURS = 2
# The cached sums are summed from scratch at least this often (re-pricing, resets)...
RESUM_SECONDS = 3600
# ...and this long after an event landed in an hour they already hold.
STALE_RESUM_SECONDS = 300

FIELDS = (
    "calls",
    "errors",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_nanos",
)

# (tenant id, provider dimension id, model dimension id) -> sums in the order of FIELDS
Key = tuple[int, int, int]
Sums = dict[Key, list[int]]

_SUMS_KEY = "costmon:prometheus:usage-sums:v1"
_STALE_KEY = "costmon:prometheus:usage-sums-stale:v1"
_QUEUED_KEY = "costmon:prometheus:usage-sums-queued:v1"

log = structlog.get_logger(__name__)


@dataclass
class Settled:
    before: datetime  # the sums cover every rollup hour before this one
    summed_at: datetime  # when they were last summed from scratch
    sums: Sums


# This process's last copy: while the shared cache is away, better than a full sum per scrape.
_last: Settled | None = None


def settled_before(now: datetime) -> datetime:
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=SETTLE_HOURS)


def usage_totals(*, now: datetime | None = None) -> Sums:
    """Every tenant's usage since the beginning: the sums of all its rollups."""
    now = now or timezone.now()
    before = settled_before(now)
    with unscoped():
        tenant_ids = list(Tenant.objects.values_list("pk", flat=True))
        settled = _settled(now=now, before=before, tenant_ids=tenant_ids)
        totals = {key: list(values) for key, values in settled.sums.items()}
        _add(totals, _sum_rollups(tenant_ids=tenant_ids, start=settled.before))
    return totals


def usage_recorded(sender: Any, *, batch: RecordedBatch, **kwargs: Any) -> None:
    """`usage.signals.batch_recorded`: events that landed in a settled hour make the cached sums
    stale."""
    if min(batch.hours) < settled_before(timezone.now()):
        mark_soon(_STALE_KEY, _mark_stale)


def _mark_stale() -> None:
    cache_set(_STALE_KEY, True, RESUM_SECONDS)


def usage_sums_refresh(*, now: datetime | None = None) -> Settled:
    """Sum every settled hour from scratch and keep the result for the scrapes."""
    now = now or timezone.now()
    # Cleared first: an event committed while the sum runs marks the result stale again.
    cache_set(_STALE_KEY, False, RESUM_SECONDS)
    before = settled_before(now)
    with unscoped():
        settled = Settled(before=before, summed_at=now, sums=_sum_rollups(end=before))
    _store(settled)
    cache_delete(_QUEUED_KEY)
    return settled


@shared_task(ignore_result=True)
def refresh_usage_sums() -> None:
    usage_sums_refresh()


def _settled(*, now: datetime, before: datetime, tenant_ids: list[int]) -> Settled:
    settled = _load()
    if settled is None or settled.before > before or settled.summed_at > now:
        return usage_sums_refresh(now=now)  # nothing usable: sum now, whatever it costs
    age = now - settled.summed_at
    if age >= timedelta(seconds=RESUM_SECONDS) or (
        age >= timedelta(seconds=STALE_RESUM_SECONDS) and cache_get(_STALE_KEY)
    ):
        if not settings.REDIS_URL:
            return usage_sums_refresh(now=now)
        # Once, in a worker; until it is done the scrapes answer from these sums.
        if _add_once(_QUEUED_KEY, timeout=15 * 60):
            refresh_usage_sums.delay()
            settled = _load() or settled  # an eager run (tests) has replaced them already
    if settled.before < before:
        _add(settled.sums, _sum_rollups(tenant_ids=tenant_ids, start=settled.before, end=before))
        settled.before = before
        _store(settled)
    return settled


def _load() -> Settled | None:
    global _last
    try:
        found = cache.get(_SUMS_KEY)
    except Exception as exc:  # noqa: BLE001 - any client error: the cache is away
        log.warning("cache_unavailable", op="get", error=str(exc))
        return _last
    _last = found if isinstance(found, Settled) else None
    return _last


def _store(settled: Settled) -> None:
    global _last
    _last = settled
    cache_set(_SUMS_KEY, settled, 2 * RESUM_SECONDS)


def _add_once(key: str, *, timeout: int) -> bool:
    try:
        return bool(cache.add(key, True, timeout))
    except Exception:  # noqa: BLE001 - the cache is away: the hourly sum waits for it
        return False


def _sum_rollups(
    *,
    tenant_ids: list[int] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Sums:
    query = ModelHourlyRollup.objects.unscoped()
    if tenant_ids is not None:
        # Naming every tenant lets the (tenant, hour, ...) index serve a range of hours.
        query = query.filter(tenant_id__in=tenant_ids)
    if start is not None:
        query = query.filter(hour__gte=start)
    if end is not None:
        query = query.filter(hour__lt=end)
    rows = (
        query.order_by()
        .values_list("tenant_id", "provider_id", "model_id")
        .annotate(*[Sum(field) for field in FIELDS])
    )
    return {
        (tenant_id, provider_id, model_id): [int(v or 0) for v in values]
        for tenant_id, provider_id, model_id, *values in rows
    }


def _add(into: Sums, more: Sums) -> None:
    for key, values in more.items():
        current = into.get(key)
        if current is None:
            into[key] = list(values)
        else:
            for i, value in enumerate(values):
                current[i] += value
