"""Alert rules, notification channels, alerts and the record of every delivery."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from costmon.core.models import Tenant
from costmon.core.tenancy import TenantScopedManager


class Channel(models.Model):
    class Kind(models.TextChoices):
        SLACK = "slack", "Slack incoming webhook"
        WEBHOOK = "webhook", "Webhook (signed JSON)"
        EMAIL = "email", "Email"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    config = models.JSONField(
        default=dict, help_text="slack: {url}; webhook: {url, secret}; email: {to: [...]}"
    )
    is_enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=500, blank=True)
    last_error = models.CharField(max_length=1000, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = TenantScopedManager["Channel"]()

    class Meta:
        indexes = [models.Index(fields=["tenant", "kind"], name="channel_tenant_kind")]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"


class AlertRule(models.Model):
    class Kind(models.TextChoices):
        SPEND = "spend", "spend above a threshold"
        BUDGET = "budget", "budget threshold crossed"
        PROJECTED = "projected", "projected month-end spend above a threshold"
        SPIKE = "spike", "spike against the usual hour"
        CACHE_HIT_RATE = "cache_hit_rate", "cache hit rate below a threshold"
        ERROR_RATE = "error_rate", "error rate above a threshold"
        UNPRICED = "unpriced", "unpriced model seen"
        EMERGENCY_STOP = "emergency_stop", "emergency stop tripped or lifted"
        PRICE_CHANGED = "price_changed", "catalog prices changed"
        ANOMALY = "anomaly", "spike against the hour-of-week baseline (median and MAD)"

    class Severity(models.TextChoices):
        INFO = "info"
        WARNING = "warning"
        CRITICAL = "critical"

    class Period(models.TextChoices):
        HOUR = "hour"
        DAY = "day"
        WEEK = "week"
        MONTH = "month"

    class Metric(models.TextChoices):
        COST = "cost"
        TOKENS = "tokens"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.WARNING)
    channels = models.ManyToManyField(Channel, blank=True, related_name="rules")
    is_active = models.BooleanField(default=True)
    # Spend and projection rules
    period = models.CharField(max_length=5, choices=Period.choices, default=Period.DAY)
    threshold_usd = models.DecimalField(
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
    )
    # Rate rules: cache hit rate below, error rate above (percent)
    threshold_percent = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(Decimal(100))],
    )
    # Spike rules
    metric = models.CharField(max_length=6, choices=Metric.choices, default=Metric.COST)
    multiplier = models.DecimalField(
        max_digits=6,
        decimal_places=2,
        default=Decimal(2),
        validators=[MinValueValidator(Decimal("1.01"))],
    )
    trailing_days = models.PositiveSmallIntegerField(
        default=7, validators=[MinValueValidator(1), MaxValueValidator(60)]
    )
    min_volume = models.DecimalField(
        max_digits=14,
        decimal_places=6,
        default=Decimal(1),
        help_text="Spike and rate rules stay quiet below this volume (USD for cost, tokens for tokens, "
        "calls for rates), so a quiet night pages no one.",
    )
    # Optional filters (spend, spike and rate rules)
    provider = models.CharField(max_length=50, blank=True)
    model = models.CharField(max_length=200, blank=True)
    operation = models.CharField(max_length=100, blank=True)
    end_user = models.CharField(max_length=255, blank=True)
    tag = models.CharField(max_length=265, blank=True, help_text="name=value")
    # Delivery
    cooldown_minutes = models.PositiveIntegerField(
        default=60, help_text="While the condition holds, notify again at most this often."
    )
    notify_resolved = models.BooleanField(default=False, help_text="Send a notice when it clears.")
    created_at = models.DateTimeField(default=timezone.now)
    # A rule saved since a tenant's last round makes the next round due (alerts.rounds).
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantScopedManager["AlertRule"]()

    class Meta:
        indexes = [models.Index(fields=["tenant", "kind"], name="alertrule_tenant_kind")]

    def __str__(self) -> str:
        return self.name


# What a person sets on a rule (the API and the admin edit these).
RULE_FIELDS = (
    "name",
    "kind",
    "severity",
    "is_active",
    "period",
    "threshold_usd",
    "threshold_percent",
    "metric",
    "multiplier",
    "trailing_days",
    "min_volume",
    "provider",
    "model",
    "operation",
    "end_user",
    "tag",
    "cooldown_minutes",
    "notify_resolved",
)


class Alert(models.Model):
    """One condition of one rule for one scope and period at one level: the unit of dedup."""

    class Status(models.TextChoices):
        FIRING = "firing"
        RESOLVED = "resolved"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    scope = models.CharField(max_length=300)  # what it is about: "tenant", "budget:3:user-7", ...
    period = models.CharField(max_length=20)  # which period: "20261121", "202611", "2026112114"
    period_label = models.CharField(max_length=50, blank=True)  # the same, for people
    level = models.CharField(max_length=20)  # warning, critical, exceeded, fired, tripped...
    severity = models.CharField(max_length=10, choices=AlertRule.Severity.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.FIRING)
    title = models.CharField(max_length=300)
    text = models.TextField()
    figure = models.CharField(max_length=50, blank=True)
    threshold = models.CharField(max_length=50, blank=True)
    link = models.CharField(max_length=500, blank=True)
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    last_notified_at = models.DateTimeField(null=True, blank=True)
    notify_count = models.PositiveIntegerField(default=0)
    resolved_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    objects = TenantScopedManager["Alert"]()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "rule", "scope", "period", "level"], name="alert_dedup"
            )
        ]
        indexes = [models.Index(fields=["tenant", "-first_seen_at"], name="alert_tenant_time")]
        ordering = ["-first_seen_at"]

    def __str__(self) -> str:
        return self.title


class Notification(models.Model):
    """One delivery of an alert to one channel: written before sending, updated after."""

    class Kind(models.TextChoices):
        ALERT = "alert"
        REMINDER = "reminder"
        RESOLVED = "resolved"
        TEST = "test"

    class Status(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        RETRYING = "retrying"
        FAILED = "failed"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    alert = models.ForeignKey(
        Alert, on_delete=models.CASCADE, null=True, blank=True, related_name="notifications"
    )
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.ALERT)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    response_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=1000, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedManager["Notification"]()

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"], name="notification_tenant_time")]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kind} to {self.channel_id}: {self.status}"


class RuleRound(models.Model):
    """One tenant's rounds of one cadence of rules: when the last ran, whether its usage changed
    since, and the lease that keeps two rounds of the tenant from running at once
    (alerts.rounds says when a round is due)."""

    class Cadence(models.TextChoices):
        FREQUENT = "frequent", "every minute"
        HOURLY = "hourly", "every hour"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    cadence = models.CharField(max_length=10, choices=Cadence.choices)
    dirty_since = models.DateTimeField(
        null=True, blank=True, help_text="Usage changed since the last round claimed the tenant."
    )
    fingerprint = models.CharField(
        max_length=64, blank=True, help_text="Rules, budgets, time zone and prices it last saw."
    )
    counters_pending = models.BooleanField(
        default=False, help_text="Spend counter updates were pending at the last dispatch."
    )
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    due_at = models.DateTimeField(
        null=True, blank=True, help_text="When time alone makes the next round due."
    )
    lease_until = models.DateTimeField(null=True, blank=True)
    lease_token = models.CharField(max_length=32, blank=True)

    objects = TenantScopedManager["RuleRound"]()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "cadence"], name="ruleround_tenant_cadence")
        ]

    def __str__(self) -> str:
        return f"{self.cadence} rules of tenant {self.tenant_id}"
