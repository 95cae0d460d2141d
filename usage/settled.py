"""The settled part of a dashboard figure (and of the metrics API's), summed once and kept in
the shared cache.

A figure over a period is a sum of rollup rows. The rows of the days before today (in the
tenant's zone) rarely change, so `summed` splits a range at today's local midnight (by the
rows' hour, as every range is split), keeps the sums of the part before it in the shared cache
and sums only the rest per view. Both parts are sums keyed alike, so adding them gives exactly
the figure one query over the whole range gives.

A kept sum is named by the tenant's generation, a random value that changes whenever a row
before today may have changed: `usage_rewritten` (re-pricing, deletes, a reset), an ingest batch
holding an hour before the last `RECENT_DAYS` days (a late event) and a bulk load (imports,
seeding). The last `RECENT_DAYS` days before today are kept apart, under a second generation
that a batch holding an hour of those days bumps alone: late events are nearly always that
recent (a client that buffered or retried over midnight), and they then make a view sum those
few days again, not the whole range. Each write bumps after its commit, and a view reads the
generations before it queries: a sum kept under a generation never misses a write made before
that generation was bumped.

Only with a shared cache (`COSTMON_DASHBOARD_CACHE`, on with REDIS_URL): per-process caches
would miss another process's bump. Kept sums also expire after `KEEP_SECONDS`, which bounds how
long a bump lost to a cache outage can leave a figure behind.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from django.conf import settings
from django.utils import timezone

from costmon.core.cache import cache_add, cache_get_many, cache_set
from costmon.core.marks import mark_soon
from costmon.core.models import Tenant
from costmon.core.periods import TimeRange, local_midnight, tenant_zone
from usage.signals import BulkLoaded, RecordedBatch, settled_sums_forgotten

# Sums per key (an id, a bucket, a (bucket, id) pair...), each a list of integers.
Sums = dict[Any, list[int]]

KEEP_SECONDS = 3600
# A receiver counts "today" as starting this much later than its clock says, so a view on a
# host whose clock is a little ahead never keeps a day that a late event still changes.
CLOCK_MARGIN = timedelta(minutes=10)
# Days before today kept apart, under their own generation (`_RECENT`).
RECENT_DAYS = 3
_GENERATION = "costmon:dashboard:generation:v1:{}"
_RECENT = "costmon:dashboard:recent:v1:{}"
_SUMS = "costmon:dashboard:settled:v1:{}"

log = structlog.get_logger(__name__)

# Inside `recomputing()`: every part is summed again and kept afresh, for its whole lifetime.
_recomputing: ContextVar[bool] = ContextVar("settled_recomputing", default=False)


@contextmanager
def recomputing() -> Iterator[None]:
    """Sum every part again and keep it afresh instead of reading what is kept: how the
    dashboard's background refresh renews sums before they expire."""
    token = _recomputing.set(True)
    try:
        yield
    finally:
        _recomputing.reset(token)


def enabled() -> bool:
    return bool(settings.COSTMON_DASHBOARD_CACHE)


def settled_end(tz: Any, now: datetime) -> datetime:
    """The local midnight that starts the day of `now`: today's ends the settled rows."""
    return local_midnight(now.astimezone(tz).date(), tz)


def recent_start(tz: Any, now: datetime) -> datetime:
    """The local midnight that starts the recent days (the last `RECENT_DAYS` before today)."""
    return local_midnight(now.astimezone(tz).date() - timedelta(days=RECENT_DAYS), tz)


def summed(
    tenant: Tenant,
    time_range: TimeRange,
    what: tuple[Any, ...],
    compute: Callable[[TimeRange], Sums],
    *,
    now: datetime | None = None,
) -> Sums:
    """`compute(time_range)`, its whole days before today taken from the cache when kept
    there. `what` names everything else the sums depend on (the figure, filters, grouping).

    Only whole local days are kept: a range ending mid-day (yesterday up to this time, for a
    comparison) ends somewhere else at every view, and its last part is summed each time."""
    tr = time_range
    moment = min(tr.end, now or timezone.now())
    end = settled_end(tr.tz, moment)
    if not enabled() or tr.start >= end:
        return compute(tr)
    kept_under = generations(tenant.pk)
    if kept_under is None:  # the cache is away
        return compute(tr)
    # The older days under the tenant's generation, the recent ones under both.
    middle = max(tr.start, recent_start(tr.tz, moment))
    parts: list[tuple[TimeRange, tuple[str, ...]]] = [
        (replace(tr, start=middle, end=end), kept_under)
    ]
    if tr.start < middle:
        parts.insert(0, (replace(tr, end=middle), kept_under[:1]))
    keys = [_key(tenant.pk, part, names, what) for part, names in parts]
    found = (not _recomputing.get() and cache_get_many(keys)) or (None,) * len(keys)
    kept: Sums = {}
    for (part, _), key, sums in zip(parts, keys, found, strict=True):
        if not isinstance(sums, dict):
            sums = compute(part)
            cache_set(key, sums, KEEP_SECONDS)
        kept = add(kept, sums) if kept else sums
    if tr.end <= end:
        return kept
    return add(kept, compute(replace(tr, start=end)))


def _key(tenant_id: int, part: TimeRange, generations: tuple[str, ...], what: Any) -> str:
    name = repr((tenant_id, generations, part.start, part.end, str(part.tz), what))
    return _SUMS.format(hashlib.sha256(name.encode()).hexdigest())


def add(kept: Sums, more: Sums) -> Sums:
    """The sums of two parts, key by key. The lists of `kept` are shared, never changed: a
    key in both gets a new list."""
    out = dict(kept)
    for key, values in more.items():
        acc = out.get(key)
        out[key] = (
            list(values) if acc is None else [a + b for a, b in zip(acc, values, strict=True)]
        )
    return out


def generations(tenant_id: int) -> tuple[str, str] | None:
    """(the tenant's generation, its recent days'), each set on first use; None when the
    cache is away. Kept sums are named by them, so sums computed under one pair are the ones
    every view reads until either changes."""
    keys = [_GENERATION.format(tenant_id), _RECENT.format(tenant_id)]
    found = cache_get_many(keys)
    if found is not None and None in found:
        for key, value in zip(keys, found, strict=True):
            if value is None:
                cache_add(key, uuid.uuid4().hex)
        found = cache_get_many(keys)
    if found is None or not all(isinstance(v, str) for v in found):
        return None
    return found[0], found[1]


def bump(tenant_id: int) -> None:
    """Forget every kept sum of the tenant: its rows before today may have changed."""
    cache_set(_GENERATION.format(tenant_id), uuid.uuid4().hex, None)
    log.debug("dashboard_settled_sums_bumped", tenant_id=tenant_id)
    settled_sums_forgotten.send(sender=bump, tenant_id=tenant_id, recent_only=False)


def bump_recent(tenant_id: int) -> None:
    """Forget the tenant's kept sums of the recent days only."""
    cache_set(_RECENT.format(tenant_id), uuid.uuid4().hex, None)
    log.debug("dashboard_recent_sums_bumped", tenant_id=tenant_id)
    settled_sums_forgotten.send(sender=bump_recent, tenant_id=tenant_id, recent_only=True)


# --- receivers (connected in costmon.web's AppConfig.ready) ----------------------------------


def usage_recorded(sender: Any, *, batch: RecordedBatch, **kwargs: Any) -> None:
    """`batch_recorded`: a batch holding an hour before today changed a settled day; one of
    the recent days alone forgets only theirs. (The bounds are those of a view whose clock is
    up to `CLOCK_MARGIN` ahead: the latest any view puts them.)"""
    if not batch.hours or not enabled():
        return
    tz = tenant_zone(batch.tenant)
    now = timezone.now() + CLOCK_MARGIN
    earliest = min(batch.hours)
    # Soon rather than now in a group commit (`costmon.core.marks`): once for many batches.
    if earliest < recent_start(tz, now):
        mark_soon(("dashboard.bump", batch.tenant.pk), functools.partial(bump, batch.tenant.pk))
    elif earliest < settled_end(tz, now):
        tenant_id = batch.tenant.pk
        mark_soon(("dashboard.bump_recent", tenant_id), functools.partial(bump_recent, tenant_id))


def usage_loaded(sender: Any, *, load: BulkLoaded, **kwargs: Any) -> None:
    """`bulk_loaded`: a load may hold any day."""
    if load.inserted and enabled():
        bump(load.tenant.pk)


def usage_rewritten(sender: Any, *, tenant_id: int, **kwargs: Any) -> None:
    """`usage_rewritten`: re-priced, deleted or reset usage."""
    if enabled():
        bump(tenant_id)
