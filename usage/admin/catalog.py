"""The price catalog in the admin: prices, a tenant's model aliases, the catalog's aliases."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path

from costmon.core.admin import TenantOwnedAdmin
from costmon.core.models import Tenant
from usage.catalog import bump_version
from usage.models import (
    CatalogAlias,
    ModelAlias,
    ModelPrice,
)
from usage.prices import PRICE_FIELDS
from usage.selectors import name_resolutions


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
        fields = ("tenant", "provider", "model", "service_tier", "effective_from", *PRICE_FIELDS)

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
        key = {k: data.get(k) for k in ("provider", "model", "service_tier", "effective_from")}
        if all(key.values()):
            clash = ModelPrice.objects.unscoped().filter(tenant=data.get("tenant"), **key)
            if clash.exclude(pk=self.instance.pk).exists():
                # The database constraint would say only its name; say what to do instead.
                owner = f"Tenant {data['tenant'].slug}" if data.get("tenant") else "The global list"
                self.add_error(
                    "effective_from",
                    f"{owner} already has a {key['service_tier']} price for "
                    f"{key['provider']}/{key['model']} from this moment; edit that row, or pick "
                    "another start.",
                )
        return data


class ModelPriceAdmin(TenantOwnedAdmin):
    form = ModelPriceForm
    change_list_template = "admin/usage/modelprice/change_list.html"
    list_display = (
        "provider",
        "model",
        "service_tier",
        "owner",
        "effective_from",
        "input_rate",
        "output_rate",
        "cached_input_rate",
        "cache_write_rate",
        "long_context_threshold",
        "source_date",
    )
    list_filter = ("provider", "service_tier", "mode", PriceOwnerFilter)
    search_fields = ("model", "match_pattern")
    list_select_related = ("tenant",)
    autocomplete_fields = ("tenant",)
    ordering = ("provider", "model", "-effective_from")
    readonly_fields = ("sync", "updated_at")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "tenant",
                    "provider",
                    "model",
                    "service_tier",
                    "match_pattern",
                    "effective_from",
                    "mode",
                    "deprecation_date",
                )
            },
        ),
        (
            "USD per million tokens",
            {
                "fields": (
                    "input_per_mtok",
                    "output_per_mtok",
                    "cached_input_per_mtok",
                    "cache_write_per_mtok",
                    "cache_write_1h_per_mtok",
                )
            },
        ),
        (
            "Audio and images (USD per million tokens; empty: the text rate)",
            {
                "fields": (
                    "input_audio_per_mtok",
                    "output_audio_per_mtok",
                    "input_image_per_mtok",
                    "output_image_per_mtok",
                )
            },
        ),
        (
            "Per unit (USD)",
            {"fields": ("per_request", "per_output_image", "web_search_per_kcalls")},
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
        ("Source", {"fields": ("source", "source_date", "sync", "updated_at")}),
    )

    def get_urls(self) -> list[Any]:
        urls = [
            path(
                "resolution/",
                self.admin_site.admin_view(self.resolution_view),
                name="usage_modelprice_resolution",
            )
        ]
        return urls + super().get_urls()

    def resolution_view(self, request: HttpRequest) -> HttpResponse:
        """Which names each tenant's calls used in the last 30 days, and how each resolved."""
        tenants = list(Tenant.objects.order_by("slug"))
        chosen = request.GET.get("tenant") or (tenants[0].slug if tenants else "")
        tenant = next((t for t in tenants if t.slug == chosen), None)
        rows = name_resolutions(tenant=tenant) if tenant is not None else []
        context = {
            **self.admin_site.each_context(request),
            "title": "Model names in use and how they are priced",
            "opts": self.opts,
            "tenants": tenants,
            "tenant": tenant,
            "rows": rows,
            "unpriced": sum(1 for r in rows if r.price is None),
        }
        return TemplateResponse(request, "admin/usage/modelprice/resolution.html", context)

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


class CatalogAliasAdmin(admin.ModelAdmin):
    list_display = ("alias", "provider_or_any", "target", "reason")
    list_filter = ("target_provider",)
    search_fields = ("alias", "target_model")
    ordering = ("provider", "alias")

    @admin.display(description="provider", ordering="provider")
    def provider_or_any(self, obj: CatalogAlias) -> str:
        return obj.provider or "any"

    @admin.display(description="priced as")
    def target(self, obj: CatalogAlias) -> str:
        return f"{obj.target_provider}/{obj.target_model}"

    def save_model(self, request: HttpRequest, obj: CatalogAlias, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        bump_catalog_after_commit()

    def delete_model(self, request: HttpRequest, obj: CatalogAlias) -> None:
        super().delete_model(request, obj)
        bump_catalog_after_commit()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[CatalogAlias]) -> None:
        super().delete_queryset(request, queryset)
        bump_catalog_after_commit()
