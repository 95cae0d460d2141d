"""Writes and decisions of the budgets app: budgets, the emergency stop, the pre-flight check."""

from __future__ import annotations

import contextlib
import functools
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from budgets import config as tenant_config
from budgets import counters
from budgets import redis as bredis
from budgets.config import BudgetSpec, RateLimitSpec, StopRuleSpec, TenantConfig
from budgets.models import Budget, EmergencyStop, EmergencyStopRule
from budgets.periods import Window, budget_window
from costmon.exceptions import DomainError
from costmon.models import ApiKey, Tenant
from costmon.tenancy import tenant_context, unscoped
from usage.catalog import catalog_for
from usage.models import Dimension, ModelHourlyRollup, UsageEvent
from usage.pricing import candidate_names, cost_nanos, format_usd, usd_to_nanos
from usage.selectors import named, rollups_of, tenant_zone, with_tag

log = structlog.get_logger(__name__)

# Called with (stop, "tripped" | "lifted") after a trip or lift commits; the alerts app
# registers its critical alert here.
stop_hooks: list[Callable[[EmergencyStop, str], None]] = []


# --- budgets --------------------------------------------------------------------------------

BUDGET_FIELDS = (
    "name",
    "scope",
    "scope_value",
    "api_key",
    "period",
    "rolling_days",
    "limit_usd",
    "thresholds",
    "enforcement",
    "suggested_model",
    "is_active",
)


def budget_create(*, tenant: Tenant, data: dict[str, Any]) -> Budget:
    budget = Budget(tenant=tenant)
    return _budget_save(budget, data)


def budget_update(*, budget: Budget, data: dict[str, Any]) -> Budget:
    return _budget_save(budget, data)


def budget_delete(*, budget: Budget) -> None:
    tenant_id = budget.tenant_id
    with tenant_context(tenant_id):
        budget.delete()
    tenant_config.bump_now_and_after_commit(tenant_id)


def _budget_save(budget: Budget, data: dict[str, Any]) -> Budget:
    unknown = set(data) - set(BUDGET_FIELDS)
    if unknown:
        raise DomainError(f"Unknown field {', '.join(sorted(unknown))}.", field=sorted(unknown)[0])
    for name, value in data.items():
        setattr(budget, name, value)
    if budget.scope not in Budget.VALUE_SCOPES and "scope_value" not in data:
        budget.scope_value = ""
    if budget.scope != Budget.Scope.API_KEY and "api_key" not in data:
        budget.api_key = None
    if budget.period != Budget.Period.ROLLING and "rolling_days" not in data:
        budget.rolling_days = None
    budget.full_clean()
    with tenant_context(budget.tenant_id), transaction.atomic():
        budget.save()
    # Checks in every process pick the change up at once; spend needs no seeding (counters
    # hold the period's real spend whatever the budget).
    tenant_config.bump_now_and_after_commit(budget.tenant_id)
    return budget


def api_key_for_budget(*, tenant: Tenant, key_id: Any) -> ApiKey:
    key = (
        ApiKey.objects.for_tenant(tenant).filter(pk=key_id).first()
        if str(key_id).isdigit()
        else None
    )
    if key is None:
        raise DomainError(f"No API key {key_id} in this tenant.", field="api_key")
    return key


# --- where a budget stands ------------------------------------------------------------------


@dataclass
class BudgetState:
    spec: BudgetSpec
    window: Window
    spent: int
    reserved: int = 0
    end_user: str = ""

    @property
    def percent(self) -> Decimal:
        return (Decimal(self.spent) * 100 / self.spec.limit_nanos).quantize(Decimal("0.01"))

    @property
    def remaining(self) -> int:
        return max(0, self.spec.limit_nanos - self.spent - self.reserved)

    @property
    def status(self) -> str:
        return budget_status(self.percent, self.spec.thresholds)


def budget_status(percent: Decimal, thresholds: Sequence[Decimal]) -> str:
    if percent >= 100:
        return "exceeded"
    if len(thresholds) > 1 and percent >= thresholds[-1]:
        return "critical"
    if thresholds and percent >= thresholds[0]:
        return "warning"
    return "ok"


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


def spent_from_database(
    *, tenant: Tenant, spec: BudgetSpec, window: Window, end_user: str = ""
) -> int:
    """A budget's spend in its window from PostgreSQL: the fallback when Redis is away."""
    with tenant_context(tenant):
        if spec.scope == "tag":
            name, _, value = spec.value.partition("=")
            qs: Any = with_tag(
                UsageEvent.objects.for_tenant(tenant).filter(
                    occurred_at__gte=window.start, occurred_at__lt=window.end
                ),
                (name, value),
            )
        else:
            # End users and keys are in the full rollups only; the rest reads the by-model ones.
            by_end_user = spec.scope in ("end_user", "every_end_user", "api_key")
            qs = rollups_of(tenant, by_end_user=by_end_user).filter(
                hour__gte=window.start, hour__lt=window.end
            )
            if spec.scope in ("end_user", "every_end_user"):
                qs = qs.filter(named(tenant, "end_user", end_user or spec.value))
            elif spec.scope == "api_key":
                qs = qs.filter(api_key_id=spec.api_key_id)
            elif spec.scope == "provider":
                qs = qs.filter(provider__value=spec.value)
            elif spec.scope == "operation":
                qs = qs.filter(operation__value=spec.value)
            elif spec.scope == "model":
                models = [
                    pk
                    for pk, name in Dimension.objects.for_tenant(tenant)
                    .filter(kind=Dimension.Kind.MODEL)
                    .values_list("pk", "value")
                    if spec.value in candidate_names(name)
                ]
                qs = qs.filter(model_id__in=models)
        return int(qs.aggregate(s=Sum("cost_nanos"))["s"] or 0)


# --- the emergency stop ----------------------------------------------------------------------


def stop_value(stop: EmergencyStop) -> str:
    """What checks find in Redis: the expiry (epoch ms) first, compared with the app's clock."""
    return f"{int(stop.expires_at.timestamp() * 1000)}|{stop.reason}"


def emergency_stop_active(*, tenant: Tenant | None) -> EmergencyStop | None:
    """The open stop that applies to `tenant` (its own, or a global one), from PostgreSQL."""
    now = timezone.now()
    with unscoped():
        q = Q(tenant__isnull=True) if tenant is None else Q(tenant=tenant) | Q(tenant__isnull=True)
        return (
            EmergencyStop.objects.unscoped()
            .filter(q, lifted_at__isnull=True, expires_at__gt=now)
            .order_by("tenant_id", "-tripped_at")
            .first()
        )


def _owner(tenant_id: int | None) -> Q:
    """Rows of one tenant, or the global rows (no tenant)."""
    return Q(tenant_id=tenant_id) if tenant_id is not None else Q(tenant__isnull=True)


def _close_expired(tenant_id: int | None) -> None:
    emergency_stops_close_expired(owner=_owner(tenant_id))


def emergency_stops_close_expired(*, owner: Q | None = None) -> int:
    """Record the lift of every stop past its expiry (checks already ignore them)."""
    now = timezone.now()
    closed = 0
    with unscoped():
        expired = EmergencyStop.objects.unscoped().filter(
            lifted_at__isnull=True, expires_at__lte=now
        )
        if owner is not None:
            expired = expired.filter(owner)
        for stop in expired:
            # Claimed with a conditional update: two workers never record (or announce) it twice.
            if (
                EmergencyStop.objects.unscoped()
                .filter(pk=stop.pk, lifted_at__isnull=True)
                .update(lifted_at=stop.expires_at, lift_reason="expired")
            ):
                stop.lifted_at, stop.lift_reason = stop.expires_at, "expired"
                closed += 1
                transaction.on_commit(functools.partial(_run_stop_hooks, stop, "lifted"))
    return closed


def emergency_stop_trip(
    *,
    tenant: Tenant | None,
    reason: str,
    duration_minutes: int = 60,
    user: Any = None,
    api_key_id: int | None = None,
    rule: EmergencyStopRule | StopRuleSpec | None = None,
    spend_nanos: int | None = None,
) -> EmergencyStop:
    """Stop all spending for a tenant (or everyone) until lifted or expired.

    Tripping while a stop is open returns the open one unchanged.
    """
    if not reason.strip():
        raise DomainError("Say why the stop is tripped.", field="reason")
    if not 1 <= duration_minutes <= 7 * 24 * 60:
        raise DomainError(
            "duration_minutes must be between 1 and 10080 (a week).", field="duration_minutes"
        )
    tenant_id = tenant.pk if tenant is not None else None
    _close_expired(tenant_id)
    now = timezone.now()
    with unscoped():
        try:
            with transaction.atomic():
                stop = EmergencyStop.objects.create(
                    tenant=tenant,
                    reason=reason.strip()[:500],
                    rule_id=rule.id
                    if isinstance(rule, StopRuleSpec)
                    else (rule.pk if rule else None),
                    tripped_at=now,
                    tripped_by=user if getattr(user, "pk", None) else None,
                    tripped_by_key_id=api_key_id,
                    spend_at_trip_nanos=spend_nanos,
                    expires_at=now + timedelta(minutes=duration_minutes),
                )
        except IntegrityError:
            open_stop = (
                EmergencyStop.objects.unscoped()
                .filter(_owner(tenant_id), lifted_at__isnull=True)
                .first()
            )
            if open_stop is None:
                raise
            return open_stop
    _publish_stop(tenant_id, stop)
    log.warning(
        "emergency_stop_tripped", tenant=tenant.slug if tenant else "global", reason=stop.reason
    )
    transaction.on_commit(lambda: _run_stop_hooks(stop, "tripped"))
    return stop


def emergency_stop_lift(
    *, tenant: Tenant | None, user: Any = None, reason: str = ""
) -> EmergencyStop | None:
    """Lift the open stop; None when there was none (or another caller lifted it first)."""
    tenant_id = tenant.pk if tenant is not None else None
    _close_expired(tenant_id)
    with unscoped():
        stop = (
            EmergencyStop.objects.unscoped()
            .filter(_owner(tenant_id), lifted_at__isnull=True)
            .first()
        )
        if stop is None:
            return None
        updated = (
            EmergencyStop.objects.unscoped()
            .filter(pk=stop.pk, lifted_at__isnull=True)
            .update(
                lifted_at=timezone.now(),
                lifted_by=user if getattr(user, "pk", None) else None,
                lift_reason=(reason or "lifted").strip()[:500],
            )
        )
        stop.refresh_from_db()
    if not updated:
        return None  # someone else lifted it first
    _publish_stop(tenant_id, None)
    log.warning("emergency_stop_lifted", tenant=tenant.slug if tenant else "global")
    transaction.on_commit(lambda: _run_stop_hooks(stop, "lifted"))
    return stop


def _publish_stop(tenant_id: int | None, stop: EmergencyStop | None) -> None:
    """Mirror the stop into Redis, where checks look (with the stop's own expiry)."""
    r = bredis.client()
    if r is None:
        return
    try:
        if stop is None:
            r.delete(counters.stop_key(tenant_id))
        else:
            ttl_ms = max(1, int((stop.expires_at - timezone.now()).total_seconds() * 1000))
            r.set(counters.stop_key(tenant_id), stop_value(stop), px=ttl_ms + 60_000)
    except bredis.RedisError as exc:
        bredis.failed(exc)
        if tenant_id is not None:
            counters.mark_stale(tenant_id)


def _run_stop_hooks(stop: EmergencyStop, what: str) -> None:
    for hook in stop_hooks:
        try:
            hook(stop, what)
        except Exception:
            log.exception("stop_hook_failed", hook=getattr(hook, "__name__", repr(hook)))


def _rule_window(
    rule: StopRuleSpec, tenant: Tenant | None, now: datetime
) -> tuple[str, list[str], str]:
    """(a name for the window instance, the day keys to sum, the field) for a stop rule."""
    if rule.tenant_id is None:
        local, key_of = now.astimezone(UTC), counters.global_day_key
    else:
        assert tenant is not None
        local = now.astimezone(tenant_zone(tenant))

        def key_of(day: Any) -> str:
            return counters.day_key(tenant.pk, day)

    if rule.window == "hour":
        return f"{local:%Y%m%d%H}", [key_of(local.date())], f"h:{local.hour:02d}"
    if rule.window == "day":
        return f"{local:%Y%m%d}", [key_of(local.date())], "t"
    first = local.date().replace(day=1)
    days = [first + timedelta(days=i) for i in range((local.date() - first).days + 1)]
    return f"{local:%Y%m}", [key_of(d) for d in days], "t"


def _rule_spend_from_database(rule: StopRuleSpec, tenant: Tenant, now: datetime) -> int:
    tz = tenant_zone(tenant) if rule.tenant_id is not None else UTC
    local = now.astimezone(tz)
    if rule.window == "hour":
        start = local.replace(minute=0, second=0, microsecond=0)
    elif rule.window == "day":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    with unscoped():
        qs = ModelHourlyRollup.objects.unscoped().filter(hour__gte=start)
        if rule.tenant_id is not None:
            qs = qs.filter(tenant=tenant)
        return int(qs.aggregate(s=Sum("cost_nanos"))["s"] or 0)


def emergency_stop_check(
    *, tenant: Tenant, rules: Sequence[StopRuleSpec] | None = None
) -> list[EmergencyStop]:
    """Trip a stop for each rule whose window's spend passed its threshold.

    A rule trips at most once per window (hour, day or month): a stop staff lifted, or one
    that expired, is not tripped again by the same spend.
    """
    rules = tenant_config.for_tenant(tenant.pk).stop_rules if rules is None else rules
    if not rules:
        return []
    now = timezone.now()
    r = bredis.client()
    windows = [_rule_window(rule, tenant, now) for rule in rules]
    spends: list[int] | None = None
    tripped_flags: list[bool] = [False] * len(rules)
    if r is not None:
        try:
            spends = counters.read_fields(r, [(keys, name) for _, keys, name in windows])
            pipe = r.pipeline(transaction=False)
            for rule, (instance, _, _) in zip(rules, windows, strict=True):
                pipe.exists(_tripped_key(rule, tenant, instance))
            tripped_flags = [bool(x) for x in pipe.execute()]
        except bredis.RedisError as exc:
            bredis.failed(exc)
            spends = None
    if spends is None:
        spends = [_rule_spend_from_database(rule, tenant, now) for rule in rules]
    trips = []
    for rule, (instance, _, _), spend, flagged in zip(
        rules, windows, spends, tripped_flags, strict=True
    ):
        if spend <= rule.threshold_nanos or flagged:
            continue
        with unscoped():
            rule_window_start_tripped = (
                EmergencyStop.objects.unscoped()
                .filter(
                    _owner(rule.tenant_id),
                    rule_id=rule.id,
                    tripped_at__gte=now - _window_length(rule.window),
                )
                .exists()
            )
        target = tenant if rule.tenant_id is not None else None
        if not rule_window_start_tripped:
            trips.append(
                emergency_stop_trip(
                    tenant=target,
                    reason=f"Spend {_usd(spend)} passed ${_usd_plain(rule.threshold_nanos)} {_window_label(rule.window)}",
                    duration_minutes=rule.duration_minutes,
                    rule=rule,
                    spend_nanos=spend,
                )
            )
        if r is not None:
            with contextlib.suppress(*bredis.RedisError):
                r.set(
                    _tripped_key(rule, tenant, instance),
                    1,
                    ex=int(_window_length(rule.window).total_seconds()) + 3600,
                )
    return trips


def _tripped_key(rule: StopRuleSpec, tenant: Tenant, instance: str) -> str:
    owner = f"{{{tenant.pk}}}" if rule.tenant_id is not None else "global"
    return f"cm:{owner}:estop:rule:{rule.id}:{instance}"


def _window_length(window: str) -> timedelta:
    return {"hour": timedelta(hours=1), "day": timedelta(days=1)}.get(window, timedelta(days=31))


def _window_label(window: str) -> str:
    return {"hour": "this hour", "day": "today"}.get(window, "this month")


def _usd(nanos: int) -> str:
    return f"${format_usd(nanos)}"


def _usd_plain(nanos: int) -> str:
    return format_usd(nanos)


# --- the pre-flight check --------------------------------------------------------------------


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
    source: str = "redis"
    estimate_nanos: int = 0


_CHECK = bredis.script(
    """
    local now = tonumber(ARGV[1])
    local i = 2
    local function arg() local v = ARGV[i]; i = i + 1; return v end
    -- 1. emergency stop, tenant's or global
    for s = 1, 2 do
      local stop = redis.call('GET', arg())
      if stop and tonumber(string.match(stop, '^(%d+)|')) > now then return {1, stop} end
    end
    if redis.call('EXISTS', arg()) == 0 then return {4} end
    -- 2. rate limits: sliding window counters (the previous window weighted by its overlap)
    local n_rl = tonumber(arg())
    local est_tokens = tonumber(arg())
    local rl = {}
    local tightest = {}
    for r = 1, n_rl do
      local prefix = arg(); local window = tonumber(arg())
      local max_req = tonumber(arg()); local max_tok = tonumber(arg())
      local idx = math.floor(now / window)
      local into = now - idx * window
      local weight = 1 - into / window
      local q = tonumber(redis.call('GET', prefix .. ':q:' .. idx) or '0')
      local pq = tonumber(redis.call('GET', prefix .. ':q:' .. (idx - 1)) or '0')
      local t = tonumber(redis.call('GET', prefix .. ':t:' .. idx) or '0')
      local pt = tonumber(redis.call('GET', prefix .. ':t:' .. (idx - 1)) or '0')
      local used_q = pq * weight + q
      local used_t = pt * weight + t
      if max_req >= 0 and used_q + 1 > max_req then
        return {2, r, 'requests', max_req, math.floor(used_q * 1000), window, into, pq}
      end
      if max_tok >= 0 and used_t + est_tokens > max_tok then
        return {2, r, 'tokens', max_tok, math.floor(used_t * 1000), window, into, pt}
      end
      rl[#rl + 1] = {prefix, idx, window}
      if max_req >= 0 then
        tightest[#tightest + 1] = {r, max_req, math.floor(used_q * 1000), window, into}
      end
    end
    -- 3. budgets
    local reserve = arg() == '1'
    local res_id = arg(); local estimate = tonumber(arg())
    local expiry = tonumber(arg()); local res_ttl = tonumber(arg())
    local prefix = arg(); local event_id = arg()
    local n_b = tonumber(arg())
    local out = {}
    local denied = 0
    local holds = {}
    for b = 1, n_b do
      local limit = tonumber(arg()); local hard = arg() == '1'
      local field = arg(); local res_key = arg(); local n_days = tonumber(arg())
      local spent = 0
      for d = 1, n_days do spent = spent + tonumber(redis.call('HGET', arg(), field) or '0') end
      local expired = redis.call('ZRANGEBYSCORE', res_key, '-inf', now)
      if #expired > 0 then
        local gone = 0
        for _, member in ipairs(expired) do gone = gone + tonumber(string.match(member, ':(%d+)$')) end
        redis.call('ZREMRANGEBYSCORE', res_key, '-inf', now)
        redis.call('DECRBY', res_key .. ':sum', gone)
      end
      local reserved = tonumber(redis.call('GET', res_key .. ':sum') or '0')
      if reserved < 0 then reserved = 0 end
      if hard and (spent >= limit or spent + reserved + estimate > limit) then denied = 1 end
      out[#out + 1] = spent
      out[#out + 1] = reserved
      if hard then holds[#holds + 1] = res_key end
    end
    if denied == 1 then
      table.insert(out, 1, 0); table.insert(out, 1, 3)
      return out
    end
    for _, s in ipairs(rl) do
      redis.call('INCR', s[1] .. ':q:' .. s[2])
      redis.call('PEXPIRE', s[1] .. ':q:' .. s[2], 2 * s[3])
      if est_tokens > 0 then
        redis.call('INCRBY', s[1] .. ':t:' .. s[2], est_tokens)
        redis.call('PEXPIRE', s[1] .. ':t:' .. s[2], 2 * s[3])
      end
    end
    local reserved_flag = 0
    if reserve and #holds > 0 and estimate > 0 then
      local member = res_id .. ':' .. estimate
      for _, key in ipairs(holds) do
        redis.call('ZADD', key, expiry, member)
        redis.call('INCRBY', key .. ':sum', estimate)
        redis.call('PEXPIRE', key, res_ttl)
        redis.call('PEXPIRE', key .. ':sum', res_ttl)
      end
      redis.call('SET', prefix .. ':res:' .. res_id, estimate .. '|' .. table.concat(holds, '|'), 'PX', res_ttl)
      if event_id ~= '' then
        redis.call('SET', prefix .. ':resev:' .. event_id, res_id, 'PX', res_ttl)
      end
      reserved_flag = 1
    end
    table.insert(out, 1, reserved_flag); table.insert(out, 1, 0)
    -- the tightest request limit, for the X-RateLimit headers
    local best = nil
    for _, t in ipairs(tightest) do
      if best == nil or (t[2] * 1000 - t[3]) < (best[2] * 1000 - best[3]) then best = t end
    end
    if best then
      out[#out + 1] = best[1]; out[#out + 1] = best[2]; out[#out + 1] = best[3]
      out[#out + 1] = best[4]; out[#out + 1] = best[5]
    end
    return out
    """
)


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

    With Redis up this reads only Redis (one script, atomic, so reservations cannot overshoot
    a hard budget under concurrency). Without it, PostgreSQL answers the budget question and
    the reply says that rate limits and reservations were not available.
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
    outcome = None
    if r is not None:
        try:
            outcome = _check_in_redis(r, tenant, req, states, limits, estimate, now)
        except bredis.RedisError as exc:
            bredis.failed(exc)
    if outcome == "untrusted":
        from budgets.tasks import schedule_reconcile

        schedule_reconcile(tenant.pk)
        outcome = None
    if outcome is None:
        _check_in_database(tenant, req, states, result, have_redis=r is not None, limits=limits)
    elif isinstance(outcome, CheckResult):
        outcome.warnings[:0] = result.warnings
        result = outcome
        result.estimate_nanos = estimate
    _conclude(result, states, estimate)
    return result


def _check_in_redis(
    r: Any,
    tenant: Tenant,
    req: CheckRequest,
    states: list[BudgetState],
    limits: list[tuple[RateLimitSpec, str]],
    estimate: int,
    now: datetime,
) -> CheckResult | str:
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
        res_key = f"{prefix}:r:{bspec.id}:{state.window.key}" + (
            f":{state.end_user}" if state.end_user else ""
        )
        args += [
            bspec.limit_nanos,
            "1" if bspec.hard else "0",
            name,
            res_key,
            len(state.window.buckets),
        ]
        args += [counters.bucket_key(tenant.pk, bucket) for bucket in state.window.buckets]
    reply = _CHECK(r, args)
    code = int(reply[0])
    if code == 4:
        return "untrusted"
    result = CheckResult(allowed=True)
    if code == 1:
        stop = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        result.allowed = False
        result.reasons.append("emergency_stop")
        result.warnings.append(
            {"code": "emergency_stop", "message": f"Emergency stop: {stop.split('|', 1)[-1]}"}
        )
        return result
    if code == 2:
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
    if code == 3:
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
    tenant: Tenant,
    req: CheckRequest,
    states: list[BudgetState],
    result: CheckResult,
    *,
    have_redis: bool,
    limits: list[tuple[RateLimitSpec, str]],
) -> None:
    result.source = "database"
    stop = emergency_stop_active(tenant=tenant)
    if stop is not None:
        result.allowed = False
        result.reasons.append("emergency_stop")
        result.warnings.append(
            {"code": "emergency_stop", "message": f"Emergency stop: {stop.reason}"}
        )
        return
    for state in states:
        state.spent = spent_from_database(
            tenant=tenant, spec=state.spec, window=state.window, end_user=state.end_user
        )
        if state.spec.hard and (
            state.spent >= state.spec.limit_nanos
            or state.spent + result.estimate_nanos > state.spec.limit_nanos
        ):
            result.allowed = False
            if "budget_exceeded" not in result.reasons:
                result.reasons.append("budget_exceeded")
    # Without Redis configured (the embedded default) this is the normal path, not a fault.
    if settings.REDIS_URL:
        why = "Redis is unavailable" if not have_redis else "the counters are being rebuilt"
        result.warnings.append(
            {
                "code": "counters_from_database",
                "message": f"Spend was read from the database ({why}).",
            }
        )
    else:
        why = "they need Redis, which is not configured"
    if limits:
        result.warnings.append(
            {"code": "rate_limits_not_applied", "message": f"Rate limits were not applied ({why})."}
        )
    if req.reserve:
        result.warnings.append(
            {"code": "reservation_unavailable", "message": f"No reservation was made ({why})."}
        )


def _conclude(result: CheckResult, states: list[BudgetState], estimate: int) -> None:
    result.budgets = states
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
                    "message": f"Budget '{spec.name}'{who} is at {percent}% of ${_usd_plain(spec.limit_nanos)} ({status}).",
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
