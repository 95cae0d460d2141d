"""Staff's admin for the price catalog and (read-only) usage data, across every tenant."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from costmon.admin import TenantOwnedAdmin
from usage.catalog import bump_version
from usage.models import Dimension, HourlyRollup, ModelAlias, ModelPrice, UsageEvent
from usage.prices import PRICE_FIELDS
from usage.pricing import format_usd
from usage.services import usage_events_delete


def rate(value: Decimal | None) -> str:
    """2.500000 -> '2.5'; empty stays visibly empty."""
    return "-" if value is None else format(value.normalize(), "f")


def bump_catalog_after_commit() -> None:
    # After the commit, not inside the transaction: a process reloading between the bump and
    # the commit would keep the old prices under the new version until its TTL ran out.
    transaction.on_commit(bump_version)


# --- the price catalog ------------------------------------------------------------------------


class PriceOwnerFilter(admin.SimpleListFilter):
    title = "tenant"
    parameter_name = "owner"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        overriding = (
            ModelPrice.objects.unscoped()
            .filter(tenant__isnull=False)
            .values_list("tenant_id", "tenant__slug")
            .distinct()
            .order_by("tenant__slug")
        )
        return [("global", "Global list price"), ("tenants", "Any tenant's rate")] + [
            (str(pk), slug) for pk, slug in overriding
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == "global":
            return queryset.filter(tenant__isnull=True)
        if value == "tenants":
            return queryset.filter(tenant__isnull=False)
        if value and value.isdigit():
            return queryset.filter(tenant_id=int(value))
        return queryset


class ModelPriceForm(forms.ModelForm):
    class Meta:
        model = ModelPrice
        fields = ("tenant", "provider", "model", "effective_from", *PRICE_FIELDS)

    source = forms.URLField(max_length=300, required=False, assume_scheme="https")

    def clean_provider(self) -> str:
        return self.cleaned_data["provider"].strip().lower()

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        threshold, long_input = data.get("long_context_threshold"), data.get("long_input_per_mtok")
        if threshold is not None and long_input is None:
            self.add_error(
                "long_input_per_mtok", "Give the long-context input rate, or clear the threshold."
            )
        key = {k: data.get(k) for k in ("provider", "model", "effective_from")}
        if all(key.values()):
            clash = ModelPrice.objects.unscoped().filter(tenant=data.get("tenant"), **key)
            if clash.exclude(pk=self.instance.pk).exists():
                # The database constraint would say only its name; say what to do instead.
                owner = f"Tenant {data['tenant'].slug}" if data.get("tenant") else "The global list"
                self.add_error(
                    "effective_from",
                    f"{owner} already has a price for {key['provider']}/{key['model']} from this "
                    "moment; edit that row, or pick another start.",
                )
        return data


@admin.register(ModelPrice)
class ModelPriceAdmin(TenantOwnedAdmin):
    form = ModelPriceForm
    list_display = (
        "provider",
        "model",
        "owner",
        "effective_from",
        "input_rate",
        "output_rate",
        "cached_input_rate",
        "cache_write_rate",
        "long_context_threshold",
        "source_date",
    )
    list_filter = ("provider", PriceOwnerFilter)
    search_fields = ("model", "match_pattern")
    list_select_related = ("tenant",)
    autocomplete_fields = ("tenant",)
    ordering = ("provider", "model", "-effective_from")
    readonly_fields = ("updated_at",)
    fieldsets = (
        (None, {"fields": ("tenant", "provider", "model", "match_pattern", "effective_from")}),
        (
            "USD per million tokens",
            {
                "fields": (
                    "input_per_mtok",
                    "output_per_mtok",
                    "cached_input_per_mtok",
                    "cache_write_per_mtok",
                    "per_request",
                )
            },
        ),
        (
            "Long context",
            {
                "fields": (
                    "long_context_threshold",
                    "long_input_per_mtok",
                    "long_output_per_mtok",
                    "long_cached_input_per_mtok",
                    "long_cache_write_per_mtok",
                )
            },
        ),
        ("Source", {"fields": ("source", "source_date", "updated_at")}),
    )

    @admin.display(description="tenant", ordering="tenant__slug")
    def owner(self, obj: ModelPrice) -> str:
        return obj.tenant.slug if obj.tenant is not None else "global"

    @admin.display(description="input / 1M", ordering="input_per_mtok")
    def input_rate(self, obj: ModelPrice) -> str:
        return rate(obj.input_per_mtok)

    @admin.display(description="output / 1M", ordering="output_per_mtok")
    def output_rate(self, obj: ModelPrice) -> str:
        return rate(obj.output_per_mtok)

    @admin.display(description="cached input / 1M", ordering="cached_input_per_mtok")
    def cached_input_rate(self, obj: ModelPrice) -> str:
        return rate(obj.cached_input_per_mtok)

    @admin.display(description="cache write / 1M", ordering="cache_write_per_mtok")
    def cache_write_rate(self, obj: ModelPrice) -> str:
        return rate(obj.cache_write_per_mtok)

    def save_model(self, request: HttpRequest, obj: ModelPrice, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        bump_catalog_after_commit()

    def delete_model(self, request: HttpRequest, obj: ModelPrice) -> None:
        super().delete_model(request, obj)
        bump_catalog_after_commit()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ModelPrice]) -> None:
        super().delete_queryset(request, queryset)
        bump_catalog_after_commit()


class ModelAliasForm(forms.ModelForm):
    class Meta:
        model = ModelAlias
        fields = ("tenant", "alias", "provider", "target_provider", "target_model")

    def clean_provider(self) -> str:
        return self.cleaned_data["provider"].strip().lower()

    def clean_target_provider(self) -> str:
        return self.cleaned_data["target_provider"].strip().lower()


@admin.register(ModelAlias)
class ModelAliasAdmin(TenantOwnedAdmin):
    form = ModelAliasForm
    list_display = ("tenant", "alias", "provider_or_any", "target")
    list_filter = ("tenant", "target_provider")
    search_fields = ("alias", "target_model", "tenant__slug")
    list_select_related = ("tenant",)
    autocomplete_fields = ("tenant",)
    ordering = ("tenant__slug", "alias")

    @admin.display(description="provider", ordering="provider")
    def provider_or_any(self, obj: ModelAlias) -> str:
        return obj.provider or "any"

    @admin.display(description="target")
    def target(self, obj: ModelAlias) -> str:
        return f"{obj.target_provider}/{obj.target_model}"

    def save_model(self, request: HttpRequest, obj: ModelAlias, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        bump_catalog_after_commit()

    def delete_model(self, request: HttpRequest, obj: ModelAlias) -> None:
        super().delete_model(request, obj)
        bump_catalog_after_commit()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ModelAlias]) -> None:
        super().delete_queryset(request, queryset)
        bump_catalog_after_commit()


# --- usage data (read-only) -------------------------------------------------------------------


class ReadOnlyAdmin(TenantOwnedAdmin):
    """Rows written only by ingest, millions of them: lists show the newest rows first by
    primary key (an index scan, not a sort), and are never counted in full or faceted."""

    ordering = ("-pk",)
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a count per filter choice over every row
    list_per_page = 50

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin):
    list_display = (
        "event_id",
        "tenant",
        "occurred_at",
        "provider",
        "model",
        "end_user",
        "tokens",
        "cost",
        "cost_source",
        "status",
    )
    list_filter = ("tenant", "cost_source", "is_error")
    list_select_related = ("tenant", "provider", "model", "end_user")
    search_fields = ("=event_id",)
    # No date_hierarchy: its year/month links aggregate over every row.
    sortable_by = ("occurred_at",)
    fields = (
        "event_id",
        "tenant",
        "occurred_at",
        "provider",
        "model",
        "operation",
        "end_user",
        "session",
        "tags",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "cost",
        "cost_source",
        "latency_ms",
        "is_error",
        "cache_hit",
    )
    readonly_fields = ("cost",)

    @admin.display(description="tokens in / out")
    def tokens(self, obj: UsageEvent) -> str:
        return f"{obj.input_tokens:,} / {obj.output_tokens:,}"

    @admin.display(description="cost (USD)")
    def cost(self, obj: UsageEvent) -> str:
        return format_usd(obj.cost_nanos)

    @admin.display(description="status")
    def status(self, obj: UsageEvent) -> str:
        return "error" if obj.is_error else "success"

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)

    def delete_model(self, request: HttpRequest, obj: UsageEvent) -> None:
        usage_events_delete(events=UsageEvent.objects.unscoped().filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[UsageEvent]) -> None:
        usage_events_delete(events=queryset)


@admin.register(HourlyRollup)
class HourlyRollupAdmin(ReadOnlyAdmin):
    list_display = (
        "hour",
        "tenant",
        "provider",
        "model",
        "operation",
        "end_user",
        "calls",
        "cost",
    )
    list_filter = ("tenant",)
    list_select_related = ("tenant", "provider", "model", "operation", "end_user")
    sortable_by = ("hour",)

    @admin.display(description="cost (USD)")
    def cost(self, obj: HourlyRollup) -> str:
        return format_usd(obj.cost_nanos)


@admin.register(Dimension)
class DimensionAdmin(ReadOnlyAdmin):
    list_display = ("tenant", "kind", "value")
    list_filter = ("kind", "tenant")
    search_fields = ("value",)
    list_select_related = ("tenant",)
