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
def evaluate_tenant_rules(tenant_id: int, cadence: str, fingerprint: str = "") -> int:
    """One tenant's round; skipped while another round of the tenant runs."""
    report = rule_round_run(tenant_id=tenant_id, cadence=cadence, fingerprint=fingerprint)
    return report.notified if report else 0


def _dispatch(cadence: str) -> int:
    due = rounds_due(cadence=cadence)
    for sent, item in enumerate(due):
        try:
            evaluate_tenant_rules.delay(item.tenant_id, cadence, item.fingerprint)
        except KombuOperationalError as exc:
            # The broker refused (Redis restarting): the next dispatch queues the rest.
            log.warning(
                "rule_rounds_not_queued", cadence=cadence, left=len(due) - sent, error=str(exc)
            )
            rounds_unqueue(cadence=cadence, tenant_ids=[d.tenant_id for d in due[sent:]])
            return sent
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
