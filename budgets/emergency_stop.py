"""The emergency stop: trip, lift, expire, and the stop rules that trip it on their own.

PostgreSQL holds every stop and its history; Redis mirrors the open one where the check script
looks (`counters.stop_key`, with the stop's own expiry). A trip or lift is announced once it
commits through `budgets.signals.emergency_stop_changed`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import structlog
from django.db import IntegrityError, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from budgets import config as tenant_config
from budgets import counters
from budgets import redis as bredis
from budgets.config import StopRuleSpec
from budgets.models import EmergencyStop, EmergencyStopRule
from budgets.signals import EmergencyStopChanged, emergency_stop_changed
from costmon.core.exceptions import DomainError
from costmon.core.models import Tenant
from costmon.core.money import format_money
from costmon.core.periods import tenant_zone
from costmon.core.tenancy import unscoped
from usage.models import ModelHourlyRollup

log = structlog.get_logger(__name__)


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
                _announce_on_commit(stop, "lifted")
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
    emergency_stops_close_expired(owner=_owner(tenant_id))
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
    _publish(tenant_id, stop)
    log.warning(
        "emergency_stop_tripped", tenant=tenant.slug if tenant else "global", reason=stop.reason
    )
    _announce_on_commit(stop, "tripped")
    return stop


def emergency_stop_lift(
    *, tenant: Tenant | None, user: Any = None, api_key_id: int | None = None, reason: str = ""
) -> EmergencyStop | None:
    """Lift the open stop; None when there was none (or another caller lifted it first)."""
    tenant_id = tenant.pk if tenant is not None else None
    emergency_stops_close_expired(owner=_owner(tenant_id))
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
                lifted_by_key_id=api_key_id,
                lift_reason=(reason or "lifted").strip()[:500],
            )
        )
        stop.refresh_from_db()
    if not updated:
        return None  # someone else lifted it first
    _publish(tenant_id, None)
    log.warning("emergency_stop_lifted", tenant=tenant.slug if tenant else "global")
    _announce_on_commit(stop, "lifted")
    return stop


def _publish(tenant_id: int | None, stop: EmergencyStop | None) -> None:
    """Mirror the stop into Redis, where checks look (with the stop's own expiry)."""
    r = bredis.client()
    if r is None:
        return
    try:
        if stop is None:
            r.delete(counters.stop_key(tenant_id))
        else:
            ttl_ms = max(1, int((stop.expires_at - timezone.now()).total_seconds() * 1000))
            r.set(counters.stop_key(tenant_id), counters.stop_value(stop), px=ttl_ms + 60_000)
    except bredis.RedisError as exc:
        bredis.failed(exc)
        if tenant_id is not None:
            counters.mark_stale(tenant_id)


def _announce_on_commit(stop: EmergencyStop, change: Literal["tripped", "lifted"]) -> None:
    transaction.on_commit(lambda: _announce(EmergencyStopChanged(stop=stop, change=change)))


def _announce(event: EmergencyStopChanged) -> None:
    """Send `emergency_stop_changed`; a receiver that fails is logged, the others still run."""
    for receiver, response in emergency_stop_changed.send_robust(sender=EmergencyStop, event=event):
        if isinstance(response, Exception):
            log.error(
                "stop_hook_failed",
                hook=getattr(receiver, "__name__", repr(receiver)),
                exc_info=response,
            )


# --- stop rules -------------------------------------------------------------------------------


def _rule_window(
    rule: StopRuleSpec, tenant: Tenant | None, now: datetime
) -> tuple[str, list[str], str]:
    """(a name for the window instance, the day keys to sum, the field) for a stop rule."""
    if rule.tenant_id is None:
        local, key_of = now.astimezone(UTC), counters.global_day_key
    else:
        assert tenant is not None
        local = now.astimezone(tenant_zone(tenant))

        def key_of(day: date) -> str:
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
        stop = _trip_for_rule(rule, tenant, spend, now)
        if stop is not None:
            trips.append(stop)
        if r is not None:
            with contextlib.suppress(*bredis.RedisError):
                r.set(
                    _tripped_key(rule, tenant, instance),
                    1,
                    ex=int(_window_length(rule.window).total_seconds()) + 3600,
                )
    return trips


def _trip_for_rule(
    rule: StopRuleSpec, tenant: Tenant, spend: int, now: datetime
) -> EmergencyStop | None:
    """Trip the rule's stop, unless it already tripped in this window."""
    with unscoped():
        tripped_in_window = (
            EmergencyStop.objects.unscoped()
            .filter(
                _owner(rule.tenant_id),
                rule_id=rule.id,
                tripped_at__gte=now - _window_length(rule.window),
            )
            .exists()
        )
    if tripped_in_window:
        return None
    spent, threshold = (
        format_money(spend, exact=True),
        format_money(rule.threshold_nanos, exact=True),
    )
    return emergency_stop_trip(
        tenant=tenant if rule.tenant_id is not None else None,
        reason=f"Spend {spent} passed {threshold} {_window_label(rule.window)}",
        duration_minutes=rule.duration_minutes,
        rule=rule,
        spend_nanos=spend,
    )


def _tripped_key(rule: StopRuleSpec, tenant: Tenant, instance: str) -> str:
    owner = f"{{{tenant.pk}}}" if rule.tenant_id is not None else "global"
    return f"cm:{owner}:estop:rule:{rule.id}:{instance}"


def _window_length(window: str) -> timedelta:
    return {"hour": timedelta(hours=1), "day": timedelta(days=1)}.get(window, timedelta(days=31))


def _window_label(window: str) -> str:
    return {"hour": "this hour", "day": "today"}.get(window, "this month")
