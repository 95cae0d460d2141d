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

The call chain: `budget_check` -> the budgets and rate limits that apply (`budgets.scopes`) ->
`_check_in_redis` -> `budgets.check_script.run_check_script` (`budgets/lua/check.lua`, its ARGV
and reply documented there) -> `_result_of`; or `budgets.check_fallback.check_in_database` ->
`_conclude` (statuses and warnings). The request and reply types are in `budgets.check_result`.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from datetime import datetime, tzinfo
from typing import Any

from django.conf import settings
from django.utils import timezone

from budgets import config as tenant_config
from budgets import counters, reservations
from budgets import redis as bredis
from budgets.check_fallback import check_in_database, spend_for_a_stopped_call
from budgets.check_result import CheckRequest, CheckResult, RateLimitHit
from budgets.check_script import (
    CheckScriptCall,
    Outcome,
    RateLimitFigures,
    ScriptBudget,
    ScriptReply,
    run_check_script,
)
from budgets.config import RateLimitSpec, TenantConfig
from budgets.periods import budget_window
from budgets.scopes import budget_applies, end_user_of
from budgets.standing import BudgetState, budget_status
from budgets.tasks import schedule_reconcile
from costmon.core.models import Tenant
from costmon.core.money import format_usd, usd_to_nanos
from costmon.core.periods import tenant_zone
from usage.catalog import catalog_for
from usage.pricing import cost_nanos

__all__ = ["CheckRequest", "CheckResult", "RateLimitHit", "budget_check"]


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
    states = _applicable_states(conf, req, now=now, tz=tenant_zone(tenant))
    limits = _applicable_rate_limits(conf, req)
    result = CheckResult(allowed=True, estimate_nanos=estimate)
    if price_warning:
        result.warnings.append({"code": "unpriced_model", "message": price_warning})
    answer = _answer(tenant, req, states, result, conf=conf, limits=limits, now=now)
    if answer is not result:
        answer.warnings[:0] = result.warnings
        answer.estimate_nanos = estimate
    _conclude(answer, states, estimate)
    return answer


def _applicable_states(
    conf: TenantConfig, req: CheckRequest, *, now: datetime, tz: tzinfo
) -> list[BudgetState]:
    return [
        BudgetState(
            spec=spec,
            window=budget_window(
                period=spec.period, rolling_days=spec.rolling_days, now=now, tz=tz
            ),
            spent=0,
            end_user=end_user_of(spec, req.end_user),
        )
        for spec in conf.budgets
        if budget_applies(spec, req)
    ]


def _answer(
    tenant: Tenant,
    req: CheckRequest,
    states: list[BudgetState],
    result: CheckResult,
    *,
    conf: TenantConfig,
    limits: list[tuple[RateLimitSpec, str]],
    now: datetime,
) -> CheckResult:
    """Redis answers when its counters are trusted; else PostgreSQL fills in `result` (and
    Redis is asked again once if the counters were rebuilt meanwhile)."""
    r = bredis.client()
    for attempt in range(2):
        outcome: CheckResult | Outcome | None = None
        if r is not None:
            try:
                counters.untrust_after_outage(r)
                outcome = _check_in_redis(
                    r, tenant, req, states, limits, result.estimate_nanos, now
                )
            except bredis.RedisError as exc:
                bredis.failed(exc)
                r = None
        if isinstance(outcome, CheckResult):
            return outcome
        if outcome == Outcome.UNTRUSTED and attempt == 0:
            schedule_reconcile(tenant.pk)
        retry = check_in_database(
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
            break
    return result


def _check_in_redis(
    r: Any,
    tenant: Tenant,
    req: CheckRequest,
    states: list[BudgetState],
    limits: list[tuple[RateLimitSpec, str]],
    estimate: int,
    now: datetime,
) -> CheckResult | Outcome:
    """The script's answer as a result; Outcome.UNTRUSTED when PostgreSQL must answer."""
    call = CheckScriptCall(
        tenant_id=tenant.pk,
        now_ms=int(now.timestamp() * 1000),
        estimate_tokens=req.estimated_input_tokens + req.estimated_output_tokens,
        estimate_nanos=estimate,
        reserve=req.reserve,
        reservation_id=uuid.uuid4().hex if req.reserve else "",
        reservation_seconds=settings.COSTMON_RESERVATION_SECONDS,
        event_id=req.event_id,
        rate_limits=limits,
        budgets=[_script_budget(state) for state in states],
    )
    reply = run_check_script(r, call)
    if reply.outcome == Outcome.UNTRUSTED:
        return reply.outcome
    return _result_of(reply, call, tenant, states)


def _script_budget(state: BudgetState) -> ScriptBudget:
    spec = state.spec
    return ScriptBudget(
        limit_nanos=spec.limit_nanos,
        hard=spec.hard,
        counter_field=counters.budget_field(spec, end_user=state.end_user),
        hold_name=reservations.hold_name(spec.id, state.window.key, state.end_user),
        buckets=state.window.buckets,
    )


def _result_of(
    reply: ScriptReply, call: CheckScriptCall, tenant: Tenant, states: list[BudgetState]
) -> CheckResult:
    result = CheckResult(allowed=True)
    if reply.outcome == Outcome.STOPPED:
        reason = reply.stop.split("|", 1)[-1]
        result.refuse(
            "emergency_stop", {"code": "emergency_stop", "message": f"Emergency stop: {reason}"}
        )
        if reply.figures is not None:
            _set_figures(states, reply.figures)
        else:  # the counters are not trusted: the figures come from PostgreSQL
            spend_for_a_stopped_call(tenant, states, result)
        return result
    limit = reply.rate_limit
    if reply.outcome == Outcome.RATE_LIMITED:
        assert limit is not None
        result.refuse("rate_limited")
        result.rate_limited = result.rate_limit = _rate_limit_hit(call, limit)
        return result
    _set_figures(states, reply.figures or ())
    if limit is not None:  # the tightest request limit, this call counted
        result.rate_limit = _rate_limit_hit(
            call, dataclasses.replace(limit, used_milli=limit.used_milli + 1000)
        )
    if reply.outcome == Outcome.OVER_BUDGET:
        result.refuse("budget_exceeded")
    elif reply.reserved:
        result.reservation_id = call.reservation_id
        for state in states:
            if state.spec.hard:
                state.reserved += call.estimate_nanos  # now held for this call
    return result


def _set_figures(states: list[BudgetState], figures: tuple[tuple[int, int], ...]) -> None:
    for state, (spent, reserved) in zip(states, figures, strict=True):
        state.spent, state.reserved = spent, reserved


def _rate_limit_hit(call: CheckScriptCall, figures: RateLimitFigures) -> RateLimitHit:
    spec, _ = call.rate_limits[figures.index - 1]
    limit, window_ms, previous = figures.limit, figures.window_ms, figures.previous
    used = figures.used_milli / 1000
    reset = math.ceil((window_ms - figures.into_ms) / 1000)
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
        kind=figures.kind,
        scope=spec.scope,
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
