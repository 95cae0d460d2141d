"""Celery tasks of the budgets app: pick tenants, call services."""

from __future__ import annotations

import contextlib

import structlog
from celery import shared_task
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as KombuOperationalError

from budgets import counters, drift, reservations, updates
from budgets import redis as bredis
from budgets.emergency_stop import emergency_stop_check, emergency_stops_close_expired
from budgets.models import CounterState, EmergencyStopRule
from costmon.core.models import Tenant
from costmon.core.tenancy import tenant_context, unscoped

log = structlog.get_logger(__name__)


# A rebuild that PostgreSQL could not serve (restarting) is tried again shortly: until it
# runs, the tenant's checks read PostgreSQL.
@shared_task(
    ignore_result=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=2,
    retry_backoff_max=30,
    max_retries=8,
)
def reconcile_counters(tenant_id: int | None = None, only_stale: bool = False) -> int:
    """Rebuild spend counters from PostgreSQL: one tenant, the stale ones, or all."""
    with unscoped():
        query = Tenant.objects.all()
        if tenant_id is not None:
            query = query.filter(pk=tenant_id)
        elif only_stale:
            query = query.filter(pk__in=CounterState.objects.unscoped().values("tenant_id"))
        tenants = list(query)
    corrected = 0
    for tenant in tenants:
        corrected += counters.counters_reconcile(tenant=tenant).corrected
    counters.global_counters_reconcile()
    if tenant_id is not None:
        _reconciled(tenant_id)
    return corrected


def _reconciling_key(tenant_id: int) -> str:
    return f"cm:{{{tenant_id}}}:reconciling"


def _reconciled(tenant_id: int) -> None:
    """The rebuild asked for is done: the next loss of trust may ask again at once."""
    r = bredis.client()
    if r is not None:
        with contextlib.suppress(*bredis.RedisError):
            r.delete(_reconciling_key(tenant_id))


@shared_task(ignore_result=True)
def sweep_counter_updates() -> int:
    """Apply the counter updates of batches whose process died right after its commit, and
    drop expired reservation holds."""
    report = updates.counter_updates_sweep()
    with unscoped():
        reservations.holds_expire()
    return report.applied


@shared_task(ignore_result=True)
def sample_counter_drift() -> int:
    """Compare recently active tenants' counters with PostgreSQL; rebuild those that drifted."""
    return sum(1 for sample in drift.counters_sample_drift() if sample.differing)


def schedule_reconcile(tenant_id: int) -> None:
    """Ask for a rebuild of one tenant's counters, at most once a minute."""
    r = bredis.client()
    if r is None:
        return
    try:
        if r.set(_reconciling_key(tenant_id), 1, nx=True, ex=60):
            reconcile_counters.delay(tenant_id)
    except bredis.RedisError as exc:
        bredis.failed(exc)
    except KombuOperationalError as exc:
        # The broker refused the task (Redis restarting): a later check asks again.
        log.warning("reconcile_not_scheduled", tenant_id=tenant_id, error=str(exc))
        with contextlib.suppress(*bredis.RedisError):
            r.delete(_reconciling_key(tenant_id))


@shared_task(ignore_result=True)
def check_emergency_stop_rules() -> int:
    """Trip stops whose rules' thresholds spend passed, for tenants with rules (or all, when a
    global rule exists); ingest checks too, this catches spend that arrived while it could not."""
    with unscoped():
        has_global = (
            EmergencyStopRule.objects.unscoped()
            .filter(is_active=True, tenant__isnull=True)
            .exists()
        )
        query = Tenant.objects.all()
        if not has_global:
            query = query.filter(
                pk__in=EmergencyStopRule.objects.unscoped()
                .filter(is_active=True)
                .values("tenant_id")
            )
        tenants = list(query)
    tripped = 0
    for tenant in tenants:
        with tenant_context(tenant):
            tripped += len(emergency_stop_check(tenant=tenant))
    return tripped


@shared_task(ignore_result=True)
def close_expired_emergency_stops() -> int:
    return emergency_stops_close_expired()
