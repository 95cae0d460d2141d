"""Admin for the emergency stop and its rules: trip and lift by hand, with the history."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone

from budgets.admin.common import ConfigAdmin, copy_saved
from budgets.emergency_stop import emergency_stop_lift, emergency_stop_trip
from budgets.models import (
    EmergencyStop,
    EmergencyStopRule,
)
from costmon.core.admin import ReadOnlyAdminMixin, TenantOwnedAdmin, plural
from costmon.core.money import format_money, usd_to_nanos


@admin.register(EmergencyStopRule)
class EmergencyStopRuleAdmin(ConfigAdmin):
    list_display = ("tenant_or_all", "window", "threshold", "duration", "is_active")
    list_filter = ("tenant", "window", "is_active")
    list_select_related = ("tenant",)
    autocomplete_fields = ("tenant",)
    ordering = ("tenant__slug", "window", "pk")

    @admin.display(description="tenant", ordering="tenant__slug")
    def tenant_or_all(self, obj: EmergencyStopRule) -> str:
        return obj.tenant.slug if obj.tenant is not None else "all tenants"

    @admin.display(description="threshold", ordering="threshold_usd")
    def threshold(self, obj: EmergencyStopRule) -> str:
        return format_money(usd_to_nanos(obj.threshold_usd))

    @admin.display(description="duration", ordering="duration_minutes")
    def duration(self, obj: EmergencyStopRule) -> str:
        return plural(obj.duration_minutes, "minute")


class ActiveStopFilter(admin.SimpleListFilter):
    title = "active"
    parameter_name = "active"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        now = timezone.now()
        if self.value() == "yes":
            return queryset.filter(lifted_at__isnull=True, expires_at__gt=now)
        if self.value() == "no":
            return queryset.exclude(lifted_at__isnull=True, expires_at__gt=now)
        return queryset


class EmergencyStopTripForm(forms.ModelForm):
    duration_minutes = forms.IntegerField(
        min_value=1,
        max_value=7 * 24 * 60,
        initial=60,
        help_text="How long the stop lasts unless lifted earlier (at most a week: 10080).",
    )

    class Meta:
        model = EmergencyStop
        fields = ("tenant", "reason")


@admin.register(EmergencyStop)
class EmergencyStopAdmin(ReadOnlyAdminMixin, TenantOwnedAdmin):
    """The history of stops. Rows change only through the services: the add form trips a stop
    and the action lifts one, so Redis (where checks look) always follows."""

    allow_add = True  # the add form trips a stop; the history is never edited

    form = EmergencyStopTripForm
    list_display = (
        "tenant_or_global",
        "reason",
        "tripped_at",
        "tripped_by_text",
        "spend_at_trip",
        "expires_at",
        "lifted_at",
        "lifted_by_text",
        "active",
    )
    list_filter = (ActiveStopFilter, "tenant")
    search_fields = ("reason", "tenant__slug")
    list_select_related = ("tenant", "tripped_by", "tripped_by_key", "lifted_by", "lifted_by_key")
    autocomplete_fields = ("tenant",)
    ordering = ("-tripped_at", "-pk")
    actions = ("lift_stops",)

    _add_fields = ("tenant", "reason", "duration_minutes")
    _view_fields = (
        "tenant_or_global",
        "reason",
        "rule",
        "tripped_at",
        "tripped_by_text",
        "spend_at_trip",
        "expires_at",
        "lifted_at",
        "lifted_by_text",
        "lift_reason",
        "active",
    )

    @admin.display(description="tenant", ordering="tenant__slug")
    def tenant_or_global(self, obj: EmergencyStop) -> str:
        return obj.tenant.slug if obj.tenant is not None else "global"

    @admin.display(description="tripped by")
    def tripped_by_text(self, obj: EmergencyStop) -> str:
        if obj.tripped_by is not None:
            return obj.tripped_by.get_username()
        if obj.rule_id is not None:
            return "rule"
        if obj.tripped_by_key is not None:
            return f"API key {obj.tripped_by_key}"
        return "-"

    @admin.display(description="lifted by")
    def lifted_by_text(self, obj: EmergencyStop) -> str:
        if obj.lifted_by is not None:
            return obj.lifted_by.get_username()
        if obj.lifted_by_key is not None:
            return f"API key {obj.lifted_by_key}"
        return obj.lift_reason if obj.lift_reason == "expired" else "-"

    @admin.display(description="spend at trip", ordering="spend_at_trip_nanos")
    def spend_at_trip(self, obj: EmergencyStop) -> str:
        return format_money(obj.spend_at_trip_nanos) if obj.spend_at_trip_nanos is not None else "-"

    @admin.display(description="active", boolean=True)
    def active(self, obj: EmergencyStop) -> bool:
        return obj.is_active_at(timezone.now())

    def get_fields(self, request: HttpRequest, obj: EmergencyStop | None = None) -> Any:
        return self._add_fields if obj is None else self._view_fields

    def get_readonly_fields(self, request: HttpRequest, obj: EmergencyStop | None = None) -> Any:
        return () if obj is None else self._view_fields

    def has_lift_permission(self, request: HttpRequest) -> bool:
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    def save_model(self, request: HttpRequest, obj: EmergencyStop, form: Any, change: bool) -> None:
        tenant = form.cleaned_data.get("tenant")
        open_before = (
            EmergencyStop.objects.unscoped()
            .filter(tenant=tenant, lifted_at__isnull=True, expires_at__gt=timezone.now())
            .values_list("pk", flat=True)
            .first()
        )
        stop = emergency_stop_trip(
            tenant=tenant,
            reason=form.cleaned_data["reason"],
            duration_minutes=form.cleaned_data["duration_minutes"],
            user=request.user,
        )
        copy_saved(obj, stop)
        obj._was_open = stop.pk == open_before  # type: ignore[attr-defined]

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        if getattr(obj, "_was_open", False):
            return None  # nothing was added
        return super().log_addition(request, obj, message)

    def response_add(
        self, request: HttpRequest, obj: EmergencyStop, post_url_continue: str | None = None
    ) -> HttpResponse:
        who = obj.tenant.slug if obj.tenant is not None else "every tenant (global)"
        if getattr(obj, "_was_open", False):
            self.message_user(
                request,
                f"A stop for {who} is already active (tripped {obj.tripped_at:%Y-%m-%d %H:%M} "
                f"UTC, until {obj.expires_at:%Y-%m-%d %H:%M} UTC): nothing changed. Lift it "
                "first to trip a new one.",
                messages.WARNING,
            )
        else:
            self.message_user(
                request,
                f"Emergency stop tripped for {who} until {obj.expires_at:%Y-%m-%d %H:%M} UTC.",
                messages.SUCCESS,
            )
        return HttpResponseRedirect(reverse("admin:budgets_emergencystop_changelist"))

    @admin.action(description="Lift selected stops", permissions=["lift"])
    def lift_stops(self, request: HttpRequest, queryset: QuerySet[EmergencyStop]) -> None:
        now = timezone.now()
        lifted: list[str] = []
        over = 0
        for stop in queryset.select_related("tenant"):
            if not stop.is_active_at(now):
                over += 1
                continue
            # At most one stop per tenant (or global) is open: lifting the tenant's is this one.
            done = emergency_stop_lift(
                tenant=stop.tenant, user=request.user, reason="lifted in admin"
            )
            if done is None:
                over += 1
            else:
                lifted.append(stop.tenant.slug if stop.tenant is not None else "global")
        if lifted:
            self.message_user(
                request,
                f"Lifted {plural(len(lifted), 'stop')}: {', '.join(sorted(lifted))}.",
                messages.SUCCESS,
            )
        if over:
            self.message_user(
                request,
                f"{plural(over, 'stop')} already over (lifted or expired): nothing to lift.",
                messages.WARNING,
            )
