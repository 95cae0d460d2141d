"""What the alerts admins share: short texts and labels."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import get_permission_codename
from django.http import HttpRequest
from django.utils.html import format_html

from alerts.models import Channel, Notification

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
