"""The pre-flight check: may this call spend? Emergency stop, rate limits, budgets.

Three ways to answer, by what can be trusted:
- the counters are trusted (rebuilt since Redis started): one Redis script decides and reserves
  atomically, with no SQL;
- Redis is away, or its counters are being rebuilt: PostgreSQL answers, and a reservation is
  held there under the tenant's reservation lock (`budgets.reservations`), so concurrent callers
  still cannot overshoot a hard budget by more than one estimate;
- neither can say what was spent (PostgreSQL unreachable too): each budget's fail mode decides,
  `closed` refusing the call and `open` allowing it with a warning.
The reply says which answered: `source` (redis, database or none) and `fail_mode` (null while
spend was known).
"""

from __future__ import annotations

import contextlib
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from budgets import config as tenant_config
from budgets import counters, reservations
from budgets import redis as bredis
from budgets.config import BudgetSpec, RateLimitSpec, TenantConfig
from budgets.periods import budget_window
from budgets.services import (
    BudgetState,
    budget_status,
    emergency_stop_active,
    spent_from_database,
)
from costmon.core.models import Tenant
from costmon.core.money import format_usd, usd_to_nanos
from costmon.core.periods import tenant_zone
from costmon.core.tenancy import tenant_context
from usage.catalog import catalog_for
from usage.pricing import candidate_names, cost_nanos

# PostgreSQL could not be reached (restarting, a network cut): spend cannot be read there.
DATABASE_DOWN = (OperationalError, InterfaceError)

# What the check script answers first (see budgets/lua/check.lua).
_ALLOWED, _STOPPED, _RATE_LIMITED, _OVER_BUDGET, _UNTRUSTED = range(5)
_CHECK = bredis.script_file("check")


@dataclass(frozen=True)
class CheckRequest:
    end_user: str = ""
    provider: str = ""
    model: str = ""
    operation: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    estimated_input_tokens: int = 0
    estimated_output_tokens: int = 0
    estimated_cost_usd: Decimal | None = None
    reserve: bool = False
    event_id: str = ""
    api_key_id: int | None = None
    client_ip: str = ""


@dataclass
class RateLimitHit:
    limit: int
    remaining: int
    reset_seconds: int
    retry_after: int
    kind: str  # requests | tokens
    scope: str


@dataclass
class CheckResult:
    allowed: bool
    reasons: list[str] = field(default_factory=list)
    budgets: list[BudgetState] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    suggested_model: str | None = None
    reservation_id: str | None = None
    rate_limited: RateLimitHit | None = None
    rate_limit: RateLimitHit | None = None  # the tightest limit that applied, for headers
    source: str = "redis"  # where spend was read: redis | database | none (nowhere)
    estimate_nanos: int = 0
    fail_mode: str | None = None  # closed | open: decided the call, spend being unknown


def budget_applies(spec: BudgetSpec, req: CheckRequest) -> bool:
    scope = spec.scope
    if scope == "tenant":
        return True
    if scope == "end_user":
        return req.end_user == spec.value
    if scope == "every_end_user":
        return bool(req.end_user)
    if scope == "api_key":
        return req.api_key_id is not None and req.api_key_id == spec.api_key_id
    if scope == "provider":
        return req.provider.lower() == spec.value
    if scope == "model":
        return spec.value in candidate_names(req.model)
    if scope == "operation":
        return req.operation == spec.value
    if scope == "tag":
        name, _, value = spec.value.partition("=")
        return req.tags.get(name) == value
    return False


def estimate_nanos(*, tenant: Tenant, req: CheckRequest) -> tuple[int, str | None]:
    """The call's expected cost, and a warning when it cannot be priced."""
    if req.estimated_cost_usd is not None:
        return usd_to_nanos(req.estimated_cost_usd), None
    if not (req.estimated_input_tokens or req.estimated_output_tokens):
        return 0, None
    price = catalog_for(tenant.pk).price_at(req.provider, req.model, timezone.now())
    if price is None:
        return 0, f"No price for {req.provider}/{req.model}: the estimate counts as $0."
    return cost_nanos(
        price, input_tokens=req.estimated_input_tokens, output_tokens=req.estimated_output_tokens
    ), None


def _applicable_rate_limits(
    conf: TenantConfig, req: CheckRequest
) -> list[tuple[RateLimitSpec, str]]:
    """(limit, caller identity) pairs: per end user, per key, and per IP without an end user."""
    chosen = []
    callers = [("end_user", req.end_user), ("api_key", str(req.api_key_id or ""))]
    if not req.end_user:
        callers.append(("ip", req.client_ip))
    for scope, ident in callers:
        if not ident:
            continue
        specific = [r for r in conf.rate_limits if r.scope == scope and r.value == ident]
        default = [r for r in conf.rate_limits if r.scope == scope and r.value == ""]
        for spec in specific or default:
            chosen.append((spec, ident))
    return chosen


def budget_check(*, tenant: Tenant, req: CheckRequest) -> CheckResult:
    """May this call spend? Emergency stop, then rate limits, then every applicable budget.

    With the counters trusted this reads only Redis (one script, atomic, so reservations
    cannot overshoot a hard budget under concurrency). Otherwise PostgreSQL answers and holds
    the reservation (see the module's docstring); the reply says that rate limits were not
    applied.
    """
    conf = tenant_config.for_tenant(tenant.pk)
    estimate, price_warning = estimate_nanos(tenant=tenant, req=req)
    now = timezone.now()
    tz = tenant_zone(tenant)
    states = [
        BudgetState(
            spec=spec,
            window=budget_window(
                period=spec.period, rolling_days=spec.rolling_days, now=now, tz=tz
            ),
            spent=0,
            end_user=req.end_user if spec.scope == "every_end_user" else "",
        )
        for spec in conf.budgets
        if budget_applies(spec, req)
    ]
    limits = _applicable_rate_limits(conf, req)
    result = CheckResult(allowed=True, estimate_nanos=estimate)
    if price_warning:
        result.warnings.append({"code": "unpriced_model", "message": price_warning})

    r = bredis.client()
    answer: CheckResult | None = None
    for attempt in range(2):
        outcome: CheckResult | int | None = None
        if r is not None:
            try:
                counters.untrust_after_outage(r)
                outcome = _check_in_redis(r, tenant, req, states, limits, estimate, now)
            except bredis.RedisError as exc:
                bredis.failed(exc)
                r = None
        if isinstance(outcome, CheckResult):
            answer = outcome
            break
        if outcome == _UNTRUSTED and attempt == 0:
            from budgets.tasks import schedule_reconcile

            schedule_reconcile(tenant.pk)
        retry = _check_in_database(
            r,
            tenant,
            req,
            states,
            result,
            conf=conf,
            limits=limits,
            now=now,
            may_retry=attempt == 0,
        )
        if not retry:  # else the counters were rebuilt meanwhile: ask Redis again
            answer = result
            break
    assert answer is not None
    if answer is not result:
        answer.warnings[:0] = result.warnings
        answer.estimate_nanos = estimate
    _conclude(answer, states, estimate)
    return answer


def _check_in_redis(
    r: Any,
    tenant: Tenant,
    req: CheckRequest,
    states: list[BudgetState],
    limits: list[tuple[RateLimitSpec, str]],
    estimate: int,
    now: datetime,
) -> CheckResult | int:
    prefix = f"cm:{{{tenant.pk}}}"
    now_ms = int(now.timestamp() * 1000)
    res_id = uuid.uuid4().hex if req.reserve else ""  # the script reads it only to reserve
    ttl_s = settings.COSTMON_RESERVATION_SECONDS
    args: list[Any] = [
        now_ms,
        counters.stop_key(tenant.pk),
        counters.stop_key(None),
        counters.ok_key(tenant.pk),
        len(limits),
        req.estimated_input_tokens + req.estimated_output_tokens,
    ]
    for spec, ident in limits:
        args += [
            f"{prefix}:rl:{spec.id}:{ident}",
            spec.window_seconds * 1000,
            spec.max_requests if spec.max_requests is not None else -1,
            spec.max_tokens if spec.max_tokens is not None else -1,
        ]
    args += [
        "1" if req.reserve else "0",
        res_id,
        estimate,
        now_ms + ttl_s * 1000,
        (ttl_s + 3600) * 1000,
        prefix,
        req.event_id,
        len(states),
    ]
    for state in states:
        bspec = state.spec
        name = counters.budget_field(
            bspec.scope, bspec.value, end_user=state.end_user, api_key_id=bspec.api_key_id
        )
        hold = reservations.hold_name(bspec.id, state.window.key, state.end_user)
        args += [
            bspec.limit_nanos,
            "1" if bspec.hard else "0",
            name,
            f"{prefix}:r:{hold}",
            len(state.window.buckets),
        ]
        args += [counters.bucket_key(tenant.pk, bucket) for bucket in state.window.buckets]
    reply = _CHECK(r, args)
    code = int(reply[0])
    if code == _UNTRUSTED:
        return code
    result = CheckResult(allowed=True)
    if code == _STOPPED:
        stop = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        result.allowed = False
        result.reasons.append("emergency_stop")
        result.warnings.append(
            {"code": "emergency_stop", "message": f"Emergency stop: {stop.split('|', 1)[-1]}"}
        )
        figures = [int(v) for v in reply[2:]]
        if len(figures) == 2 * len(states):
            for n, state in enumerate(states):
                state.spent, state.reserved = figures[2 * n], figures[2 * n + 1]
        else:  # the counters are not trusted: the figures come from PostgreSQL
            _spend_for_a_stopped_call(tenant, states, result)
        return result
    if code == _RATE_LIMITED:
        index, kind, limit, used_milli, window_ms, into_ms, previous = reply[1:8]
        spec, _ = limits[int(index) - 1]
        hit = _rate_limit_hit(
            spec,
            kind.decode() if isinstance(kind, bytes) else str(kind),
            int(limit),
            int(used_milli),
            int(window_ms),
            int(into_ms),
            int(previous),
        )
        result.allowed = False
        result.reasons.append("rate_limited")
        result.rate_limited = hit
        result.rate_limit = hit
        return result
    reserved_flag = int(reply[1])
    values = [int(v) for v in reply[2 : 2 + 2 * len(states)]]
    for n, state in enumerate(states):
        state.spent, state.reserved = values[2 * n], values[2 * n + 1]
    tail = reply[2 + 2 * len(states) :]
    if tail:
        index, limit, used_milli, window_ms, into_ms = (int(v) for v in tail)
        spec, _ = limits[index - 1]
        result.rate_limit = _rate_limit_hit(
            spec, "requests", limit, used_milli + 1000, window_ms, into_ms, 0
        )
    if code == _OVER_BUDGET:
        result.allowed = False
        result.reasons.append("budget_exceeded")
    elif reserved_flag:
        result.reservation_id = res_id
        for state in states:
            if state.spec.hard:
                state.reserved += estimate  # now held for this call
    return result


def _rate_limit_hit(
    spec: RateLimitSpec,
    kind: str,
    limit: int,
    used_milli: int,
    window_ms: int,
    into_ms: int,
    previous: int,
) -> RateLimitHit:
    used = used_milli / 1000
    reset = math.ceil((window_ms - into_ms) / 1000)
    if used + 1 <= limit:
        retry = 0
    elif previous > 0:
        # The previous window's weight falls linearly; wait until enough of it has gone.
        excess = used + 1 - limit
        retry = min(reset, math.ceil(excess / previous * window_ms / 1000))
    else:
        retry = reset
    return RateLimitHit(
        limit=limit,
        remaining=max(0, math.floor(limit - used)),
        reset_seconds=max(reset, 1),
        retry_after=max(retry, 1),
        kind=kind,
        scope=spec.scope,
    )


def _check_in_database(
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
    estimate = result.estimate_nanos
    hard = [s for s in states if s.spec.hard]
    names = [reservations.hold_name(s.spec.id, s.window.key, s.end_user) for s in hard]
    try:
        with tenant_context(tenant):
            stop = emergency_stop_active(tenant=tenant)
            reserving = bool(req.reserve and stop is None and hard and estimate > 0)
            # The lock is released when the transaction ends, after the hold rows are written.
            locked = reservations.locked_transaction(tenant.pk)
            with locked if reserving else contextlib.nullcontext():
                if reserving and may_retry and r is not None and _trusted_now(r, tenant):
                    return True
                # Holds first, then spend (see budgets.reservations).
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
                over = any(
                    s.spent >= s.spec.limit_nanos
                    or s.spent + s.reserved + estimate > s.spec.limit_nanos
                    for s in hard
                )
                if stop is not None:
                    result.allowed = False
                    result.reasons.append("emergency_stop")
                    result.warnings.append(
                        {"code": "emergency_stop", "message": f"Emergency stop: {stop.reason}"}
                    )
                elif over:
                    result.allowed = False
                    result.reasons.append("budget_exceeded")
                elif reserving:
                    res_id = uuid.uuid4().hex
                    reservations.holds_create(
                        tenant_id=tenant.pk,
                        reservation_id=res_id,
                        event_id=req.event_id,
                        names=names,
                        amount_nanos=estimate,
                        expires_at=now + timedelta(seconds=settings.COSTMON_RESERVATION_SECONDS),
                    )
                    if redis_configured and r is None:
                        # Once Redis is back, its counters must not be trusted before the rebuild
                        # has moved this hold there.
                        counters.mark_stale(tenant.pk)
                    result.reservation_id = res_id
                    for state in hard:
                        state.reserved += estimate
    except DATABASE_DOWN:
        _spend_unknown(result, states, conf, why=why if redis_configured else "")
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


def _trusted_now(r: Any, tenant: Tenant) -> bool:
    try:
        return counters.counters_trusted(r, tenant.pk)
    except bredis.RedisError as exc:
        bredis.failed(exc)
        return False


def _spend_unknown(
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


def _spend_for_a_stopped_call(
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


def _conclude(result: CheckResult, states: list[BudgetState], estimate: int) -> None:
    result.budgets = states
    if result.source == "none":
        return  # no figures to judge
    worst: tuple[int, str] | None = None
    order = {"ok": 0, "warning": 1, "critical": 2, "exceeded": 3}
    for state in states:
        spec = state.spec
        percent = state.percent
        status = budget_status(percent, spec.thresholds)
        if status != "ok":
            who = f" for {state.end_user}" if state.end_user else ""
            result.warnings.append(
                {
                    "code": f"budget_{status}",
                    "budget_id": spec.id,
                    "message": f"Budget '{spec.name}'{who} is at {percent}% of ${format_usd(spec.limit_nanos)} ({status}).",
                }
            )
            if spec.suggested_model and (worst is None or order[status] > worst[0]):
                worst = (order[status], spec.suggested_model)
        elif spec.hard is False and state.spent + estimate > spec.limit_nanos:
            result.warnings.append(
                {
                    "code": "soft_budget_would_exceed",
                    "budget_id": spec.id,
                    "message": f"This call would take soft budget '{spec.name}' past its limit.",
                }
            )
    if worst is not None:
        result.suggested_model = worst[1]
