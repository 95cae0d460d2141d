"""Staff's admin for alert channels, rules, alerts and deliveries, across every tenant.

Channels are written through `channel_save`, so the transport's own checks (https only, a
webhook secret of the right length, valid addresses) run and show on the config field. A
webhook's secret is never rendered: the form shows the config without it and keeps the stored
one unless a new one is entered. Alerts and notifications are the record of what happened:
they are read-only, except for acknowledging an alert.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.widgets import FilteredSelectMultiple
from django.contrib.auth import get_permission_codename
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from alerts.models import RULE_FIELDS, Alert, AlertRule, Channel, Notification
from alerts.services import (
    alert_acknowledge,
    channel_disable,
    channel_enable,
    channel_save,
    channel_send_test,
    channel_validate,
    rule_validate_fields,
)
from costmon.core.admin import ReadOnlyAdminMixin, TenantOwnedAdmin, plural
from costmon.core.exceptions import DomainError
from costmon.core.money import format_money, usd_to_nanos

SHORT_TEXT_CHARS = 80


def short(text: str) -> str:
    """A long error cut for a list column; the whole text is in the cell's tooltip."""
    if len(text) <= SHORT_TEXT_CHARS:
        return text
    return format_html('<span title="{}">{}…</span>', text, text[: SHORT_TEXT_CHARS - 1])


def duration_text(notification: Notification) -> str:
    return f"{notification.duration_ms:,} ms" if notification.duration_ms is not None else "-"


def channel_label(channel: Channel) -> str:
    return f"{channel.tenant.slug}: {channel.name}"


def disabled_by(request: HttpRequest) -> str:
    return f"disabled in admin by {request.user.get_username()}"


def has_change_perm(request: HttpRequest, model_admin: admin.ModelAdmin) -> bool:
    opts = model_admin.opts
    return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")


# --- channels ---------------------------------------------------------------------------------


def config_messages(exc: ValidationError) -> Iterator[str]:
    """A transport's ValidationError({"url": ...}) as lines naming the config key."""
    if not hasattr(exc, "error_dict"):
        yield from exc.messages
        return
    for key, lines in exc.message_dict.items():
        for line in lines:
            yield line if key == NON_FIELD_ERRORS else f"{key}: {line}"


class ChannelForm(forms.ModelForm):
    config = forms.JSONField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 80}),
        help_text='Slack: {"url": "https://hooks.slack.com/…"}. Webhook: {"url": "https://…", '
        '"secret": "…"} (16 to 200 characters; left out, the stored secret is kept, or a new '
        'one is generated). Email: {"to": ["ops@example.com"]}.',
    )

    class Meta:
        model = Channel
        fields = ("tenant", "name", "kind", "is_enabled", "config")

    secret_generated = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        stored = dict(self.instance.config or {})
        secret = stored.pop("secret", None)
        self._stored_secret: str | None = (
            secret if self.instance.kind == Channel.Kind.WEBHOOK else None
        )
        if self.instance.pk is not None:
            self.initial["config"] = stored  # the page never carries the secret

    def clean_config(self) -> dict[str, Any]:
        config = self.cleaned_data.get("config")
        if config is None or config == "":
            return {}
        if not isinstance(config, dict):
            raise ValidationError('Enter a JSON object, such as {"url": "https://…"}.')
        return config

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind, config = data.get("kind"), data.get("config")
        if kind is None or config is None:
            return data
        config = dict(config)
        if kind == Channel.Kind.WEBHOOK:
            if self._stored_secret and not config.get("secret"):
                config["secret"] = self._stored_secret
            self.secret_generated = not config.get("secret")
        # The same check channel_save runs, here so its messages land on the form.
        try:
            data["config"] = channel_validate(kind=kind, config=config)
        except ValidationError as exc:
            for line in config_messages(exc):
                self.add_error("config", line)
        return data


@admin.register(Channel)
class ChannelAdmin(TenantOwnedAdmin):
    form = ChannelForm
    list_display = (
        "name",
        "tenant",
        "kind",
        "is_enabled",
        "last_success_at",
        "last_error_short",
        "last_error_at",
        "disabled_reason",
    )
    list_filter = ("tenant", "kind", "is_enabled")
    search_fields = ("name",)
    list_select_related = ("tenant",)
    autocomplete_fields = ("tenant",)
    ordering = ("tenant__slug", "name", "pk")
    actions = ("send_test", "disable_channels", "enable_channels")

    _status_fields = (
        "disabled_reason",
        "last_success_at",
        "last_error",
        "last_error_at",
        "created_at",
    )

    def get_fieldsets(self, request: HttpRequest, obj: Channel | None = None) -> Any:
        if obj is None:
            return [(None, {"fields": ("tenant", "name", "kind", "is_enabled", "config")})]
        # Without the change permission every field is shown read-only: the model's config
        # would show the secret there, so those users see it masked.
        config = "config" if self.has_change_permission(request, obj) else "masked_config"
        main: tuple[str, ...] = ("tenant", "name", "kind", "is_enabled", config)
        if obj.kind == Channel.Kind.WEBHOOK:
            main = (*main, "secret")
        return [(None, {"fields": main}), ("Delivery", {"fields": self._status_fields})]

    def get_readonly_fields(self, request: HttpRequest, obj: Channel | None = None) -> Any:
        # A channel never moves to another tenant: its rules would point across tenants.
        if obj is None:
            return ()
        return ("tenant", "secret", "masked_config", *self._status_fields)

    @admin.display(description="last error", ordering="last_error")
    def last_error_short(self, obj: Channel) -> str:
        return short(obj.last_error)

    @admin.display(description="secret")
    def secret(self, obj: Channel) -> str:
        value = str((obj.config or {}).get("secret") or "")
        return f"{value[:4]}… (set a new one by adding it to the config)" if value else "-"

    @admin.display(description="config")
    def masked_config(self, obj: Channel) -> str:
        config = dict(obj.config or {})
        if config.get("secret"):
            config["secret"] = str(config["secret"])[:4] + "…"
        return json.dumps(config, ensure_ascii=False)

    def save_model(self, request: HttpRequest, obj: Channel, form: Any, change: bool) -> None:
        if "is_enabled" in form.changed_data:
            obj.disabled_reason = "" if obj.is_enabled else disabled_by(request)
        channel_save(channel=obj)
        if getattr(form, "secret_generated", False):
            self.message_user(
                request,
                f"A signing secret was generated for {channel_label(obj)}; it is never shown. "
                'For a receiver that verifies signatures, put your own "secret" in the config.',
                messages.WARNING,
            )

    @admin.action(description="Send a test notification", permissions=["change"])
    def send_test(self, request: HttpRequest, queryset: QuerySet[Channel]) -> None:
        # Sent now, in this request: staff see the endpoint's answer straight away.
        for channel in queryset.select_related("tenant"):
            label = channel_label(channel)
            try:
                notification = channel_send_test(channel=channel)
            except DomainError as exc:
                self.message_user(request, f"{label}: not sent. {exc.message}", messages.ERROR)
                continue
            if notification.status == Notification.Status.SENT:
                code = f"HTTP {notification.response_code}, " if notification.response_code else ""
                self.message_user(
                    request,
                    f"Test notification sent to {label} ({code}{duration_text(notification)}).",
                    messages.SUCCESS,
                )
                continue
            text = f"Test notification to {label} failed: {notification.error}."
            if not Channel.objects.unscoped().filter(pk=channel.pk, is_enabled=True).exists():
                text += " The channel is now disabled."
            elif notification.status == Notification.Status.RETRYING:
                text += " A test is not retried: send another when the endpoint is back."
            self.message_user(request, text, messages.ERROR)

    @admin.action(description="Disable selected channels", permissions=["change"])
    def disable_channels(self, request: HttpRequest, queryset: QuerySet[Channel]) -> None:
        # Channels already disabled keep the reason they have (often an endpoint that is gone).
        enabled = list(queryset.filter(is_enabled=True))
        for channel in enabled:
            channel_disable(channel=channel, reason=disabled_by(request))
        text = f"Disabled {plural(len(enabled), 'channel')}."
        if skipped := len(queryset) - len(enabled):
            text += f" {plural(skipped, 'channel')} already disabled."
        self.message_user(request, text, messages.SUCCESS)

    @admin.action(description="Enable selected channels", permissions=["change"])
    def enable_channels(self, request: HttpRequest, queryset: QuerySet[Channel]) -> None:
        disabled = list(queryset.filter(is_enabled=False))
        for channel in disabled:
            channel_enable(channel=channel)
        text = f"Enabled {plural(len(disabled), 'channel')}."
        if skipped := len(queryset) - len(disabled):
            text += f" {plural(skipped, 'channel')} already enabled."
        self.message_user(request, text, messages.SUCCESS)


# --- rules ------------------------------------------------------------------------------------

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


# --- alerts -----------------------------------------------------------------------------------


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
