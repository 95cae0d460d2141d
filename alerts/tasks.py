"""Celery tasks of the alerts app: thin, each calls one service."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from alerts.models import Channel
from alerts.rules import FREQUENT_KINDS, HOURLY_KINDS
from alerts.services import (
    DELIVER_NOTIFICATION_TASK,
    MAX_ATTEMPTS,
    alert_rules_evaluate,
    daily_report_send,
    notification_deliver,
)
from costmon.core.models import Tenant
from costmon.core.tenancy import unscoped


@shared_task(ignore_result=True)
def evaluate_frequent_rules() -> int:
    return alert_rules_evaluate(kinds=[str(k) for k in FREQUENT_KINDS]).notified


@shared_task(ignore_result=True)
def evaluate_hourly_rules() -> int:
    return alert_rules_evaluate(kinds=[str(k) for k in HOURLY_KINDS]).notified


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
