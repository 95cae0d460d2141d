"""Writes of the alerts app: raising and resolving alerts, delivering notifications.

Exactly-once, the healthchecks way: an alert is unique per (rule, scope, period, level); a
notification round is claimed with a conditional UPDATE on the alert (only one worker's update
matches), and each delivery is claimed the same way on its Notification row, written before
sending and updated after.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from celery import current_app
from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.html import escape

from alerts.models import Alert, AlertRule, Channel, Notification
from alerts.reads import shared_reads
from alerts.rules import EVALUATORS, Condition, dashboard_link
from alerts.transports import get_transport
from alerts.transports.base import Message, TransportError
from budgets.models import EmergencyStop
from costmon.core.exceptions import DomainError
from costmon.core.models import Tenant
from costmon.core.money import format_money
from costmon.core.periods import custom_range, tenant_zone
from costmon.core.tenancy import tenant_context, unscoped
from usage.reports import build_report, render_table

log = structlog.get_logger(__name__)

# The task that delivers one notification (alerts.tasks.deliver_notification).
DELIVER_NOTIFICATION_TASK = "alerts.tasks.deliver_notification"

MAX_ATTEMPTS = 5
CLAIM_TIMEOUT = timedelta(minutes=5)  # a worker that died mid-send frees its claim after this


# --- evaluating -------------------------------------------------------------------------------


@dataclass
class EvaluationReport:
    rules: int = 0
    firing: int = 0
    notified: int = 0
    resolved: int = 0


def alert_rules_evaluate(
    *, kinds: tuple[str, ...] | list[str], now: datetime | None = None
) -> EvaluationReport:
    """Evaluate every active rule of these kinds, tenant by tenant (each in its own context)."""
    now = now or timezone.now()
    report = EvaluationReport()
    with unscoped():
        tenant_ids = list(
            AlertRule.objects.unscoped()
            .filter(is_active=True, kind__in=kinds)
            .values_list("tenant_id", flat=True)
            .distinct()
        )
        tenants = list(Tenant.objects.filter(pk__in=tenant_ids))
    for tenant in tenants:
        tenant_rules_evaluate(tenant=tenant, kinds=kinds, now=now, report=report)
    return report


def tenant_rules_evaluate(
    *, tenant: Tenant, kinds: tuple[str, ...] | list[str], now: datetime, report: EvaluationReport
) -> int:
    """Evaluate the tenant's active rules of these kinds in its context, adding to `report`;
    returns how many rules failed (each is logged, and the others still run)."""
    failed = 0
    with tenant_context(tenant), shared_reads():
        rules = list(
            AlertRule.objects.for_tenant(tenant)
            .filter(is_active=True, kind__in=kinds)
            .order_by("pk")  # two rounds that overlap lock alerts in the same order
        )
        by_pk = {rule.pk: rule for rule in rules}
        firing: dict[int, list[Alert]] = {rule.pk: [] for rule in rules}
        for alert in Alert.objects.for_tenant(tenant).filter(
            rule__in=rules, status=Alert.Status.FIRING
        ):
            alert.rule = by_pk[alert.rule_id]
            firing[alert.rule_id].append(alert)
        for rule in rules:
            rule.tenant = tenant  # the evaluators read it: no query per rule
            try:
                # A savepoint: in a round's transaction, a rule that fails undoes only itself.
                with transaction.atomic():
                    part = alert_rule_evaluate(rule=rule, now=now, firing=firing[rule.pk])
            except Exception:
                # One broken rule must not stop the others; it is logged with its id.
                log.exception("alert_rule_failed", rule=rule.pk, tenant=tenant.slug)
                failed += 1
                continue
            report.rules += 1
            report.firing += part.firing
            report.notified += part.notified
            report.resolved += part.resolved
    return failed


def alert_rule_evaluate(
    *, rule: AlertRule, now: datetime | None = None, firing: list[Alert] | None = None
) -> EvaluationReport:
    """`firing`: the rule's firing alerts, when the caller read them already."""
    now = now or timezone.now()
    tenant = rule.tenant
    report = EvaluationReport(rules=1)
    conditions = EVALUATORS[rule.kind](rule, tenant, now)
    holding: set[tuple[str, str]] = set()
    for condition in conditions:
        holding.add((condition.scope, condition.period))
        report.firing += 1
        if alert_raise(rule=rule, condition=condition, now=now):
            report.notified += 1
    # What fired before and no longer holds (or whose period is over) has cleared.
    if firing is None:
        firing = list(
            Alert.objects.for_tenant(tenant).filter(rule=rule, status=Alert.Status.FIRING)
        )
    for alert in firing:
        if (alert.scope, alert.period) not in holding and alert_resolve(alert=alert, now=now):
            report.resolved += 1
    return report


def alert_raise(*, rule: AlertRule, condition: Condition, now: datetime | None = None) -> bool:
    """Record the condition; notify if nobody has for this alert within the rule's cooldown.
    Returns whether this call claimed a notification round."""
    now = now or timezone.now()
    key = {
        "tenant": rule.tenant,
        "rule": rule,
        "scope": condition.scope[:300],
        "period": condition.period,
        "level": condition.level,
    }
    fields = {
        "severity": condition.severity or rule.severity,
        "title": condition.title[:300],
        "text": condition.text,
        "figure": condition.figure[:50],
        "threshold": condition.threshold[:50],
        "link": condition.link[:500],
        "period_label": condition.period_label[:50],
        "last_seen_at": now,
    }
    with tenant_context(rule.tenant_id):
        alert = Alert.objects.for_tenant(rule.tenant_id).filter(**key).first()
        if alert is None:
            try:
                with transaction.atomic():
                    alert = Alert.objects.create(**key, first_seen_at=now, **fields)
            except IntegrityError:  # another worker created it first
                alert = Alert.objects.for_tenant(rule.tenant_id).get(**key)
        else:
            Alert.objects.for_tenant(rule.tenant_id).filter(pk=alert.pk).update(
                **fields, status=Alert.Status.FIRING, resolved_at=None
            )
        # The claim: only one evaluator's update matches, so only one notifies.
        cooldown = now - timedelta(minutes=rule.cooldown_minutes)
        claimed = (
            Alert.objects.for_tenant(rule.tenant_id)
            .filter(pk=alert.pk)
            .filter(Q(last_notified_at__isnull=True) | Q(last_notified_at__lte=cooldown))
            .update(last_notified_at=now, notify_count=F("notify_count") + 1)
        )
        if not claimed:
            return False
        alert.refresh_from_db()
        kind = Notification.Kind.ALERT if alert.notify_count == 1 else Notification.Kind.REMINDER
        _notify(alert=alert, rule=rule, kind=kind)
    return True


def alert_resolve(*, alert: Alert, now: datetime | None = None) -> bool:
    now = now or timezone.now()
    resolved = (
        Alert.objects.for_tenant(alert.tenant_id)
        .filter(pk=alert.pk, status=Alert.Status.FIRING)
        .update(status=Alert.Status.RESOLVED, resolved_at=now)
    )
    if resolved and alert.rule.notify_resolved and alert.last_notified_at is not None:
        alert.refresh_from_db()
        _notify(alert=alert, rule=alert.rule, kind=Notification.Kind.RESOLVED)
    return bool(resolved)


def _notify(*, alert: Alert, rule: AlertRule, kind: str) -> list[Notification]:
    channels = list(rule.channels.filter(is_enabled=True))
    notifications = [
        Notification.objects.create(
            tenant_id=alert.tenant_id, alert=alert, channel=channel, kind=kind
        )
        for channel in channels
    ]
    # One task per channel, after the commit: a slow or failing channel delays no other.
    for notification in notifications:
        transaction.on_commit(functools.partial(_enqueue_delivery, notification.pk))
    return notifications


def _enqueue_delivery(notification_id: int) -> None:
    # Named, not imported: alerts.tasks calls this module's services.
    current_app.signature(DELIVER_NOTIFICATION_TASK, args=(notification_id,)).delay()


# --- delivering --------------------------------------------------------------------------------


def message_for(notification: Notification) -> Message:
    alert = notification.alert
    tenant = notification.channel.tenant
    if alert is None:
        return Message(
            kind="test",
            tenant=tenant.slug,
            title="Test notification from costmon",
            severity="info",
            text=f"This channel ({notification.channel.name}) receives costmon alerts for {tenant.name}.",
            link=dashboard_link(tenant),
            occurred_at=timezone.now().isoformat(),
        )
    title = (
        alert.title
        if notification.kind != Notification.Kind.RESOLVED
        else f"Resolved: {alert.title}"
    )
    return Message(
        kind=str(notification.kind),
        tenant=tenant.slug,
        title=title,
        severity="info" if notification.kind == Notification.Kind.RESOLVED else alert.severity,
        text=alert.text
        if notification.kind != Notification.Kind.RESOLVED
        else f"It has cleared. {alert.text}",
        figure=alert.figure or None,
        threshold=alert.threshold or None,
        period=alert.period_label or alert.period or None,
        link=alert.link or None,
        alert_id=alert.pk,
        rule=alert.rule.name,
        occurred_at=alert.last_seen_at.isoformat(),
        details={"level": alert.level, "scope": alert.scope, "status": alert.status},
    )


@dataclass
class DeliveryOutcome:
    status: str
    retry_in: int | None = None  # seconds, for a transient failure with attempts left


def notification_deliver(*, notification_id: int) -> DeliveryOutcome | None:
    """Send one notification once. None when another worker holds it or it is done."""
    now = timezone.now()
    with unscoped():
        claimed = (
            Notification.objects.unscoped()
            .filter(
                pk=notification_id,
                status__in=[Notification.Status.PENDING, Notification.Status.RETRYING],
            )
            .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lte=now - CLAIM_TIMEOUT))
            .update(claimed_at=now, attempts=F("attempts") + 1)
        )
        if not claimed:
            return None
        notification = (
            Notification.objects.unscoped()
            .select_related("channel__tenant", "alert__rule")
            .get(pk=notification_id)
        )
    channel = notification.channel
    with tenant_context(channel.tenant_id):
        if not channel.is_enabled:
            _finish(
                notification,
                Notification.Status.FAILED,
                error=f"Channel disabled: {channel.disabled_reason}",
            )
            return DeliveryOutcome(Notification.Status.FAILED)
        started = time.monotonic()
        try:
            delivery = get_transport(channel.kind, channel.config).notify(message_for(notification))
        except TransportError as exc:
            duration = int((time.monotonic() - started) * 1000)
            Channel.objects.for_tenant(channel.tenant_id).filter(pk=channel.pk).update(
                last_error=exc.message[:1000], last_error_at=timezone.now()
            )
            if exc.permanent:
                # The endpoint is gone or refuses us: stop sending until someone fixes it.
                channel_disable(
                    channel=channel, reason=f"{exc.message} (after notification {notification.pk})"
                )
            retry = not exc.permanent and notification.attempts < MAX_ATTEMPTS
            status = Notification.Status.RETRYING if retry else Notification.Status.FAILED
            _finish(
                notification, status, error=exc.message, code=exc.response_code, duration=duration
            )
            return DeliveryOutcome(
                status, retry_in=30 * 2 ** (notification.attempts - 1) if retry else None
            )
        _finish(
            notification,
            Notification.Status.SENT,
            code=delivery.response_code,
            duration=delivery.duration_ms,
        )
        Channel.objects.for_tenant(channel.tenant_id).filter(pk=channel.pk).update(
            last_success_at=timezone.now()
        )
    return DeliveryOutcome(Notification.Status.SENT)


def _finish(
    notification: Notification,
    status: str,
    *,
    error: str = "",
    code: int | None = None,
    duration: int | None = None,
) -> None:
    Notification.objects.unscoped().filter(pk=notification.pk).update(
        status=status,
        error=error[:1000],
        response_code=code,
        duration_ms=duration,
        sent_at=timezone.now() if status == Notification.Status.SENT else None,
        claimed_at=None,
    )


# --- channels, rules, alerts -----------------------------------------------------------------------


def channel_validate(*, kind: str, config: dict[str, Any]) -> dict[str, Any]:
    try:
        transport = get_transport(kind, {})
    except ValueError as exc:
        raise ValidationError({"kind": str(exc)}) from None
    return type(transport).validate_config(dict(config or {}))


def channel_save(*, channel: Channel) -> Channel:
    channel.config = channel_validate(kind=channel.kind, config=channel.config)
    channel.full_clean()
    with tenant_context(channel.tenant_id):
        if channel.pk is None:
            channel.save()
        else:
            # Only what a person edits: a worker may have recorded an error meanwhile.
            channel.save(update_fields=["name", "kind", "config", "is_enabled", "disabled_reason"])
    return channel


SPEND_PERIODS = ("day", "week", "month")


def rule_validate(rule: AlertRule) -> None:
    """What each kind of rule needs, then the model's own checks, as field errors."""
    rule_validate_fields(rule)
    rule.full_clean(exclude=["tenant"])


def rule_validate_fields(rule: AlertRule) -> None:
    """What each kind of rule needs (the API and the admin share these words)."""
    errors: dict[str, str] = {}
    if rule.kind in (AlertRule.Kind.SPEND, AlertRule.Kind.PROJECTED) and rule.threshold_usd is None:
        words = (
            "a spend threshold"
            if rule.kind == AlertRule.Kind.SPEND
            else "a projected month-end threshold"
        )
        errors["threshold_usd"] = f"A {rule.get_kind_display()} rule needs {words} in USD."
    if rule.kind == AlertRule.Kind.SPEND and rule.period not in SPEND_PERIODS:
        errors["period"] = (
            "A spend rule watches a day, a week or a month (use a spike rule for hours)."
        )
    if rule.tag and "=" not in rule.tag:
        errors["tag"] = "Write the tag filter as name=value, e.g. team=search."
    if rule.kind == AlertRule.Kind.ANOMALY and rule.trailing_days < 14:
        errors["trailing_days"] = (
            "An anomaly rule learns from the same hour of the last whole weeks: set "
            "trailing_days to 14 to 56 (28 is four weeks)."
        )
    if errors:
        raise ValidationError(errors)


def channel_disable(*, channel: Channel, reason: str) -> None:
    Channel.objects.unscoped().filter(pk=channel.pk).update(
        is_enabled=False, disabled_reason=reason[:500]
    )
    log.warning("channel_disabled", channel=channel.pk, reason=reason)


def channel_enable(*, channel: Channel) -> None:
    Channel.objects.unscoped().filter(pk=channel.pk).update(is_enabled=True, disabled_reason="")


def channel_send_test(*, channel: Channel) -> Notification:
    """Send a test notification now (not through the queue) and return its record."""
    if not channel.is_enabled:
        raise DomainError(
            f"The channel is disabled ({channel.disabled_reason or 'by staff'}); enable it first."
        )
    with tenant_context(channel.tenant_id):
        notification = Notification.objects.create(
            tenant_id=channel.tenant_id, channel=channel, kind=Notification.Kind.TEST
        )
    outcome = notification_deliver(notification_id=notification.pk)
    if outcome is not None and outcome.status == Notification.Status.RETRYING:
        # A test is sent once, now: report the failure instead of retrying later.
        Notification.objects.unscoped().filter(pk=notification.pk).update(
            status=Notification.Status.FAILED
        )
    notification.refresh_from_db()
    return notification


def alert_acknowledge(*, alert: Alert, user: Any = None) -> Alert:
    Alert.objects.unscoped().filter(pk=alert.pk, acknowledged_at__isnull=True).update(
        acknowledged_at=timezone.now(), acknowledged_by=user if getattr(user, "pk", None) else None
    )
    alert.refresh_from_db()
    return alert


# --- the emergency stop (budgets.signals.emergency_stop_changed, received in alerts.receivers) -----


def on_emergency_stop(stop: EmergencyStop, what: str) -> None:
    """A stop tripped or lifted: raise it on every tenant's emergency-stop rules it affects."""
    with unscoped():
        rules = (
            AlertRule.objects.unscoped()
            .filter(is_active=True, kind=AlertRule.Kind.EMERGENCY_STOP)
            .select_related("tenant")
        )
        if stop.tenant_id is not None:
            rules = rules.filter(tenant_id=stop.tenant_id)
        affected = list(rules)
    for rule in affected:
        spend = (
            f" Spend at that moment: {format_money(stop.spend_at_trip_nanos)}."
            if stop.spend_at_trip_nanos is not None
            else ""
        )
        scope = "global" if stop.tenant_id is None else "tenant"
        if what == "tripped":
            condition = Condition(
                scope=f"stop:{stop.pk}",
                period=f"{stop.tripped_at:%Y%m%d%H%M}",
                level="tripped",
                title=f"Emergency stop tripped ({scope}): every LLM call is refused",
                text=f"{stop.reason}.{spend} It lifts at {stop.expires_at:%Y-%m-%d %H:%M} UTC unless lifted earlier.",
                link=dashboard_link(rule.tenant),
                severity=AlertRule.Severity.CRITICAL,
            )
        else:
            condition = Condition(
                scope=f"stop:{stop.pk}",
                period=f"{stop.tripped_at:%Y%m%d%H%M}",
                level="lifted",
                title=f"Emergency stop lifted ({scope}): calls are allowed again",
                text=f"The stop tripped at {stop.tripped_at:%Y-%m-%d %H:%M} UTC ({stop.reason}) is over: {stop.lift_reason or 'lifted'}.",
                link=dashboard_link(rule.tenant),
                severity=AlertRule.Severity.INFO,
            )
        alert_raise(rule=rule, condition=condition)


# --- the daily cost report -------------------------------------------------------------------------


def daily_report_send(*, tenant: Tenant, now: datetime | None = None) -> int:
    """Email yesterday's cost report (the tenant's calendar day) to its enabled email channels.
    Returns how many channels it went to."""
    now = now or timezone.now()
    yesterday = (now.astimezone(tenant_zone(tenant)) - timedelta(days=1)).date()
    with tenant_context(tenant):
        channels = list(
            Channel.objects.for_tenant(tenant).filter(kind=Channel.Kind.EMAIL, is_enabled=True)
        )
        if not channels:
            return 0
        report = build_report(
            tenant=tenant,
            time_range=custom_range(
                tenant=tenant, start=yesterday.isoformat(), end=yesterday.isoformat()
            ),
        )
        text = render_table([report])
    recipients = sorted(
        {address for channel in channels for address in channel.config.get("to", [])}
    )
    message = EmailMultiAlternatives(
        subject=f"[costmon] {tenant.name}: spend on {yesterday:%A %d %B %Y}",
        body=f"{text}\n\nOpen in costmon: {dashboard_link(tenant)}\n",
        to=recipients,
    )
    message.attach_alternative(
        f"<pre style='font-family:monospace'>{escape(text)}</pre>", "text/html"
    )
    message.send()
    return len(channels)
