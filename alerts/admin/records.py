"""Admin for what happened: alerts (acknowledged here) and their notifications, read only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from alerts.admin.common import (
    duration_text,
    has_change_perm,
    short,
)
from alerts.models import Alert, AlertRule, Notification
from alerts.services import (
    alert_acknowledge,
)
from costmon.core.admin import ReadOnlyAdminMixin, TenantOwnedAdmin, plural


class AcknowledgedFilter(admin.SimpleListFilter):
    title = "acknowledged"
    parameter_name = "acknowledged"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(acknowledged_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(acknowledged_at__isnull=True)
        return queryset


class RuleKindFilter(admin.SimpleListFilter):
    title = "rule kind"
    parameter_name = "rule_kind"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(value), str(label)) for value, label in AlertRule.Kind.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value():
            return queryset.filter(rule__kind=self.value())
        return queryset


class NotificationInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Notification
    fk_name = "alert"
    fields = (
        "created_at",
        "channel",
        "kind",
        "status",
        "attempts",
        "response_code",
        "error",
        "duration",
        "sent_at",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        qs = Notification.objects.unscoped().select_related("channel").order_by("created_at", "pk")
        return qs if self.has_view_or_change_permission(request) else qs.none()

    @admin.display(description="duration")
    def duration(self, obj: Notification) -> str:
        return duration_text(obj)


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdminMixin, TenantOwnedAdmin):
    """Read-only: alerts are raised and resolved by the evaluators; staff only acknowledge. Never
    deleted: an alert is the dedup record, and without it the same condition would notify again."""

    list_display = (
        "title",
        "tenant",
        "rule",
        "severity",
        "level",
        "status",
        "first_seen_at",
        "last_notified_at",
        "notify_count",
        "acknowledged",
    )
    list_filter = ("tenant", "status", "severity", RuleKindFilter, AcknowledgedFilter)
    search_fields = ("title",)
    list_select_related = ("tenant", "rule")
    ordering = ("-first_seen_at", "-pk")
    inlines = (NotificationInline,)
    actions = ("acknowledge",)
    fields = (
        "title",
        "tenant",
        "rule",
        "status",
        "severity",
        "level",
        "scope",
        "period",
        "text",
        "figure",
        "threshold",
        "link",
        "first_seen_at",
        "last_seen_at",
        "last_notified_at",
        "notify_count",
        "resolved_at",
        "acknowledged_at",
        "acknowledged_by",
    )
    readonly_fields = fields

    @admin.display(description="acknowledged", boolean=True, ordering="acknowledged_at")
    def acknowledged(self, obj: Alert) -> bool:
        return obj.acknowledged_at is not None

    def has_acknowledge_permission(self, request: HttpRequest) -> bool:
        return has_change_perm(request, self)

    @admin.action(description="Acknowledge selected", permissions=["acknowledge"])
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        open_alerts = list(queryset.filter(acknowledged_at__isnull=True))
        for alert in open_alerts:
            alert_acknowledge(alert=alert, user=request.user)
        text = f"Acknowledged {plural(len(open_alerts), 'alert')}."
        if skipped := len(queryset) - len(open_alerts):
            text += f" {plural(skipped, 'alert')} already acknowledged."
        self.message_user(request, text, messages.SUCCESS)


# --- notifications ----------------------------------------------------------------------------


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdminMixin, TenantOwnedAdmin):
    """Every delivery attempt's outcome: written by the delivery service only."""

    list_display = (
        "created_at",
        "tenant",
        "channel",
        "kind",
        "status",
        "attempts",
        "response_code",
        "error_short",
        "duration",
    )
    list_filter = ("status", "kind", "tenant")
    list_select_related = ("tenant", "channel")
    ordering = ("-created_at", "-pk")
    fields = (
        "created_at",
        "tenant",
        "channel",
        "alert",
        "kind",
        "status",
        "attempts",
        "response_code",
        "error",
        "duration",
        "sent_at",
        "claimed_at",
    )
    readonly_fields = fields

    @admin.display(description="error", ordering="error")
    def error_short(self, obj: Notification) -> str:
        return short(obj.error)

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, obj: Notification) -> str:
        return duration_text(obj)
