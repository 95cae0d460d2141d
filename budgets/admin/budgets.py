"""Admin for budgets, the tenant's budget defaults and rate limits."""

from __future__ import annotations

import re
from collections import defaultdict
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from budgets.admin.common import ConfigAdmin, copy_saved
from budgets.models import (
    Budget,
    BudgetDefaults,
    RateLimit,
)
from budgets.selectors import BudgetView, budget_views
from budgets.services import (
    BUDGET_FIELDS,
    budget_create,
    budget_delete,
    budget_update,
)
from costmon.core.admin import TenantOwnedAdmin, plural
from costmon.core.models import ApiKey
from costmon.core.money import format_money, usd_to_nanos


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
