"""The check when the Redis counters cannot answer: PostgreSQL decides and holds the
reservation (see budgets.reservations); with PostgreSQL unreachable too, each budget's fail
mode decides. Called by budgets.check only."""

from __future__ import annotations

import contextlib
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError

from budgets import counters, reservations, storage
from budgets import redis as bredis
from budgets.check_result import CheckRequest, CheckResult
from budgets.config import RateLimitSpec, TenantConfig
from budgets.emergency_stop import emergency_stop_active
from budgets.standing import BudgetState, spent_from_database
from costmon.core.models import Tenant
from costmon.core.tenancy import tenant_context

# PostgreSQL could not be reached (restarting, a network cut): spend cannot be read there.
DATABASE_DOWN = (OperationalError, InterfaceError)


def check_in_database(
    r: Any,
    tenant: Tenant,
    req: CheckRequest,
    states: list[BudgetState],
    result: CheckResult,
    *,
    conf: TenantConfig,
    limits: list[tuple[RateLimitSpec, str]],
    now: datetime,
    may_retry: bool,
) -> bool:
    """Answer from PostgreSQL, reserving there; True (nothing done) when the counters turned
    out trusted once the reservation lock was ours: Redis answers then."""
    redis_configured = bool(settings.REDIS_URL)
    if not redis_configured:
        why = "they need Redis, which is not configured"
    elif r is None:
        why = "Redis is unavailable"
    else:
        why = "the counters are being rebuilt"
    try:
        with tenant_context(tenant):
            if _decide(r, tenant, req, states, result, now=now, may_retry=may_retry):
                return True
    except DATABASE_DOWN:
        spend_unknown(result, states, conf, why=why if redis_configured else "")
        return False
    result.source = "database"
    # Without Redis configured (the embedded default) this is the normal path, not a fault.
    if redis_configured:
        result.warnings.append(
            {
                "code": "counters_from_database",
                "message": f"Spend was read from the database ({why}).",
            }
        )
    if limits:
        result.warnings.append(
            {"code": "rate_limits_not_applied", "message": f"Rate limits were not applied ({why})."}
        )
    return False


def _decide(
    r: Any,
    tenant: Tenant,
    req: CheckRequest,
    states: list[BudgetState],
    result: CheckResult,
    *,
    now: datetime,
    may_retry: bool,
) -> bool:
    estimate = result.estimate_nanos
    hard = [s for s in states if s.spec.hard]
    names = [reservations.hold_name(s.spec.id, s.window.key, s.end_user) for s in hard]
    stop = emergency_stop_active(tenant=tenant)
    reserving = bool(req.reserve and stop is None and hard and estimate > 0)
    # The lock is released when the transaction ends, after the hold rows are written.
    locked = storage.reservation_locked_transaction(tenant.pk)
    with locked if reserving else contextlib.nullcontext():
        if reserving and may_retry and r is not None and _trusted_now(r, tenant):
            return True
        r = _read_spend_and_holds(r, tenant, states, hard, names, now)
        over = any(
            s.spent >= s.spec.limit_nanos or s.spent + s.reserved + estimate > s.spec.limit_nanos
            for s in hard
        )
        if stop is not None:
            result.refuse(
                "emergency_stop",
                {"code": "emergency_stop", "message": f"Emergency stop: {stop.reason}"},
            )
        elif over:
            result.refuse("budget_exceeded")
        elif reserving:
            _hold(r, tenant, req, hard, names, result, now=now)
    return False


def _read_spend_and_holds(
    r: Any,
    tenant: Tenant,
    states: list[BudgetState],
    hard: list[BudgetState],
    names: list[str],
    now: datetime,
) -> Any:
    """Fill in spend and holds (holds first, see budgets.reservations); the Redis client, or
    None if it failed meanwhile."""
    held: dict[str, int] = {}
    if r is not None:
        try:
            held = reservations.held_in_redis(r, tenant_id=tenant.pk, names=names)
        except bredis.RedisError as exc:
            bredis.failed(exc)
            r = None
    for name, amount in reservations.held_in_database(
        tenant_id=tenant.pk, names=names, now=now
    ).items():
        held[name] = held.get(name, 0) + amount
    for state in states:
        state.spent = spent_from_database(
            tenant=tenant, spec=state.spec, window=state.window, end_user=state.end_user
        )
    for state, name in zip(hard, names, strict=True):
        state.reserved = held.get(name, 0)
    return r


def _hold(
    r: Any,
    tenant: Tenant,
    req: CheckRequest,
    hard: list[BudgetState],
    names: list[str],
    result: CheckResult,
    *,
    now: datetime,
) -> None:
    estimate = result.estimate_nanos
    res_id = uuid.uuid4().hex
    reservations.holds_create(
        tenant_id=tenant.pk,
        reservation_id=res_id,
        event_id=req.event_id,
        names=names,
        amount_nanos=estimate,
        expires_at=now + timedelta(seconds=settings.COSTMON_RESERVATION_SECONDS),
    )
    if settings.REDIS_URL and r is None:
        # Once Redis is back, its counters must not be trusted before the rebuild has moved
        # this hold there.
        counters.mark_stale(tenant.pk)
    result.reservation_id = res_id
    for state in hard:
        state.reserved += estimate


def _trusted_now(r: Any, tenant: Tenant) -> bool:
    try:
        return counters.counters_trusted(r, tenant.pk)
    except bredis.RedisError as exc:
        bredis.failed(exc)
        return False


def spend_unknown(
    result: CheckResult, states: list[BudgetState], conf: TenantConfig, *, why: str
) -> None:
    """Neither trusted counters nor PostgreSQL: the budgets' fail modes decide."""
    result.source = "none"
    closed = [s for s in states if s.spec.fail_mode == "closed"]
    if states:
        result.fail_mode = "closed" if closed else "open"
    else:
        result.fail_mode = conf.default_fail_mode or "open"
    for state in states:
        state.spent = state.reserved = 0
    cause = f"{why} and the database is unreachable" if why else "the database is unreachable"
    if result.fail_mode == "closed":
        result.allowed = False
        result.reasons.append("spend_unknown")
        which = ", ".join(f"'{s.spec.name}'" for s in closed) or "the tenant's default"
        message = f"Spend cannot be known ({cause}): refused, as budget {which} fails closed."
    else:
        message = (
            f"Spend cannot be known ({cause}): allowed, as the budgets that apply fail open; "
            "nothing was reserved."
        )
    result.warnings.append({"code": "spend_unknown", "message": message})


def spend_for_a_stopped_call(
    tenant: Tenant, states: list[BudgetState], result: CheckResult
) -> None:
    """A stopped call's budgets with their real spend, from PostgreSQL (best effort)."""
    try:
        with tenant_context(tenant):
            for state in states:
                state.spent = spent_from_database(
                    tenant=tenant, spec=state.spec, window=state.window, end_user=state.end_user
                )
        result.source = "database"
    except DATABASE_DOWN:
        result.source = "none"
        result.warnings.append(
            {
                "code": "spend_unknown",
                "message": "Spend cannot be known (the counters are being rebuilt and the "
                "database is unreachable).",
            }
        )
