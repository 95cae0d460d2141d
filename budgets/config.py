"""What a tenant has configured (budgets, rate limits, stop rules), as plain frozen data,
kept per process and reloaded only when a write bumps the tenant's version in Redis.

A pre-flight check must not touch the database, so it reads this instead of the models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import InterfaceError, OperationalError, transaction

from budgets.models import (
    Budget,
    BudgetDefaults,
    EmergencyStopRule,
    RateLimit,
    effective_fail_mode,
)
from budgets.scopes import normalized_value, tag_name
from costmon.core.cache import VersionedCache
from costmon.core.money import usd_to_nanos
from costmon.core.tenancy import unscoped

_TTL_WITHOUT_VERSION = 5.0


@dataclass(frozen=True)
class BudgetSpec:
    id: int
    name: str
    scope: str
    value: str  # lowercased for provider and model scopes
    api_key_id: int | None
    period: str
    rolling_days: int | None
    limit_nanos: int
    thresholds: tuple[Decimal, ...]  # ascending
    hard: bool
    suggested_model: str
    fail_mode: str = "closed"  # closed | open: when spend cannot be known at all


@dataclass(frozen=True)
class RateLimitSpec:
    id: int
    scope: str
    value: str
    window_seconds: int
    max_requests: int | None
    max_tokens: int | None


@dataclass(frozen=True)
class StopRuleSpec:
    id: int
    tenant_id: int | None
    window: str
    threshold_nanos: int
    duration_minutes: int


@dataclass(frozen=True)
class TenantConfig:
    budgets: tuple[BudgetSpec, ...] = ()
    rate_limits: tuple[RateLimitSpec, ...] = ()
    stop_rules: tuple[StopRuleSpec, ...] = ()  # the tenant's and the global ones
    tag_names: frozenset[str] = field(default_factory=frozenset)  # tags some budget counts
    default_fail_mode: str = ""  # the tenant's default for budgets that set none


def version_key(tenant_id: int | None) -> str:
    return f"cm:{{{tenant_id}}}:cfgv" if tenant_id is not None else "cm:global:cfgv"


def bump(tenant_id: int | None) -> None:
    """Call after a write to budgets, rate limits or stop rules (None: a global rule)."""
    _configs.bump(version_key(tenant_id))


def bump_now_and_after_commit(tenant_id: int | None) -> None:
    """Bump at once (this process sees the write) and again once it commits (so no process
    keeps a copy it loaded before the commit)."""
    bump(tenant_id)
    transaction.on_commit(lambda: bump(tenant_id))


def clear_local() -> None:
    _configs.forget()


def spec_of(b: Any, *, default_fail_mode: str = "") -> BudgetSpec:
    hard = b.enforcement == "hard"
    return BudgetSpec(
        id=b.pk,
        name=b.name,
        scope=b.scope,
        value=normalized_value(b.scope, b.scope_value),
        api_key_id=b.api_key_id,
        period=b.period,
        rolling_days=b.rolling_days,
        limit_nanos=usd_to_nanos(b.limit_usd),
        thresholds=tuple(b.sorted_thresholds),
        hard=hard,
        suggested_model=b.suggested_model,
        fail_mode=effective_fail_mode(own=b.fail_mode, tenant_default=default_fail_mode, hard=hard),
    )


def load(tenant_id: int) -> TenantConfig:
    with unscoped():
        default_fail_mode = (
            BudgetDefaults.objects.for_tenant(tenant_id).values_list("fail_mode", flat=True).first()
            or ""
        )
        budgets = tuple(
            spec_of(b, default_fail_mode=default_fail_mode)
            for b in Budget.objects.for_tenant(tenant_id).filter(is_active=True).order_by("pk")
        )
        limits = tuple(
            RateLimitSpec(r.pk, r.scope, r.value, r.window_seconds, r.max_requests, r.max_tokens)
            for r in RateLimit.objects.for_tenant(tenant_id).order_by("pk")
        )
        rules = tuple(
            StopRuleSpec(
                r.pk, r.tenant_id, r.window, usd_to_nanos(r.threshold_usd), r.duration_minutes
            )
            for r in EmergencyStopRule.objects.unscoped()
            .filter(is_active=True)
            .filter(tenant_id__in=[tenant_id])
            .order_by("pk")
        )
        global_rules = tuple(
            StopRuleSpec(r.pk, None, r.window, usd_to_nanos(r.threshold_usd), r.duration_minutes)
            for r in EmergencyStopRule.objects.unscoped()
            .filter(is_active=True, tenant__isnull=True)
            .order_by("pk")
        )
    tags = frozenset(name for name in map(tag_name, budgets) if name is not None)
    return TenantConfig(
        budgets=budgets,
        rate_limits=limits,
        stop_rules=rules + global_rules,
        tag_names=tags,
        default_fail_mode=default_fail_mode,
    )


def for_tenant(tenant_id: int) -> TenantConfig:
    """The tenant's configuration; no SQL unless it changed (or Redis is away). While
    PostgreSQL is away the copy this process has is better than no answer (checks then decide
    by each budget's fail mode)."""
    return _configs.get(tenant_id)


_configs: VersionedCache[int, TenantConfig] = VersionedCache(
    version_keys=lambda tenant_id: (version_key(tenant_id), version_key(None)),
    load=load,
    ttl=lambda: _TTL_WITHOUT_VERSION,
    keep_on=(OperationalError, InterfaceError),
)
