"""Usage data in the admin, read-only: events, hourly rollups and the name dictionary."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path

from costmon.core.admin import ReadOnlyAdminMixin, TenantOwnedAdmin
from costmon.core.money import format_usd
from usage.admin.storeevents import StoreEventsMixin
from usage.eventstore.current import event_store
from usage.maintenance import usage_events_delete
from usage.models import (
    HourlyRollup,
    UsageEvent,
)

# --- usage data (read-only) -------------------------------------------------------------------


class ReadOnlyAdmin(ReadOnlyAdminMixin, TenantOwnedAdmin):
    """Rows written only by ingest, millions of them: lists show the newest rows first by
    primary key (an index scan, not a sort), and are never counted in full or faceted."""

    ordering = ("-pk",)
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a count per filter choice over every row
    list_per_page = 50


class UsageEventAdmin(StoreEventsMixin, ReadOnlyAdmin):
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
    # Newest first by time: filtered by tenant, a scan of the key (tenant, occurred_at,
    # event_id) backwards; `id` has no index on PostgreSQL (monthly partitions).
    ordering = ("-occurred_at",)
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
    # `tags` reads the event's tag set (`UsageEvent.tags`).
    readonly_fields = ("cost", "tags")

    @admin.display(description="tokens in / out")
    def tokens(self, obj: UsageEvent) -> str:
        return f"{obj.input_tokens:,} / {obj.output_tokens:,}"

    @admin.display(description="cost (USD)")
    def cost(self, obj: UsageEvent) -> str:
        return format_usd(obj.cost_nanos)

    @admin.display(description="status")
    def status(self, obj: UsageEvent) -> str:
        return "error" if obj.is_error else "success"

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(self.store_events_view)
        return [path("store/", view, name="usage_usageevent_store"), *super().get_urls()]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # With ClickHouse this table is empty: the list is the store's, one tenant at a time.
        if event_store().name != "postgres":
            return HttpResponseRedirect(self.store_events_url())
        return super().changelist_view(request, extra_context)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Offered where this list is the events' store: PostgreSQL's table (with ClickHouse
        # it is empty, and chosen events are deleted by key: `usage_events_delete`).
        return bool(request.user.is_superuser) and event_store().name == "postgres"

    def delete_model(self, request: HttpRequest, obj: UsageEvent) -> None:
        usage_events_delete(events=UsageEvent.objects.unscoped().filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[UsageEvent]) -> None:
        usage_events_delete(events=queryset)


class EventRewriteAdmin(ReadOnlyAdmin):
    """Rewrites of ClickHouse's events (`usage.storerewrites`): one left without `done at` is
    finished by the hourly task or `reprice_usage --resume`."""

    list_display = ("pk", "tenant", "kind", "start", "end", "created_at", "done_at", "changed")
    list_filter = ("kind",)


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

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        store = event_store()
        if store.keeps_user_rollups:
            # Said rather than an empty list looking like no usage.
            messages.info(
                request,
                f"With the {store.label} event store (COSTMON_EVENT_STORE_URL) the hourly sums "
                f"by end user and API key are kept in {store.label}, not in this table: the "
                "dashboard, the metrics API, statements and budgets read them there. Rows "
                "listed here, if any, are from before the switch.",
            )
        return super().changelist_view(request, extra_context)


class DimensionAdmin(ReadOnlyAdmin):
    list_display = ("tenant", "kind", "value")
    list_filter = ("kind", "tenant")
    search_fields = ("value",)
    list_select_related = ("tenant",)
