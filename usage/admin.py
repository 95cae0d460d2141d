"""Staff's admin for the price catalog and (read-only) usage data, across every tenant."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html, format_html_join

from costmon.core.admin import ReadOnlyAdminMixin, TenantOwnedAdmin, plural
from costmon.core.admin import TenantAdmin as CoreTenantAdmin
from costmon.core.models import Tenant
from costmon.core.money import format_usd
from costmon.core.periods import tenant_zone
from usage.catalog import bump_version
from usage.maintenance import usage_events_delete, usage_reprice
from usage.models import (
    CatalogAlias,
    Dimension,
    HourlyRollup,
    ModelAlias,
    ModelPrice,
    PriceChangeHold,
    PriceSync,
    UsageEvent,
)
from usage.prices import PRICE_FIELDS, price_hold_decide
from usage.selectors import name_resolutions


def rate(value: Decimal | None) -> str:
    """2.500000 -> '2.5'; empty stays visibly empty."""
    return "-" if value is None else format(value.normalize(), "f")


def bump_catalog_after_commit() -> None:
    # After the commit, not inside the transaction: a process reloading between the bump and
    # the commit would keep the old prices under the new version until its TTL ran out.
    transaction.on_commit(bump_version)


# --- tenants: re-pricing ------------------------------------------------------------------------


class RepriceForm(forms.Form):
    start = forms.DateField(label="First day", widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(
        label="Last day (included)", widget=forms.DateInput(attrs={"type": "date"})
    )
    only_unpriced = forms.BooleanField(
        required=False,
        initial=True,
        label="Only events stored unpriced",
        help_text="Untick after correcting a price, to price every event in the range again. "
        "Costs the caller reported are always kept.",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("start"), data.get("end")
        if start and end and end < start:
            self.add_error("end", "The last day must not be before the first day.")
        return data


def local_days(tenant: Tenant, first: date, last: date) -> tuple[datetime, datetime]:
    """[start, end) of whole calendar days in the tenant's time zone, last day included."""
    tz = tenant_zone(tenant)
    return (
        datetime.combine(first, time(), tzinfo=tz),
        datetime.combine(last + timedelta(days=1), time(), tzinfo=tz),
    )


admin.site.unregister(Tenant)


@admin.register(Tenant)
class TenantAdmin(CoreTenantAdmin):
    """The core's tenant admin, with the usage app's re-pricing action."""

    actions = ("reprice_usage",)

    @admin.action(description="Re-price usage in a date range…", permissions=["change"])
    def reprice_usage(
        self, request: HttpRequest, queryset: QuerySet[Tenant]
    ) -> HttpResponse | None:
        if "apply" in request.POST:
            form = RepriceForm(request.POST)
            if form.is_valid():
                data = form.cleaned_data
                for tenant in queryset:
                    start, end = local_days(tenant, data["start"], data["end"])
                    report = usage_reprice(
                        tenant=tenant, start=start, end=end, only_unpriced=data["only_unpriced"]
                    )
                    self.message_user(
                        request,
                        f"{tenant.slug}: {plural(report.changed, 'event')} re-priced of "
                        f"{report.examined:,} examined; {report.still_unpriced:,} still unpriced.",
                        messages.SUCCESS,
                    )
                return None
        else:
            form = RepriceForm()
        context = {
            **self.admin_site.each_context(request),
            "title": "Re-price usage",
            "opts": self.opts,
            "form": form,
            "tenants": queryset,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/costmon/tenant/reprice.html", context)


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


@admin.register(ModelPrice)
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


@admin.register(CatalogAlias)
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


class PriceChangeHoldInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = PriceChangeHold
    fields = ("tenant", "status", "decided_by", "decided_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[PriceChangeHold]:
        return PriceChangeHold.objects.unscoped().select_related("tenant")


@admin.register(PriceSync)
class PriceSyncAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The change record of every catalog load: what was added and changed (old and new
    prices), and the tenants that wait to approve the changes."""

    allow_delete = True

    list_display = (
        "started_at",
        "owner",
        "source",
        "catalog_version",
        "status",
        "added",
        "changed",
        "unchanged",
        "missing",
        "waiting",
    )
    list_filter = ("status", "format")
    inlines = (PriceChangeHoldInline,)
    fields = (
        "started_at",
        "tenant",
        "source",
        "format",
        "catalog_version",
        "status",
        "added",
        "changed",
        "unchanged",
        "missing",
        "aliases_added",
        "error",
        "changes",
    )
    readonly_fields = fields
    ordering = ("-started_at",)

    @admin.display(description="tenant")
    def owner(self, obj: PriceSync) -> str:
        return obj.tenant.slug if obj.tenant_id else "global"  # type: ignore[union-attr]

    @admin.display(description="awaiting approval")
    def waiting(self, obj: PriceSync) -> int:
        return (
            PriceChangeHold.objects.unscoped()
            .filter(sync=obj, status=PriceChangeHold.Status.PENDING)
            .count()
        )

    @admin.display(description="changes")
    def changes(self, obj: PriceSync) -> str:
        rows = [("changed", c) for c in obj.details.get("changed", [])] + [
            ("added", c) for c in obj.details.get("added", [])
        ]
        if not rows:
            return "—"
        return format_html(
            "<table><thead><tr><th>what</th><th>model</th><th>tier</th><th>before</th>"
            "<th>after (USD per 1M tokens)</th></tr></thead><tbody>{}</tbody></table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (
                        what,
                        c["provider"],
                        c["model"],
                        c["service_tier"],
                        _rates_text(c.get("old")),
                        _rates_text(c["new"]),
                    )
                    for what, c in rows[:500]
                ),
            ),
        )


def _rates_text(rates: dict[str, str | None] | None) -> str:
    if not rates:
        return "—"
    return ", ".join(
        f"{name.removesuffix('_per_mtok')} {value}"
        for name, value in rates.items()
        if value not in (None, "0")
    )


@admin.register(PriceChangeHold)
class PriceChangeHoldAdmin(ReadOnlyAdminMixin, TenantOwnedAdmin):
    """Changed catalog prices waiting for approval by tenants that review changes first."""

    allow_change = True  # approve and reject

    list_display = ("tenant", "sync", "status", "decided_by", "decided_at", "created_at")
    list_filter = ("status", "tenant")
    list_select_related = ("tenant", "sync")
    actions = ("approve", "reject")
    fields = ("tenant", "sync", "status", "decided_by", "decided_at", "created_at")
    readonly_fields = fields

    @admin.action(
        description="Approve: charge these tenants the new prices", permissions=["change"]
    )
    def approve(self, request: HttpRequest, queryset: QuerySet[PriceChangeHold]) -> None:
        self._decide(request, queryset, approve=True)

    @admin.action(description="Reject: keep the old prices", permissions=["change"])
    def reject(self, request: HttpRequest, queryset: QuerySet[PriceChangeHold]) -> None:
        self._decide(request, queryset, approve=False)

    def _decide(
        self, request: HttpRequest, queryset: QuerySet[PriceChangeHold], *, approve: bool
    ) -> None:
        done = sum(
            price_hold_decide(hold=hold, approve=approve, by=request.user.get_username())
            for hold in queryset.select_related("tenant", "sync")
        )
        verb = "approved" if approve else "rejected"
        self.message_user(
            request,
            f"{plural(done, 'change set')} {verb}"
            + ("; their events since each sync were priced again." if approve and done else "."),
            messages.SUCCESS,
        )


# --- usage data (read-only) -------------------------------------------------------------------


class ReadOnlyAdmin(ReadOnlyAdminMixin, TenantOwnedAdmin):
    """Rows written only by ingest, millions of them: lists show the newest rows first by
    primary key (an index scan, not a sort), and are never counted in full or faceted."""

    ordering = ("-pk",)
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a count per filter choice over every row
    list_per_page = 50


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
