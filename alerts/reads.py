"""Reads that rules of one tenant's round share: spend, rate and unpriced rules over the same
day (or week, month) and filters ask for the same totals; within `shared_reads()` the first
asks the database and the others reuse its answer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from costmon.core.models import Tenant
from costmon.core.periods import TimeRange
from usage.selectors import UsageFilters, usage_metrics

_shared: ContextVar[dict[Any, dict[str, Any]] | None] = ContextVar(
    "alerts_shared_reads", default=None
)


@contextlib.contextmanager
def shared_reads() -> Iterator[None]:
    """Within the block (one tenant's round, read at one `now`), equal reads are made once."""
    token = _shared.set({})
    try:
        yield
    finally:
        _shared.reset(token)


def usage_totals(*, tenant: Tenant, time_range: TimeRange, filters: UsageFilters) -> dict[str, Any]:
    """The tenant's usage totals over the range (`usage_metrics(...).totals`)."""
    memo = _shared.get()
    key = (tenant.pk, time_range, filters)
    if memo is not None and key in memo:
        return memo[key]
    totals = usage_metrics(tenant=tenant, time_range=time_range, filters=filters).totals
    if memo is not None:
        memo[key] = totals
    return totals
