"""Staff's admin for budgets, rate limits and the emergency stop, across every tenant.

Writes go through the budgets services (or, for rows without a service, bump the tenant's
configuration version after the commit), so pre-flight checks in every process see a change
at once and never a half-written one.
"""

from __future__ import annotations

import re
from collections import defaultdict
from decimal import Decimal
from functools import partial
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone

from budgets.config import bump
from budgets.emergency_stop import emergency_stop_lift, emergency_stop_trip
from budgets.models import (
    Budget,
    BudgetDefaults,
    CounterCorrection,
    CounterState,
    EmergencyStop,
    EmergencyStopRule,
    RateLimit,
)
from budgets.selectors import BudgetView, budget_views
from budgets.services import (
    BUDGET_FIELDS,
    budget_create,
    budget_delete,
    budget_update,
)
from costmon.core.admin import ReadOnlyAdminMixin, TenantOwnedAdmin, plural
from costmon.core.models import ApiKey
from costmon.core.money import format_money, usd_to_nanos


def bump_after_commit(*tenant_ids: int | None) -> None:
    # After the commit: a check reloading between the bump and the commit would keep the old
    # configuration under the new version.
    for tenant_id in set(tenant_ids):
        transaction.on_commit(partial(bump, tenant_id))


def copy_saved(target: Any, saved: Any) -> None:
    """Make the admin's unsaved instance the row a service wrote, for the admin's log and
    redirect."""
    for field in type(saved)._meta.concrete_fields:
        setattr(target, field.attname, getattr(saved, field.attname))
    target._state.adding = False
    target._state.db = saved._state.db


class ConfigAdmin(TenantOwnedAdmin):
    """Rows the pre-flight check reads from its per-process configuration: every write bumps
    the version of the tenant it belongs to (None: a global row), and of the tenant it left."""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        tenants = [obj.tenant_id]
        if change and "tenant" in form.changed_data:
            tenants.append(form.initial.get("tenant"))
        bump_after_commit(*tenants)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        tenant_id = obj.tenant_id
        super().delete_model(request, obj)
        bump_after_commit(tenant_id)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        tenant_ids = set(queryset.values_list("tenant_id", flat=True))
        super().delete_queryset(request, queryset)
        bump_after_commit(*tenant_ids)


# --- budgets ----------------------------------------------------------------------------------


class ThresholdsField(forms.Field):
    """Percentages typed as a list, "80, 95", stored as the model's list of numbers. Whether
    each one makes sense (above 0, at most 100, all different) is Budget.clean()'s rule."""

    widget = forms.TextInput
    default_error_messages = {
        "required": "Give at least one percentage, e.g. 80, 95.",
        "invalid": "“%(item)s” is not a number: give percentages separated by commas, e.g. 80, 95.",
    }

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return ", ".join(str(item) for item in value)
        return value

    def to_python(self, value: Any) -> list[int | float]:
        if isinstance(value, list):
            return value
        numbers: list[int | float] = []
        # Brackets allowed: "[80, 95]" is how the field used to be typed (JSON).
        for item in re.split(
            r"[\s,;]+", str(value or "").strip().removeprefix("[").removesuffix("]")
        ):
            if not item:
                continue
            try:
                number = Decimal(item.removesuffix("%"))
            except ArithmeticError:
                number = None
            if number is None or not number.is_finite():
                raise ValidationError(
                    self.error_messages["invalid"], code="invalid", params={"item": item}
                )
            # As the API stores them: whole numbers as integers.
            numbers.append(int(number) if number == number.to_integral_value() else float(number))
        return sorted(numbers)


class ApiKeyChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.tenant.slug}: {obj}"


class BudgetForm(forms.ModelForm):
    thresholds = ThresholdsField(
        help_text="Percentages of the limit, separated by commas: the lowest warns, the highest "
        "is critical (e.g. 80, 95).",
    )
    api_key = ApiKeyChoiceField(
        queryset=ApiKey.objects.none(),
        required=False,
        label="API key",
        help_text="Only for the API key scope: one of the budget's tenant's keys.",
    )

    class Meta:
        model = Budget
        fields = ("tenant", *BUDGET_FIELDS)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        keys = ApiKey.objects.unscoped().select_related("tenant").order_by("tenant__slug", "prefix")
        if self.instance.tenant_id is None:
            keys = keys.filter(revoked_at__isnull=True)
        else:
            # A saved budget's tenant is fixed: offer that tenant's keys, and keep its own key
            # listed even if it was revoked since.
            keys = keys.filter(tenant_id=self.instance.tenant_id).filter(
                Q(revoked_at__isnull=True) | Q(pk=self.instance.api_key_id)
            )
        field = self.fields["api_key"]
        assert isinstance(field, ApiKeyChoiceField)
        field.queryset = keys
        # A key of another tenant is refused by Budget.clean(), which ModelForm runs, with
        # "That API key belongs to another tenant." on this field; checking it here as well
        # would show the message twice.


def _views_by_budget(budgets: list[Budget]) -> None:
    """Attach each budget's spend this period: one `budget_views` per tenant on the page."""
    by_tenant: dict[int, list[Budget]] = defaultdict(list)
    for budget in budgets:
        by_tenant[budget.tenant_id].append(budget)
    for rows in by_tenant.values():
        for view in budget_views(tenant=rows[0].tenant, budgets=rows):
            view.budget._admin_view = view  # type: ignore[attr-defined]


def view_of(budget: Budget) -> BudgetView:
    view = getattr(budget, "_admin_view", None)
    if view is None:  # a page that did not compute its rows at once (the change form)
        _views_by_budget([budget])
        view = budget._admin_view  # type: ignore[attr-defined]
    return view


@admin.register(Budget)
class BudgetAdmin(TenantOwnedAdmin):
    form = BudgetForm
    list_display = (
        "name",
        "tenant",
        "covers",
        "period_text",
        "limit",
        "spent",
        "percent",
        "status",
        "enforcement",
        "is_active",
    )
    list_filter = ("tenant", "scope", "period", "enforcement", "fail_mode", "is_active")
    search_fields = ("name", "scope_value")
    list_select_related = ("tenant", "api_key")
    autocomplete_fields = ("tenant",)
    ordering = ("tenant__slug", "name", "pk")

    _limit_fields = (
        "period",
        "rolling_days",
        "limit_usd",
        "thresholds",
        "enforcement",
        "fail_mode",
        "suggested_model",
    )

    def get_fieldsets(self, request: HttpRequest, obj: Budget | None = None) -> Any:
        fieldsets: list[tuple[str | None, dict[str, Any]]] = [
            (None, {"fields": ("tenant", "name", "is_active")}),
            ("What it covers", {"fields": ("scope", "scope_value", "api_key")}),
            ("Limit", {"fields": self._limit_fields}),
        ]
        if obj is not None:
            fieldsets.append(
                (
                    "This period",
                    {"fields": ("spent", "percent", "status", "created_at", "updated_at")},
                )
            )
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Budget | None = None) -> Any:
        # The services take the tenant only when creating: a budget never moves.
        if obj is None:
            return ()
        return ("tenant", "spent", "percent", "status", "created_at", "updated_at")

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        cl = super().get_changelist_instance(request)
        _views_by_budget(list(cl.result_list))  # fills the page's queryset cache, then spend
        return cl

    @admin.display(description="covers", ordering="scope")
    def covers(self, obj: Budget) -> str:
        what = obj.get_scope_display()
        if obj.scope == Budget.Scope.API_KEY:
            return f"{what}: {obj.api_key}"
        return f"{what}: {obj.scope_value}" if obj.scope_value else what

    @admin.display(description="period", ordering="period")
    def period_text(self, obj: Budget) -> str:
        if obj.period == Budget.Period.ROLLING:
            return f"rolling {plural(obj.rolling_days or 0, 'day')}"
        return obj.period

    @admin.display(description="limit", ordering="limit_usd")
    def limit(self, obj: Budget) -> str:
        return format_money(usd_to_nanos(obj.limit_usd))

    @admin.display(description="spent this period")
    def spent(self, obj: Budget) -> str:
        state = view_of(obj).state
        if state.end_user:
            return f"{format_money(state.spent)} (top end user: {state.end_user})"
        return format_money(state.spent)

    @admin.display(description="percent")
    def percent(self, obj: Budget) -> str:
        return f"{view_of(obj).state.percent}%"

    @admin.display(description="status")
    def status(self, obj: Budget) -> str:
        return view_of(obj).state.status

    def save_model(self, request: HttpRequest, obj: Budget, form: Any, change: bool) -> None:
        data = {
            name: form.cleaned_data[name] for name in BUDGET_FIELDS if name in form.cleaned_data
        }
        if change:
            budget_update(budget=obj, data=data)
        else:
            copy_saved(obj, budget_create(tenant=obj.tenant, data=data))

    def delete_model(self, request: HttpRequest, obj: Budget) -> None:
        budget_delete(budget=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Budget]) -> None:
        for budget in queryset:
            budget_delete(budget=budget)


@admin.register(BudgetDefaults)
class BudgetDefaultsAdmin(ConfigAdmin):
    """A tenant's defaults for the budgets that set none (fail mode)."""

    list_display = ("tenant", "fail_mode_text")
    list_select_related = ("tenant",)
    autocomplete_fields = ("tenant",)
    ordering = ("tenant__slug",)

    @admin.display(description="fail mode", ordering="fail_mode")
    def fail_mode_text(self, obj: BudgetDefaults) -> str:
        return obj.fail_mode or "closed for hard budgets, open for soft ones"


# --- rate limits ------------------------------------------------------------------------------


@admin.register(RateLimit)
class RateLimitAdmin(ConfigAdmin):
    list_display = ("tenant", "scope", "value_or_each", "window", "max_requests", "max_tokens")
    list_filter = ("tenant", "scope")
    search_fields = ("value", "tenant__slug")
    list_select_related = ("tenant",)
    autocomplete_fields = ("tenant",)
    ordering = ("tenant__slug", "scope", "value")

    @admin.display(description="value", ordering="value")
    def value_or_each(self, obj: RateLimit) -> str:
        return obj.value or "each"

    @admin.display(description="window", ordering="window_seconds")
    def window(self, obj: RateLimit) -> str:
        return plural(obj.window_seconds, "second")


# --- the emergency stop -----------------------------------------------------------------------


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


# --- counters ---------------------------------------------------------------------------------


@admin.register(CounterState)
class CounterStateAdmin(ReadOnlyAdminMixin, TenantOwnedAdmin):
    """Tenants whose Redis counters missed an update; the next reconcile rebuilds them."""

    list_display = ("tenant", "stale_since")
    list_select_related = ("tenant",)
    ordering = ("stale_since",)


@admin.register(CounterCorrection)
class CounterCorrectionAdmin(ReadOnlyAdminMixin, TenantOwnedAdmin):
    """Drift found in counters checks were trusting, corrected from PostgreSQL (Prometheus:
    costmon_counter_drift_corrected_usd_total)."""

    list_display = ("tenant", "corrected_at", "cause", "fields", "drift")
    list_filter = ("tenant", "cause")
    list_select_related = ("tenant",)
    ordering = ("-corrected_at",)

    @admin.display(description="drift", ordering="drift_nanos")
    def drift(self, obj: CounterCorrection) -> str:
        return format_money(obj.drift_nanos)
