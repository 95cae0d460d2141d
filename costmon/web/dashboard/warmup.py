"""The overview's kept sums computed in the background when a tenant's are forgotten, so no
person's view is the first to sum the past days again.

`usage.settled` forgets a tenant's kept sums by moving its generation (a re-price, a bulk load,
a late event, a delete). It then sends `settled_sums_forgotten`; `sums_forgotten` queues
`warm_overview` once the write has committed (for a tenant whose overview someone opened in the
last `VIEWED_SECONDS`: one nobody looks at costs nothing), and `dashboard_sums_warm` makes the reads of
the standard views (`standard_queries`: the last 30 and 90 days, 7 days and this month,
stacked by provider, model, operation, end user and each tag the page offers) through the very
functions the page calls (`costmon.web.dashboard.reads`), under the tenant's own context.

A warm-up claims (tenant, generations, local day) first: queued twice, or while one runs, the
second does nothing; one whose generations move while it runs stops, as the next bump queued
its successor. Bumps within `WARM_DELAY_SECONDS` of each other (a bulk load's batches, a burst
of late events) queue one warm-up.

Kept sums also go cold without a bump: they expire after `settled.KEEP_SECONDS`, and at the
tenant's local midnight every kept part moves its bounds. So a tenant whose overview someone
opened in the last `VIEWED_SECONDS` is kept warm by beat: `refresh_viewed_overviews` runs every
`REFRESH_EVERY` and queues `warm_overview(..., refresh=True)` for each, which sums everything
again and keeps it afresh once the last warm-up of those generations and that day is
`REFRESH_AFTER_SECONDS` old (before its sums expire), or at once after a midnight. A tenant
nobody looks at costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from celery import shared_task
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from costmon.core.cache import cache_delete, cache_get_many
from costmon.core.models import Tenant
from costmon.core.periods import custom_range, recent_range, tenant_zone
from costmon.core.tenancy import tenant_context, unscoped
from costmon.web.dashboard import pages as dashboard
from costmon.web.dashboard.query import GROUPS, PageQuery
from costmon.web.dashboard.reads import chart_reads, stacked_series, table_reads, tag_table
from usage import settled
from usage.recommendations import recommendation_sums_warm
from usage.selectors import UsageFilters

log = structlog.get_logger(__name__)

WARM_DELAY_SECONDS = 2
# A queued warm-up lost with its worker no longer holds back the next bump's after this.
PENDING_SECONDS = 60
# A warm-up that died holds its claim this long; a finished one as long as its sums are kept.
CLAIM_SECONDS = 600
# Beat's refresh of the tenants people look at: how often it runs, how long after a view a
# tenant is kept warm, and the age at which a warm-up's sums are summed again (two runs before
# they expire, so one missed run costs nothing).
REFRESH_EVERY = timedelta(minutes=10)
VIEWED_SECONDS = 4 * 3600
# How long a process trusts that nobody viewed a tenant's overview (`recently_viewed`).
VIEWED_RECHECK_SECONDS = 10.0
# Tenant id -> until when (time.monotonic) this process trusts that nobody viewed it.
_viewed_seen: dict[int, float] = {}
_clock = time.monotonic
REFRESH_AFTER_SECONDS = settled.KEEP_SECONDS - 2 * int(REFRESH_EVERY.total_seconds())
_PENDING = "costmon:dashboard:warm-pending:v1:{}"
_CLAIM = "costmon:dashboard:warm:v1:{}:{}:{}:{}"
_FRESH = "costmon:dashboard:warm-fresh:v1:{}:{}:{}:{}"
_VIEWED = "costmon:dashboard:viewed:v1:{}"

WARMED = "warmed"
ALREADY = "already warmed or warming"
SUPERSEDED = "superseded"
NOTHING = "nothing to warm"


def standard_queries(tenant: Tenant, now: datetime) -> list[PageQuery]:
    """The overview's views to compute ahead, most looked at first, each as the page parses
    it (no filter, snapshots grouped): the last 30 days (the default), the last 90 days (a
    custom range ending today), 7 days and this month, each stacked by every group. Tag
    stackings are added by `dashboard_sums_warm` once the period's tag names are known."""
    today = now.astimezone(tenant_zone(tenant)).date()
    ranges = [
        ("30d", "", "", recent_range(tenant=tenant, period="30d", now=now)),
        (
            "custom",
            str(today - timedelta(days=89)),
            str(today),
            custom_range(tenant=tenant, start=str(today - timedelta(days=89)), end=str(today)),
        ),
        ("7d", "", "", recent_range(tenant=tenant, period="7d", now=now)),
        ("month", "", "", recent_range(tenant=tenant, period="month", now=now)),
    ]
    return [
        PageQuery(
            period=period,
            start=start,
            end=end,
            time_range=tr,
            filters=UsageFilters(),
            group_by=group,
            now=now,
        )
        for period, start, end, tr in ranges
        for group in GROUPS
    ]


def dashboard_sums_warm(*, tenant_id: int, refresh: bool = False) -> str:
    """Compute the kept sums of the tenant's standard overview views under its current
    generations, unless a warm-up already did or is doing so. Reads only that tenant's rows
    (its own tenant context: scoped querysets and row-level security).

    `refresh`: sum them all again and keep them afresh, unless a warm-up of these generations
    on this local day finished less than `REFRESH_AFTER_SECONDS` ago."""
    if not refresh:
        cache_delete(_PENDING.format(tenant_id))  # a bump from now on queues another warm-up
    if not settled.enabled():
        return NOTHING
    kept_under = settled.generations(tenant_id)
    if kept_under is None:  # the cache is away: nothing can be kept
        return NOTHING
    with unscoped():
        tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is None:
        return NOTHING
    now = timezone.now()
    today = now.astimezone(tenant_zone(tenant)).date()
    fresh = _FRESH.format(tenant_id, *kept_under, today)
    claim = fresh if refresh else _CLAIM.format(tenant_id, *kept_under, today)
    if not _claim(claim, CLAIM_SECONDS):
        return ALREADY
    started = timezone.now()
    try:
        with settled.recomputing() if refresh else nullcontext():
            outcome = _warm(tenant, now, lambda: settled.generations(tenant_id) == kept_under)
    except BaseException:
        cache_delete(claim)  # a later bump or queue may try again
        raise
    if not refresh:
        _set(claim, outcome, settled.KEEP_SECONDS)
    if outcome == WARMED:  # these sums are new: beat's refresh may wait
        _set(fresh, outcome, REFRESH_AFTER_SECONDS)
    else:
        cache_delete(fresh)
    log.info(
        "dashboard_sums_warmed",
        tenant_id=tenant_id,
        refresh=refresh,
        outcome=outcome,
        ms=int((timezone.now() - started).total_seconds() * 1000),
    )
    return outcome


def _warm(tenant: Tenant, now: datetime, current: Callable[[], bool]) -> str:
    """Each period's whole page once (stacked by provider), then what depends on the stacking
    (the spend chart, and a tag's table) for every other stacking the page offers."""
    with tenant_context(tenant):
        if not dashboard.has_usage(tenant=tenant):
            return NOTHING
        tables = None
        for q in standard_queries(tenant, now):
            if not current():
                return SUPERSEDED
            if q.group_by == GROUPS[0]:
                tables = table_reads(tenant=tenant, q=q)
                found = chart_reads(tenant=tenant, q=q, tables=tables)
                if q.period == "30d":  # the recommendations: the last 30 days, whatever the view
                    recommendation_sums_warm(tenant=tenant, time_range=q.time_range)
                continue
            assert tables is not None  # each period's queries start with the first group
            stacked_series(tenant=tenant, q=q, tables=tables)
            if q.group_by != GROUPS[-1]:
                continue
            for name in found.tag_names:  # the period's last group: then each tag it offers
                if not current():
                    return SUPERSEDED
                tagged = replace(q, group_by=f"{dashboard.TAG_PREFIX}{name}")
                tag_table(tenant=tenant, q=tagged)
                stacked_series(tenant=tenant, q=tagged, tables=tables)
    return WARMED


def _claim(key: str, seconds: int) -> bool:
    """Set `key` unless it is set (True when this call set it); False when the cache is away."""
    try:
        return bool(cache.add(key, "claimed", seconds))
    except Exception as exc:  # noqa: BLE001 - the cache is an accelerator that may be away
        log.warning("cache_unavailable", op="add", error=str(exc))
        return False


def _set(key: str, value: str, seconds: int) -> None:
    try:
        cache.set(key, value, seconds)
    except Exception as exc:  # noqa: BLE001
        log.warning("cache_unavailable", op="set", error=str(exc))


@shared_task(ignore_result=True)
def warm_overview(tenant_id: int, refresh: bool = False) -> str:
    """The tenant's standard overview views computed ahead (`dashboard_sums_warm`)."""
    return dashboard_sums_warm(tenant_id=tenant_id, refresh=refresh)


@shared_task(ignore_result=True)
def refresh_viewed_overviews() -> int:
    """Beat, every `REFRESH_EVERY`: queue a refreshing warm-up for each tenant whose overview
    was viewed in the last `VIEWED_SECONDS` (each does nothing while its sums are fresh).
    Returns how many were queued."""
    if not (settings.COSTMON_DASHBOARD_WARMUP and settled.enabled()):
        return 0
    with unscoped():
        tenant_ids = list(Tenant.objects.order_by("pk").values_list("pk", flat=True))
    marks = cache_get_many([_VIEWED.format(pk) for pk in tenant_ids])
    if marks is None:  # the cache is away: nothing is kept to refresh
        return 0
    viewed = [pk for pk, mark in zip(tenant_ids, marks, strict=True) if mark is not None]
    for pk in viewed:
        warm_overview.delay(pk, refresh=True)
    return len(viewed)


def overview_viewed(tenant_id: int) -> None:
    """Note that someone looked at the tenant's overview: beat keeps its sums warm for
    `VIEWED_SECONDS`."""
    if settings.COSTMON_DASHBOARD_WARMUP and settled.enabled():
        _set(_VIEWED.format(tenant_id), "1", VIEWED_SECONDS)
        _viewed_seen.pop(tenant_id, None)  # this process knows at once


def recently_viewed(tenant_id: int) -> bool:
    """Whether someone opened the tenant's overview in the last `VIEWED_SECONDS` (False
    when the cache is away: nothing could be kept for them then).

    A "no" is remembered in the process for `VIEWED_RECHECK_SECONDS`: a tenant's late events
    arrive group after group, and each group would otherwise ask Redis again. A view served
    by another process is seen here within that time (the view itself summed its sums)."""
    now = _clock()
    if _viewed_seen.get(tenant_id, 0.0) > now:
        return False
    try:
        viewed = cache.get(_VIEWED.format(tenant_id)) is not None
    except Exception as exc:  # noqa: BLE001 - the cache is an accelerator that may be away
        log.warning("cache_unavailable", op="get", error=str(exc))
        return False
    if not viewed:
        _viewed_seen[tenant_id] = now + VIEWED_RECHECK_SECONDS
    return viewed


def forget_viewed_local() -> None:
    """Forget what this process remembered of views (tests)."""
    _viewed_seen.clear()


def queue_warm_up(tenant_id: int) -> bool:
    """Queue a warm-up of the tenant's kept sums unless one is queued already (True when
    this call queued it)."""
    if not _claim(_PENDING.format(tenant_id), PENDING_SECONDS):
        return False
    try:
        warm_overview.apply_async((tenant_id,), countdown=WARM_DELAY_SECONDS)
    except Exception as exc:  # noqa: BLE001 - the broker away: the first view sums, as before
        cache_delete(_PENDING.format(tenant_id))
        log.warning("dashboard_warm_up_not_queued", tenant_id=tenant_id, error=str(exc))
        return False
    return True


# --- receiver (connected in costmon.web's AppConfig.ready) -----------------------------------


def sums_forgotten(sender: Any, *, tenant_id: int, **kwargs: Any) -> None:
    """`settled_sums_forgotten`: queue the tenant's warm-up once the write has committed, if
    someone looked at its overview in the last `VIEWED_SECONDS`. A tenant nobody looks at
    costs its workers nothing: a thousand tenants' bulk loads would otherwise queue a thousand
    warm-ups ahead of their rule rounds."""
    if settings.COSTMON_DASHBOARD_WARMUP and settled.enabled() and recently_viewed(tenant_id):
        transaction.on_commit(lambda: queue_warm_up(tenant_id))
