"""Celery tasks of the alerts app: thin, each calls one service."""

from __future__ import annotations

from typing import Any

import structlog
from celery import shared_task
from kombu.exceptions import OperationalError as KombuOperationalError

from alerts.models import Channel
from alerts.rounds import FREQUENT, HOURLY, rounds_due, rounds_unqueue, rule_round_run
from alerts.services import (
    DELIVER_NOTIFICATION_TASK,
    MAX_ATTEMPTS,
    daily_report_send,
    notification_deliver,
)
from costmon.core.models import Tenant
from costmon.core.tenancy import unscoped

log = structlog.get_logger(__name__)


@shared_task(ignore_result=True)
def evaluate_frequent_rules() -> int:
    """Beat's every-minute task: queue a round for each tenant due (alerts.rounds); returns
    how many were queued."""
    return _dispatch(FREQUENT)


@shared_task(ignore_result=True)
def evaluate_hourly_rules() -> int:
    """Beat's hourly task: queue a round for each tenant with projection, spike or anomaly
    rules."""
    return _dispatch(HOURLY)


@shared_task(ignore_result=True)
def evaluate_tenant_rules(tenants: list[tuple[int, str]], cadence: str) -> int:
    """The rounds of a few tenants ((id, fingerprint) pairs), one after the other; each is
    skipped while another round of its tenant runs. Returns how many notifications went."""
    notified = 0
    for tenant_id, fingerprint in tenants:
        report = rule_round_run(tenant_id=tenant_id, cadence=cadence, fingerprint=fingerprint)
        notified += report.notified if report else 0
    return notified


# Tenants per task: a task costs a worker a few milliseconds besides the rounds, about a tenant's
# round itself; a few tenants a task keep that small and still share a round among workers.
TENANTS_PER_TASK = 10


def _dispatch(cadence: str) -> int:
    due = rounds_due(cadence=cadence)
    for start in range(0, len(due), TENANTS_PER_TASK):
        chunk = due[start : start + TENANTS_PER_TASK]
        try:
            evaluate_tenant_rules.delay([(d.tenant_id, d.fingerprint) for d in chunk], cadence)
        except KombuOperationalError as exc:
            # The broker refused (Redis restarting): the next dispatch queues the rest.
            log.warning(
                "rule_rounds_not_queued", cadence=cadence, left=len(due) - start, error=str(exc)
            )
            rounds_unqueue(cadence=cadence, tenant_ids=[d.tenant_id for d in due[start:]])
            return start
    return len(due)


@shared_task(
    bind=True, ignore_result=True, max_retries=MAX_ATTEMPTS, name=DELIVER_NOTIFICATION_TASK
)
def deliver_notification(self: Any, notification_id: int) -> str | None:
    outcome = notification_deliver(notification_id=notification_id)
    if outcome is not None and outcome.retry_in is not None:
        # Only transient failures come back here; permanent ones disabled the channel.
        raise self.retry(countdown=outcome.retry_in)
    return outcome.status if outcome else None


@shared_task(ignore_result=True)
def send_daily_reports() -> int:
    """Yesterday's cost report to every tenant's email channels."""
    with unscoped():
        tenant_ids = list(
            Channel.objects.unscoped()
            .filter(kind="email", is_enabled=True)
            .values_list("tenant_id", flat=True)
            .distinct()
        )
        tenants = list(Tenant.objects.filter(pk__in=tenant_ids))
    return sum(daily_report_send(tenant=tenant) for tenant in tenants)
