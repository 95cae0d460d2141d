"""Email through Django's mail backend: a plain-text body and an HTML alternative."""

from __future__ import annotations

import smtplib
import time
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives
from django.core.validators import validate_email
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from alerts.transports.base import Delivery, Message, Transport, TransportError

MAX_RECIPIENTS = 20
COLORS = {"critical": "#c0392b", "warning": "#d35400", "info": "#2874a6", "resolved": "#1e8449"}
PREFIX = {"resolved": "Resolved: ", "reminder": "Reminder: ", "test": "Test: "}


def _tag(message: Message) -> str:
    return "RESOLVED" if message.kind == "resolved" else message.severity.upper()


def _headline(message: Message) -> str:
    """One line: "[CRITICAL] acme: Spend today is above $10" (the tag already says RESOLVED)."""
    prefix = "" if message.kind == "resolved" else PREFIX.get(message.kind, "")
    line = f"[{_tag(message)}] {message.tenant}: {prefix}{message.title}"
    # A newline in a header is how headers get injected; Django refuses it outright.
    return " ".join(line.split())


def subject_for(message: Message) -> str:
    return f"[costmon] {_headline(message)}"


def _facts(message: Message) -> list[tuple[str, str]]:
    facts = [
        ("Figure", message.figure),
        ("Threshold", message.threshold),
        ("Period", message.period),
        ("Rule", message.rule),
        ("Tenant", message.tenant),
    ]
    return [(name, value) for name, value in facts if value]


def text_body(message: Message) -> str:
    lines = [_headline(message), "", message.text, ""]
    lines += [f"{name + ':':<11}{value}" for name, value in _facts(message)]
    if message.link:
        lines += ["", f"Open in costmon: {message.link}"]
    lines += [
        "",
        "-- ",
        f"You receive this because this address is on an email channel of {message.tenant} in costmon.",
    ]
    return "\n".join(lines) + "\n"


def html_body(message: Message) -> SafeString:
    color = (
        COLORS["resolved"]
        if message.kind == "resolved"
        else COLORS.get(message.severity, COLORS["info"])
    )
    rows = format_html_join(
        "",
        '<tr><td style="padding:4px 16px 4px 0;color:#666;">{}</td>'
        '<td style="padding:4px 0;font-weight:bold;">{}</td></tr>',
        _facts(message),
    )
    button = (
        format_html(
            '<p style="margin:24px 0 0;"><a href="{}" style="display:inline-block;padding:10px 18px;'
            'background:{};color:#ffffff;text-decoration:none;border-radius:4px;">Open in costmon</a></p>',
            message.link,
            color,
        )
        if message.link
        else ""
    )
    return format_html(
        '<!DOCTYPE html><html><body style="margin:0;padding:24px;background:#f4f4f4;'
        'font-family:Helvetica,Arial,sans-serif;font-size:14px;color:#222;">'
        '<div style="max-width:560px;margin:0 auto;background:#ffffff;border-top:4px solid {};padding:24px;">'
        '<p style="margin:0 0 4px;color:{};font-weight:bold;font-size:12px;">{}</p>'
        '<h1 style="margin:0 0 16px;font-size:20px;">{}</h1>'
        '<p style="margin:0 0 16px;">{}</p>'
        '<table style="border-collapse:collapse;">{}</table>{}'
        '<p style="margin:24px 0 0;color:#999;font-size:12px;">You receive this because this address is on '
        "an email channel of {} in costmon.</p></div></body></html>",
        color,
        color,
        f"{_tag(message)} · {message.tenant}",
        f"{PREFIX.get(message.kind, '')}{message.title}",
        message.text,
        rows,
        button,
        message.tenant,
    )


class EmailTransport(Transport):
    kind = "email"
    label = "Email"

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        value = config.get("to")
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValidationError({"to": "Give a list of email addresses."})
        addresses: list[str] = []
        for raw in value:
            address = raw.strip()
            if not address or address.lower() in {a.lower() for a in addresses}:
                continue
            try:
                validate_email(address)
            except ValidationError:
                raise ValidationError(
                    {"to": f"{address!r} is not a valid email address."}
                ) from None
            addresses.append(address)
        if not addresses:
            raise ValidationError({"to": "Give at least one email address."})
        if len(addresses) > MAX_RECIPIENTS:
            raise ValidationError(
                {"to": f"At most {MAX_RECIPIENTS} addresses, got {len(addresses)}."}
            )
        return {"to": addresses}

    def notify(self, message: Message) -> Delivery:
        email = EmailMultiAlternatives(
            subject=subject_for(message),
            body=text_body(message),
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=list(self.config["to"]),
        )
        email.attach_alternative(html_body(message), "text/html")
        started = time.monotonic()
        try:
            email.send(fail_silently=False)
        except smtplib.SMTPRecipientsRefused as exc:
            refused = ", ".join(sorted(exc.recipients))
            raise TransportError(
                f"the mail server refused the recipients: {refused}", permanent=True
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TransportError(f"could not send the email: {exc}") from None
        return Delivery(response_code=None, duration_ms=int((time.monotonic() - started) * 1000))
