"""Budgets, rate limits and the emergency stop.

Spend itself is not stored here: it lives in the usage rollups (the truth) and in Redis
counters (fast); see `budgets.counters`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from costmon.core.models import ApiKey, Tenant
from costmon.core.tenancy import TenantScopedManager


def default_thresholds() -> list[int]:
    return [80, 95]


class Budget(models.Model):
    class Scope(models.TextChoices):
        TENANT = "tenant", "the whole tenant"
        END_USER = "end_user", "one end user"
        EVERY_END_USER = "every_end_user", "each end user separately"
        API_KEY = "api_key", "an API key"
        PROVIDER = "provider", "a provider"
        MODEL = "model", "a model"
        OPERATION = "operation", "an operation"
        TAG = "tag", "a tag value"

    class Period(models.TextChoices):
        DAY = "day"
        WEEK = "week"
        MONTH = "month"
        ROLLING = "rolling", "rolling N days"

    class Enforcement(models.TextChoices):
        SOFT = "soft", "soft (warn and alert)"
        HARD = "hard", "hard (block)"

    class FailMode(models.TextChoices):
        DEFAULT = "", "the tenant's default"
        CLOSED = "closed", "closed (refuse calls while spend cannot be known)"
        OPEN = "open", "open (allow calls, with a warning)"

    # Scopes whose value names what they cover; the others have no value.
    VALUE_SCOPES = frozenset(
        {Scope.END_USER, Scope.PROVIDER, Scope.MODEL, Scope.OPERATION, Scope.TAG}
    )
    MAX_ROLLING_DAYS = 90

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=20, choices=Scope.choices, default=Scope.TENANT)
    scope_value = models.CharField(
        max_length=255,
        blank=True,
        help_text="The end user, provider, model or operation; for a tag, name=value.",
    )
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.CASCADE, null=True, blank=True, related_name="budgets"
    )
    period = models.CharField(max_length=10, choices=Period.choices, default=Period.MONTH)
    rolling_days = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_ROLLING_DAYS)],
        help_text="For a rolling period: today and the N-1 days before it.",
    )
    limit_usd = models.DecimalField(
        max_digits=14, decimal_places=6, validators=[MinValueValidator(Decimal("0.000001"))]
    )
    thresholds = models.JSONField(
        default=default_thresholds,
        blank=True,  # an empty list is refused by clean(), with a message that says what to send
        help_text="Percentages that warn (the lowest) and are critical (the highest), e.g. [80, 95].",
    )
    enforcement = models.CharField(
        max_length=4, choices=Enforcement.choices, default=Enforcement.SOFT
    )
    suggested_model = models.CharField(
        max_length=200,
        blank=True,
        help_text="A cheaper model to suggest past the warning threshold.",
    )
    fail_mode = models.CharField(
        max_length=6,
        choices=FailMode.choices,
        blank=True,
        default=FailMode.DEFAULT,
        help_text="When neither Redis nor PostgreSQL can say what was spent. Empty: the "
        "tenant's default (budget defaults), else closed for a hard budget and open for a soft one.",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantScopedManager["Budget"]()

    class Meta:
        indexes = [models.Index(fields=["tenant", "is_active"], name="budget_tenant_active")]
        constraints = [
            models.CheckConstraint(
                condition=~Q(period="rolling") | Q(rolling_days__isnull=False),
                name="budget_rolling_has_days",
                violation_error_message="A rolling budget needs its number of days.",
            ),
            models.CheckConstraint(
                condition=~Q(scope="api_key") | Q(api_key__isnull=False),
                name="budget_api_key_scope_has_key",
                violation_error_message="A budget for an API key needs the key.",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.scope in self.VALUE_SCOPES and not self.scope_value.strip():
            errors["scope_value"] = (
                f"Say which {self.get_scope_display().split(' ', 1)[-1]} this budget covers."
            )
        if self.scope not in self.VALUE_SCOPES and self.scope_value:
            errors["scope_value"] = "Leave empty for this scope."
        if self.scope == self.Scope.TAG and "=" not in self.scope_value:
            errors["scope_value"] = "Write the tag as name=value, e.g. team=search."
        if self.scope == self.Scope.API_KEY:
            if self.api_key_id is None:
                errors["api_key"] = "Choose the API key this budget covers."
            elif self.api_key is not None and self.api_key.tenant_id != self.tenant_id:
                errors["api_key"] = "That API key belongs to another tenant."
        elif self.api_key_id is not None:
            errors["api_key"] = "Only a budget with the API key scope names a key."
        if self.period == self.Period.ROLLING and not self.rolling_days:
            errors["rolling_days"] = f"Give the number of days (1 to {self.MAX_ROLLING_DAYS})."
        if self.period != self.Period.ROLLING and self.rolling_days:
            errors["rolling_days"] = "Only a rolling budget has a number of days."
        problem = threshold_problem(self.thresholds)
        if problem:
            errors["thresholds"] = problem
        if errors:
            raise ValidationError(errors)

    @property
    def sorted_thresholds(self) -> list[Decimal]:
        return sorted(Decimal(str(t)) for t in self.thresholds)


def effective_fail_mode(*, own: str, tenant_default: str, hard: bool) -> str:
    """The budget's own mode, else the tenant's default, else closed for a hard budget."""
    return own or tenant_default or ("closed" if hard else "open")


class BudgetDefaults(models.Model):
    """A tenant's defaults for its budgets (one row per tenant, none: the built-in defaults)."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, primary_key=True)
    fail_mode = models.CharField(
        max_length=6,
        choices=Budget.FailMode.choices,
        blank=True,
        default=Budget.FailMode.DEFAULT,
        help_text="For budgets that set none. Empty: closed for hard budgets, open for soft ones.",
    )

    objects = TenantScopedManager["BudgetDefaults"]()

    class Meta:
        verbose_name_plural = "budget defaults"

    def __str__(self) -> str:
        return f"{self.tenant_id}: fail mode {self.fail_mode or 'by enforcement'}"


def threshold_problem(value: object) -> str | None:
    if not isinstance(value, list) or not value:
        return "Give a list of percentages, e.g. [80, 95]."
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float | str | Decimal):
            return "Each threshold is a percentage between 0 and 100."
        try:
            number = Decimal(str(item))
        except ArithmeticError:
            return "Each threshold is a percentage between 0 and 100."
        if not number.is_finite() or not 0 < number <= 100:
            return (
                f"{item} is outside 0-100%: each threshold is a percentage above 0 and at most 100."
            )
    if len(set(map(str, value))) != len(value):
        return "Thresholds must differ from each other."
    return None


class RateLimit(models.Model):
    """Requests and tokens per sliding window, for a kind of caller.

    A row with an empty value is the tenant's default for that kind (every end user, every key,
    every client IP); a row with a value overrides it for that one caller.
    """

    class Scope(models.TextChoices):
        END_USER = "end_user", "per end user"
        API_KEY = "api_key", "per API key"
        IP = "ip", "per client IP (checks without an end user)"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    scope = models.CharField(max_length=10, choices=Scope.choices)
    value = models.CharField(
        max_length=255, blank=True, help_text="Empty: the default for every caller of this kind."
    )
    window_seconds = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(1), MaxValueValidator(86_400)]
    )
    max_requests = models.PositiveIntegerField(null=True, blank=True)
    max_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantScopedManager["RateLimit"]()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "scope", "value"], name="ratelimit_unique"),
            models.CheckConstraint(
                condition=Q(max_requests__isnull=False) | Q(max_tokens__isnull=False),
                name="ratelimit_has_a_limit",
                violation_error_message="Set a request limit, a token limit, or both.",
            ),
        ]

    def __str__(self) -> str:
        who = self.value or "each"
        return f"{self.get_scope_display()} ({who}): {self.max_requests or '-'} req / {self.max_tokens or '-'} tok per {self.window_seconds}s"


class EmergencyStopRule(models.Model):
    """Trip the emergency stop when spend in a window passes a threshold.

    With no tenant the rule watches the spend of all tenants together and trips a global stop.
    """

    class Window(models.TextChoices):
        HOUR = "hour", "this hour"
        DAY = "day", "today"
        MONTH = "month", "this month"

    tenant = models.ForeignKey(
        Tenant,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        db_index=False,
        help_text="Empty: a global rule over all tenants' spend (UTC calendar).",
    )
    window = models.CharField(max_length=5, choices=Window.choices, default=Window.DAY)
    threshold_usd = models.DecimalField(
        max_digits=14, decimal_places=6, validators=[MinValueValidator(Decimal("0.000001"))]
    )
    duration_minutes = models.PositiveIntegerField(
        default=60,
        validators=[MinValueValidator(1), MaxValueValidator(7 * 24 * 60)],
        help_text="How long a stop lasts unless lifted earlier.",
    )
    is_active = models.BooleanField(default=True)

    objects = TenantScopedManager["EmergencyStopRule"]()

    class Meta:
        indexes = [models.Index(fields=["tenant"], name="estoprule_tenant")]

    def __str__(self) -> str:
        who = self.tenant.slug if self.tenant is not None else "all tenants"
        return f"{who}: stop above ${self.threshold_usd} {self.get_window_display()}"


class EmergencyStop(models.Model):
    """One trip of the emergency stop and, once over, its lift: the history is these rows."""

    tenant = models.ForeignKey(
        Tenant,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        db_index=False,
        help_text="Empty: a global stop for every tenant.",
    )
    reason = models.CharField(max_length=500)
    rule = models.ForeignKey(EmergencyStopRule, on_delete=models.SET_NULL, null=True, blank=True)
    tripped_at = models.DateTimeField(default=timezone.now)
    tripped_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    tripped_by_key = models.ForeignKey(
        ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    spend_at_trip_nanos = models.BigIntegerField(null=True, blank=True)
    expires_at = models.DateTimeField()
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    lifted_by_key = models.ForeignKey(
        ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    lift_reason = models.CharField(max_length=500, blank=True)

    objects = TenantScopedManager["EmergencyStop"]()

    class Meta:
        ordering = ["-tripped_at"]
        indexes = [models.Index(fields=["tenant", "-tripped_at"], name="estop_tenant_time")]
        constraints = [
            # At most one open stop per tenant, and one global (tenant 0): a second trip waits
            # for the first to be closed.
            models.UniqueConstraint(
                Coalesce(F("tenant"), Value(0), output_field=models.BigIntegerField()),
                condition=Q(lifted_at__isnull=True),
                name="estop_one_open",
            ),
        ]

    def __str__(self) -> str:
        who = self.tenant.slug if self.tenant is not None else "global"
        return f"{who} stop at {self.tripped_at:%Y-%m-%d %H:%M}"

    def is_active_at(self, moment: datetime) -> bool:
        return self.lifted_at is None and self.expires_at > moment


class CounterState(models.Model):
    """A tenant whose Redis counters missed an update (Redis was away during an ingest):
    the next reconcile rebuilds them first."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, primary_key=True)
    stale_since = models.DateTimeField()

    objects = TenantScopedManager["CounterState"]()

    def __str__(self) -> str:
        return f"{self.tenant_id} stale since {self.stale_since:%Y-%m-%d %H:%M}"


class ReservationHold(models.Model):
    """Budget held by a check's reservation while the Redis counters cannot be used (Redis
    away, or its counters not rebuilt yet): one row per hard budget the reservation holds.

    Checks that reserve through PostgreSQL take the tenant's reservation lock, so they cannot
    overshoot together; the usage event that follows deletes the rows, and rows past
    `expires_at` no longer count. When the counters are rebuilt, the rows move into Redis.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    reservation_id = models.CharField(max_length=32)
    event_id = models.CharField(max_length=255, blank=True)
    # "<budget id>:<period start YYYYMMDD>[:<end user>]": what Redis names the same hold.
    hold = models.TextField()
    amount_nanos = models.BigIntegerField()
    expires_at = models.DateTimeField()

    objects = TenantScopedManager["ReservationHold"]()

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "hold", "expires_at"], name="reshold_tenant_hold"),
            models.Index(fields=["tenant", "reservation_id"], name="reshold_tenant_res"),
            models.Index(
                fields=["tenant", "event_id"],
                name="reshold_tenant_event",
                condition=~Q(event_id=""),
            ),
            models.Index(fields=["expires_at"], name="reshold_expires"),
        ]

    def __str__(self) -> str:
        return f"{self.reservation_id} holds {self.amount_nanos} on {self.hold}"


class CounterUpdate(models.Model):
    """What one ingest batch adds to the Redis counters, written in the batch's transaction.

    The process that committed the batch applies it right after the commit; if it died in
    between, the sweeper applies it (Redis remembers which ids it applied, so never twice)."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    created_at = models.DateTimeField(default=timezone.now)
    payload = models.TextField()  # JSON: see budgets.outbox

    objects = TenantScopedManager["CounterUpdate"]()

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "id"], name="counterupdate_tenant"),
            models.Index(fields=["created_at"], name="counterupdate_created"),
        ]

    def __str__(self) -> str:
        return f"update {self.pk} of tenant {self.tenant_id}"


class CounterCorrection(models.Model):
    """Drift found in counters that checks were trusting, and corrected from PostgreSQL."""

    class Cause(models.TextChoices):
        SAMPLE = "sample", "periodic drift sample"
        REBUILD = "rebuild", "rebuild (nightly or after a missed update)"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    corrected_at = models.DateTimeField(default=timezone.now)
    cause = models.CharField(max_length=10, choices=Cause.choices)
    fields = models.PositiveIntegerField(help_text="Counter fields that were wrong.")
    drift_nanos = models.BigIntegerField(help_text="Sum of the absolute differences corrected.")

    objects = TenantScopedManager["CounterCorrection"]()

    class Meta:
        indexes = [models.Index(fields=["tenant", "-corrected_at"], name="countercorr_tenant_time")]

    def __str__(self) -> str:
        return (
            f"{self.tenant_id}: {self.drift_nanos} nano-USD at {self.corrected_at:%Y-%m-%d %H:%M}"
        )
