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

from costmon.core.models import Tenant
from costmon.core.money import nanos_to_usd
from costmon.core.tenancy import TenantScopedManager
from usage.pricing import Usage


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


def _rate(**options: Any) -> models.DecimalField[Any, Any]:
    """A price in USD (per million tokens unless its name says otherwise); never negative."""
    return models.DecimalField(
        max_digits=20, decimal_places=10, validators=[MinValueValidator(0)], **options
    )


def _optional_rate(help_text: str = "") -> models.DecimalField[Any, Any]:
    return _rate(null=True, blank=True, help_text=help_text)


class ServiceTier(models.IntegerChoices):
    """How the provider served the call; stored on events as a small number (NULL: standard)."""

    STANDARD = 0, "standard"
    BATCH = 1, "batch"
    FLEX = 2, "flex"
    PRIORITY = 3, "priority"

    @classmethod
    def code(cls, name: str) -> int | None:
        """The stored value of a tier name; standard is stored as NULL (free in a row)."""
        return _TIER_CODES[name]


_TIER_CODES: dict[str, int | None] = {label: value or None for value, label in ServiceTier.choices}


class PriceSync(models.Model):
    """One load of a price list into the global catalog, and what it changed.

    Staff read these in the admin; a tenant that does not take catalog changes automatically
    (`Tenant.prices_auto_apply`) gets a `PriceChangeHold` per sync that changed prices.
    """

    class Status(models.TextChoices):
        APPLIED = "applied"
        UNCHANGED = "unchanged"
        FAILED = "failed"

    tenant = models.ForeignKey(
        Tenant,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        help_text="Empty: the global catalog; set: a tenant's negotiated prices.",
    )
    started_at = models.DateTimeField(default=timezone.now)
    source = models.CharField(max_length=500, help_text="File, URL or 'bundled catalog'.")
    format = models.CharField(max_length=20)
    catalog_version = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices)
    added = models.PositiveIntegerField(default=0)
    changed = models.PositiveIntegerField(default=0)
    unchanged = models.PositiveIntegerField(default=0)
    missing = models.PositiveIntegerField(
        default=0, help_text="Catalog models the source no longer lists (their prices stay)."
    )
    aliases_added = models.PositiveIntegerField(default=0)
    details = models.JSONField(
        default=dict, blank=True, help_text="added and changed rows, with old and new prices"
    )
    error = models.TextField(blank=True)

    class Meta:
        ordering = ("-started_at",)
        indexes = [models.Index(fields=["-started_at"], name="pricesync_started")]

    def __str__(self) -> str:
        return f"{self.format} {self.catalog_version or self.source} at {self.started_at:%Y-%m-%d %H:%M}"


class ModelPrice(models.Model):
    """The price of one model in one service tier from `effective_from` on; history is kept as
    separate rows (a change is a new row, never an edit of an old one).

    A row with no tenant is the global list price; a tenant's row overrides it (negotiated rates).
    Empty optional rates fall back as `usage.pricing` documents (cache reads and writes to the
    input rate, one-hour writes to the cache-write rate, audio and image to the text rates).
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
    service_tier = models.CharField(
        max_length=10,
        choices=[(label, label) for _, label in ServiceTier.choices],
        default="standard",
        help_text="Batch, flex and priority rows price calls the provider served in that tier; "
        "a tier without a row is charged at the standard rates.",
    )
    match_pattern = models.CharField(
        max_length=200,
        blank=True,
        help_text="Optional glob for other names this price applies to (e.g. "
        "'claude-sonnet-4-5-20??????' for snapshots the catalog does not list). Without one, "
        "a dated name is priced only by its own row.",
    )
    mode = models.CharField(max_length=20, blank=True, help_text="chat, responses, embedding, ...")
    deprecation_date = models.DateField(
        null=True, blank=True, help_text="From this day the provider retires the model."
    )
    effective_from = models.DateTimeField(default=timezone.now)
    input_per_mtok = _rate()
    output_per_mtok = _rate(default=Decimal(0))
    cached_input_per_mtok = _optional_rate("Empty: cache reads are charged at the input rate.")
    cache_write_per_mtok = _optional_rate(
        "Cache writes (5-minute lifetime). Empty: charged at the input rate."
    )
    cache_write_1h_per_mtok = _optional_rate(
        "Cache writes kept for one hour. Empty: charged at the cache-write rate."
    )
    input_audio_per_mtok = _optional_rate("Empty: audio input at the input rate.")
    output_audio_per_mtok = _optional_rate("Empty: audio output at the output rate.")
    input_image_per_mtok = _optional_rate("Empty: image input at the input rate.")
    output_image_per_mtok = _optional_rate("Empty: image output at the output rate.")
    per_request = _rate(default=Decimal(0), help_text="USD per call.")
    per_output_image = _rate(default=Decimal(0), help_text="USD per generated image.")
    web_search_per_kcalls = _rate(default=Decimal(0), help_text="USD per 1,000 web searches.")
    long_context_threshold = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Above this many input tokens the long-context rates apply to the whole call.",
    )
    long_input_per_mtok = _optional_rate()
    long_output_per_mtok = _optional_rate()
    long_cached_input_per_mtok = _optional_rate()
    long_cache_write_per_mtok = _optional_rate()
    source = models.URLField(max_length=300, blank=True)
    source_date = models.DateField(null=True, blank=True)
    sync = models.ForeignKey(
        PriceSync,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="prices",
        help_text="The price list load that created this row.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantScopedManager["ModelPrice"]()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "model", "service_tier", "effective_from"],
                condition=Q(tenant__isnull=True),
                name="modelprice_unique_global_tier",
            ),
            models.UniqueConstraint(
                fields=["tenant", "provider", "model", "service_tier", "effective_from"],
                condition=Q(tenant__isnull=False),
                name="modelprice_unique_tenant_tier",
            ),
            models.CheckConstraint(
                condition=Q(long_context_threshold__isnull=True)
                | Q(long_input_per_mtok__isnull=False),
                name="modelprice_long_context_has_rate",
            ),
            models.CheckConstraint(
                condition=Q(service_tier__in=["standard", "batch", "flex", "priority"]),
                name="modelprice_known_tier",
            ),
        ]
        indexes = [models.Index(fields=["tenant", "provider"], name="modelprice_tenant_provider")]

    def __str__(self) -> str:
        owner = self.tenant.slug if self.tenant is not None else "global"
        tier = "" if self.service_tier == "standard" else f" [{self.service_tier}]"
        return f"{self.provider}/{self.model}{tier} from {self.effective_from:%Y-%m-%d} ({owner})"


class CatalogAlias(models.Model):
    """A provider's own alias in the global catalog: a `-latest` name pointing at the dated model
    it serves today. Loaded with the catalog; a tenant's own names are `ModelAlias`."""

    provider = models.CharField(max_length=50, blank=True, help_text="Empty: any provider.")
    alias = models.CharField(max_length=255)
    target_provider = models.CharField(max_length=50)
    target_model = models.CharField(max_length=200)
    reason = models.CharField(max_length=300, blank=True)

    class Meta:
        verbose_name_plural = "catalog aliases"
        constraints = [
            models.UniqueConstraint(fields=["provider", "alias"], name="catalogalias_unique")
        ]

    def __str__(self) -> str:
        return f"{self.alias} → {self.target_provider}/{self.target_model}"


class PriceChangeHold(models.Model):
    """A tenant that reviews catalog changes itself: the prices a sync changed wait here until
    staff approve them for the tenant (its events keep the old price until then)."""

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    sync = models.ForeignKey(PriceSync, on_delete=models.CASCADE, related_name="holds")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    decided_by = models.CharField(max_length=150, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = TenantScopedManager["PriceChangeHold"]()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "sync"], name="pricechangehold_unique")
        ]

    def __str__(self) -> str:
        return f"{self.sync} for {self.tenant_id}: {self.status}"


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


# The event columns pricing reads (`usage.pricing.Usage`'s fields).
PRICED_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "input_image_tokens",
    "output_image_tokens",
    "reasoning_tokens",
    "web_search_calls",
    "output_images",
)


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
    # Rarer parts of a call, NULL when not sent (a NULL costs a row nothing): the one-hour part
    # of the cache writes, audio and image tokens (parts of input/output), web searches and
    # generated images, and the service tier (NULL: standard).
    cache_write_1h_tokens = models.IntegerField(null=True)
    input_audio_tokens = models.IntegerField(null=True)
    output_audio_tokens = models.IntegerField(null=True)
    input_image_tokens = models.IntegerField(null=True)
    output_image_tokens = models.IntegerField(null=True)
    web_search_calls = models.IntegerField(null=True)
    output_images = models.IntegerField(null=True)
    service_tier = models.SmallIntegerField(choices=ServiceTier.choices, null=True)
    cost_nanos = models.BigIntegerField(default=0)
    cost_source = models.SmallIntegerField(choices=CostSource.choices, default=CostSource.COMPUTED)
    # The catalog row the cost came from (NULL: unpriced, the caller's cost, or a cache hit).
    price_id = models.IntegerField(null=True)
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

    @property
    def tier(self) -> str:
        return ServiceTier(self.service_tier or 0).label

    @property
    def usage(self) -> Usage:
        """What the call consumed, as pricing reads it."""
        return Usage(**{name: getattr(self, name) or 0 for name in PRICED_COLUMNS})


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


class TagHourlyRollup(Rollup):
    """The same sums per tenant, hour, provider, model, operation and one tag (its name and
    value), kept in the same transaction: an event with two tags counts in two rows, one per
    tag name, and an event without tags in none. The overview's spend "by tag" reads these
    instead of the events (tags live in each event's JSON)."""

    tag_name = models.CharField(max_length=64)
    tag_value = models.CharField(max_length=200)

    objects = TenantScopedManager["TagHourlyRollup"]()

    class Meta:
        constraints = [
            # Led by the tag's name: one tag's rows in a range, without reading the others'.
            models.UniqueConstraint(
                fields=[
                    "tenant",
                    "tag_name",
                    "hour",
                    "provider",
                    "model",
                    "operation",
                    "tag_value",
                ],
                name="taghourlyrollup_unique_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.hour:%Y-%m-%d %H}:00 ({self.tag_name})"
