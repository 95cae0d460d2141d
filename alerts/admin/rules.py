"""Admin for alert rules: the condition in words, and the channels they notify."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.widgets import FilteredSelectMultiple
from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from alerts.models import RULE_FIELDS, AlertRule, Channel
from alerts.services import (
    rule_validate_fields,
)
from costmon.core.admin import TenantOwnedAdmin
from costmon.core.money import format_money, usd_to_nanos

# What the evaluators in alerts.rules use when a rate rule has no threshold_percent.
DEFAULT_PERCENT = {
    AlertRule.Kind.CACHE_HIT_RATE: Decimal(70),
    AlertRule.Kind.ERROR_RATE: Decimal(5),
}
# The spend evaluator knows these periods; any other is read as a day.
SPEND_PERIODS = ("day", "week", "month")


def _number(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _usd(value: Decimal | None) -> str:
    return format_money(usd_to_nanos(value), exact=True) if value is not None else "(no threshold)"


def rule_condition(rule: AlertRule) -> str:
    """What the rule fires on, in a few words: "above $10 per day", "below 70%"."""
    kind = rule.kind
    if kind == AlertRule.Kind.SPEND:
        period = rule.period if rule.period in SPEND_PERIODS else "day"
        text = f"above {_usd(rule.threshold_usd)} per {period}"
    elif kind == AlertRule.Kind.PROJECTED:
        text = f"month-end projection above {_usd(rule.threshold_usd)}"
    elif kind == AlertRule.Kind.SPIKE:
        text = f"{_number(rule.multiplier)}x over {rule.trailing_days} days"
        if rule.metric == AlertRule.Metric.TOKENS:
            text += " (tokens)"
    elif kind in DEFAULT_PERCENT:
        percent = rule.threshold_percent
        if percent is None:
            percent = DEFAULT_PERCENT[AlertRule.Kind(kind)]
        word = "below" if kind == AlertRule.Kind.CACHE_HIT_RATE else "above"
        text = f"{word} {_number(percent)}%"
    elif kind == AlertRule.Kind.BUDGET:
        text = "a budget threshold crossed"
    elif kind == AlertRule.Kind.UNPRICED:
        text = "an unpriced model seen"
    elif kind == AlertRule.Kind.ANOMALY:
        text = f"above the hour-of-week band ({_number(rule.multiplier)}x, {rule.trailing_days // 7} weeks)"
        if rule.metric == AlertRule.Metric.TOKENS:
            text += " (tokens)"
    elif kind == AlertRule.Kind.PRICE_CHANGED:
        text = "catalog prices changed"
    else:
        text = "a stop tripped or lifted"
    filters = [
        f"{name} {value}"
        for name, value in (
            ("provider", rule.provider),
            ("model", rule.model),
            ("operation", rule.operation),
            ("end user", rule.end_user),
            ("tag", rule.tag),
        )
        if value
    ]
    return f"{text} for {', '.join(filters)}" if filters else text


class ChannelChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.tenant.slug}: {obj.name} ({obj.get_kind_display()})"


class AlertRuleForm(forms.ModelForm):
    channels = ChannelChoiceField(
        queryset=Channel.objects.none(),
        required=False,
        widget=FilteredSelectMultiple("channels", is_stacked=False),
        help_text="Where its alerts go: channels of the rule's tenant only.",
    )

    class Meta:
        model = AlertRule
        fields = ("tenant", *RULE_FIELDS[:4], "channels", *RULE_FIELDS[4:])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        channels = (
            Channel.objects.unscoped().select_related("tenant").order_by("tenant__slug", "name")
        )
        if self.instance.tenant_id is not None:
            channels = channels.filter(tenant_id=self.instance.tenant_id)
        field = self.fields["channels"]
        assert isinstance(field, ChannelChoiceField)
        field.queryset = channels

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        # What each kind of rule needs: the same checks (and words) as the API's.
        probe = AlertRule(
            **{k: v for k, v in data.items() if k in self.Meta.fields and k != "channels"}
        )
        try:
            rule_validate_fields(probe)
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                if name in self.fields and name not in self.errors:
                    for message in messages:
                        self.add_error(name, message)
        # On the change form the tenant is read-only, so not a field of this form.
        tenant = data.get("tenant") if "tenant" in self.fields else self.instance.tenant
        chosen = data.get("channels") or []
        others = [c for c in chosen if tenant is not None and c.tenant_id != tenant.pk]
        if tenant is not None and others:
            names = ", ".join(f"{c.name} ({c.tenant.slug})" for c in others)
            self.add_error(
                "channels",
                f"Choose channels of {tenant.slug} only; {names} belong to another tenant.",
            )
        return data


@admin.register(AlertRule)
class AlertRuleAdmin(TenantOwnedAdmin):
    form = AlertRuleForm
    list_display = (
        "name",
        "tenant",
        "kind",
        "severity",
        "condition",
        "channel_count",
        "is_active",
    )
    list_filter = ("tenant", "kind", "severity", "is_active")
    search_fields = ("name",)
    list_select_related = ("tenant",)
    autocomplete_fields = ("tenant",)
    ordering = ("tenant__slug", "name", "pk")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).annotate(n_channels=Count("channels", distinct=True))

    def get_fieldsets(self, request: HttpRequest, obj: AlertRule | None = None) -> Any:
        main: tuple[str, ...] = ("tenant", "name", "kind", "severity", "is_active", "channels")
        if obj is not None:
            main = (*main, "created_at")
        return [
            (None, {"fields": main}),
            (
                "Threshold",
                {
                    "fields": ("period", "threshold_usd", "threshold_percent"),
                    "description": "Spend: threshold_usd per period (day, week or month). "
                    "Projected: threshold_usd for the month. Cache hit rate: below "
                    "threshold_percent (default 70). Error rate: above threshold_percent "
                    "(default 5).",
                },
            ),
            ("Spike", {"fields": ("metric", "multiplier", "trailing_days", "min_volume")}),
            (
                "Filters",
                {
                    "fields": ("provider", "model", "operation", "end_user", "tag"),
                    "description": "Spend, spike and rate rules: only usage matching all of these.",
                },
            ),
            ("Delivery", {"fields": ("cooldown_minutes", "notify_resolved")}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: AlertRule | None = None) -> Any:
        # A rule never moves: its channels and alerts belong to its tenant.
        return () if obj is None else ("tenant", "created_at")

    @admin.display(description="condition")
    def condition(self, obj: AlertRule) -> str:
        return rule_condition(obj)

    @admin.display(description="channels", ordering="n_channels")
    def channel_count(self, obj: AlertRule) -> int:
        return int(getattr(obj, "n_channels", 0))
