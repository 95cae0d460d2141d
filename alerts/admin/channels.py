"""Admin for alert channels: written through `channel_save`, secrets never rendered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from alerts.admin.common import (
    channel_label,
    disabled_by,
    duration_text,
    short,
)
from alerts.models import Channel, Notification
from alerts.services import (
    channel_disable,
    channel_enable,
    channel_save,
    channel_send_test,
    channel_validate,
)
from costmon.core.admin import TenantOwnedAdmin, plural
from costmon.core.exceptions import DomainError


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
