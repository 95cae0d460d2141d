"""The price catalog: prices per model and tier, aliases, and the record of each catalog load."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from costmon.core.models import Tenant
from costmon.core.tenancy import TenantScopedManager


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
