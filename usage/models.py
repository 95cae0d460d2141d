"""Usage data: the pricing catalog, raw events, and the hourly rollups every read is served from.

Money is stored as integer nano-dollars (1 USD = 10^9) so that sums are exact on every
database; prices are Decimal USD per million tokens as the providers publish them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from costmon.models import Tenant
from costmon.tenancy import TenantScopedManager

NANOS_PER_USD = 1_000_000_000


class Dimension(models.Model):
    """A tenant's dictionary of names (providers, models, operations, end users, sessions).

    Events and rollups store the integer id instead of the text, which keeps a raw event row
    small and makes grouping cheap.
    """

    class Kind(models.IntegerChoices):
        PROVIDER = 1
        MODEL = 2
        OPERATION = 3
        END_USER = 4
        SESSION = 5

    # 32-bit: five columns of every event and four of every rollup row refer to it.
    id = models.AutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    kind = models.SmallIntegerField(choices=Kind.choices)
    value = models.CharField(max_length=255)

    objects = TenantScopedManager["Dimension"]()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "kind", "value"], name="dimension_unique")
        ]

    def __str__(self) -> str:
        return self.value


def dictionary_reference(**options: Any) -> models.ForeignKey[Any, Any]:
    """A reference to a dictionary entry (`Dimension`) from an event or a rollup row.

    No index of its own and no database constraint: checking the reference on every inserted
    row would cost more than the insert itself. Nothing is done on delete either: dictionary
    entries are only deleted together with their tenant, whose own cascade removes the events
    and rollups at the same time.
    """
    return models.ForeignKey(
        Dimension,
        on_delete=models.DO_NOTHING,
        related_name="+",
        db_index=False,
        db_constraint=False,
        **options,
    )


class ModelPrice(models.Model):
    """The price of one model from `effective_from` on; history is kept as separate rows.

    A row with no tenant is the global list price; a tenant's row overrides it (negotiated rates).
    """

    tenant = models.ForeignKey(
        Tenant,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        db_index=False,
        help_text="Empty for the global list price; set for a tenant's negotiated rate.",
    )
    provider = models.CharField(max_length=50)
    model = models.CharField(max_length=200)
    match_pattern = models.CharField(
        max_length=200,
        blank=True,
        help_text="Optional glob for other names priced the same (e.g. 'gpt-4o-2024-*'). "
        "Dated names such as gpt-4o-2024-08-06 already find gpt-4o without one.",
    )
    effective_from = models.DateTimeField(default=timezone.now)
    input_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, validators=[MinValueValidator(0)]
    )
    output_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, default=Decimal(0), validators=[MinValueValidator(0)]
    )
    cached_input_per_mtok = models.DecimalField(
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Empty: cached input tokens are charged at the input rate.",
    )
    cache_write_per_mtok = models.DecimalField(
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Empty: cache writes are charged at the input rate.",
    )
    per_request = models.DecimalField(
        max_digits=14, decimal_places=6, default=Decimal(0), validators=[MinValueValidator(0)]
    )
    long_context_threshold = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Above this many input tokens the long-context rates apply to the whole call.",
    )
    long_input_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    long_output_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    long_cached_input_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    long_cache_write_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    source = models.URLField(max_length=300, blank=True)
    source_date = models.DateField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantScopedManager["ModelPrice"]()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "model", "effective_from"],
                condition=Q(tenant__isnull=True),
                name="modelprice_unique_global",
            ),
            models.UniqueConstraint(
                fields=["tenant", "provider", "model", "effective_from"],
                condition=Q(tenant__isnull=False),
                name="modelprice_unique_tenant",
            ),
            models.CheckConstraint(
                condition=Q(long_context_threshold__isnull=True)
                | Q(long_input_per_mtok__isnull=False),
                name="modelprice_long_context_has_rate",
            ),
        ]
        indexes = [models.Index(fields=["tenant", "provider"], name="modelprice_tenant_provider")]

    def __str__(self) -> str:
        owner = self.tenant.slug if self.tenant is not None else "global"
        return f"{self.provider}/{self.model} from {self.effective_from:%Y-%m-%d} ({owner})"


class ModelAlias(models.Model):
    """A tenant's own name for a model: an Azure deployment, a Bedrock ARN, a proxy route."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    alias = models.CharField(max_length=255)
    provider = models.CharField(max_length=50, blank=True, help_text="Empty: any provider.")
    target_provider = models.CharField(max_length=50)
    target_model = models.CharField(max_length=200)

    objects = TenantScopedManager["ModelAlias"]()

    class Meta:
        verbose_name_plural = "model aliases"
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "provider", "alias"], name="modelalias_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.alias} → {self.target_provider}/{self.target_model}"


class CostSource(models.IntegerChoices):
    COMPUTED = 0, "computed"
    CALLER = 1, "caller"
    UNPRICED = 2, "unpriced"


class UsageEvent(models.Model):
    """One LLM call as an application reported it. Compact on purpose: there are millions.

    Its names are dictionary references (`dictionary_reference`): 32-bit ids, no constraint.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    event_id = models.CharField(max_length=128)
    occurred_at = models.DateTimeField()
    provider = dictionary_reference()
    model = dictionary_reference()
    operation = dictionary_reference()
    end_user = dictionary_reference()
    # The API key that reported the event (0: reported another way); budgets per key count it.
    api_key_id = models.BigIntegerField(default=0)
    session = dictionary_reference(null=True)
    tags = models.JSONField(null=True)
    input_tokens = models.IntegerField(default=0)
    output_tokens = models.IntegerField(default=0)
    cached_input_tokens = models.IntegerField(default=0)
    cache_write_tokens = models.IntegerField(default=0)
    reasoning_tokens = models.IntegerField(default=0)
    cost_nanos = models.BigIntegerField(default=0)
    cost_source = models.SmallIntegerField(choices=CostSource.choices, default=CostSource.COMPUTED)
    latency_ms = models.IntegerField(null=True)
    is_error = models.BooleanField(default=False)
    cache_hit = models.BooleanField(default=False)
    # Optional: the caller's hash of the prompt, for finding repeated identical requests. NULL
    # (not "") when none was sent, so most events store nothing and "has a hash" is IS NOT NULL.
    prompt_hash = models.CharField(  # noqa: DJ001
        max_length=64, null=True, blank=True, db_index=False
    )

    objects = TenantScopedManager["UsageEvent"]()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "event_id"], name="usageevent_unique_event_id"
            )
        ]
        indexes = [
            models.Index(fields=["tenant", "occurred_at"], name="usageevent_tenant_time"),
            # Only events that carry a prompt hash (the repeated-prompts recommendation reads
            # them): small when few do, and free for events without one.
            models.Index(
                fields=["tenant", "occurred_at"],
                condition=Q(prompt_hash__isnull=False),
                name="usageevent_prompt_hash_time",
            ),
        ]

    def __str__(self) -> str:
        return self.event_id

    @property
    def cost_usd(self) -> Decimal:
        return nanos_to_usd(self.cost_nanos)


class Rollup(models.Model):
    """What both rollup tables keep: sums of events per tenant, UTC hour, provider, model and
    operation (and, in `HourlyRollup`, end user and API key)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    hour = models.DateTimeField()
    provider = dictionary_reference()
    model = dictionary_reference()
    operation = dictionary_reference()
    calls = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    cache_hits = models.BigIntegerField(default=0)
    unpriced_calls = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    cost_nanos = models.BigIntegerField(default=0)
    latency_ms_sum = models.BigIntegerField(default=0)
    latency_count = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class HourlyRollup(Rollup):
    """Sums of events per tenant, hour and every dimension (end user and API key included),
    kept in the ingest transaction. Budgets and anything about end users read these."""

    end_user = dictionary_reference()
    api_key_id = models.BigIntegerField(default=0)

    objects = TenantScopedManager["HourlyRollup"]()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "tenant",
                    "hour",
                    "provider",
                    "model",
                    "operation",
                    "end_user",
                    "api_key_id",
                ],
                name="hourlyrollup_unique_key",
            )
        ]
        # One end user's rows (drill-down, per-user budgets) without reading everyone's.
        indexes = [
            models.Index(fields=["tenant", "end_user", "hour"], name="hourlyrollup_tenant_user")
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.hour:%Y-%m-%d %H}:00"


class ModelHourlyRollup(Rollup):
    """The same sums per tenant, hour, provider, model and operation only: the hourly rollups
    without end user and API key, kept in the same transaction.

    With thousands of end users almost every event has an hourly rollup row of its own; without
    them an hour holds one row per model and operation in use, so the dashboard's totals,
    series and model breakdowns over a month read a few thousand rows instead of a hundred
    thousand. Reads that filter or group by end user use `HourlyRollup`.
    """

    objects = TenantScopedManager["ModelHourlyRollup"]()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "hour", "provider", "model", "operation"],
                name="modelhourlyrollup_unique_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.hour:%Y-%m-%d %H}:00 (by model)"


def nanos_to_usd(nanos: int) -> Decimal:
    return (Decimal(nanos) / NANOS_PER_USD).quantize(Decimal("0.000000001"))
