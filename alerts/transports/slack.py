"""Slack (and Slack-compatible) incoming webhooks: a fallback `text` and Block Kit `blocks`."""

from __future__ import annotations

import json
from typing import Any

from alerts.transports import http
from alerts.transports.base import Delivery, Message, Transport

EMOJI = {"critical": "🔴", "warning": "🟠", "info": "🔵"}
RESOLVED_EMOJI = "✅"
PREFIX = {"resolved": "Resolved: ", "reminder": "Reminder: ", "test": "Test: "}
# Block Kit limits: a header's text and a section's text.
MAX_HEADER_CHARS = 150
MAX_SECTION_CHARS = 3000


def _escape(text: str) -> str:
    """Slack reads &, < and > in mrkdwn as markup (links, mentions)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fallback_text(message: Message) -> str:
    """The one-line summary notifications and old clients show:
    "[WARNING] acme: Spend today is above $10 — $12.40 (threshold $10)"."""
    resolved = message.kind == "resolved"
    tag = "RESOLVED" if resolved else message.severity.upper()
    prefix = "" if resolved else PREFIX.get(message.kind, "")
    line = f"[{tag}] {message.tenant}: {prefix}{message.title}"
    if message.figure:
        line += f" — {message.figure}"
    if message.threshold:
        line += f" (threshold {message.threshold})"
    return line


def payload(message: Message) -> dict[str, Any]:
    emoji = RESOLVED_EMOJI if message.kind == "resolved" else EMOJI.get(message.severity, "🔵")
    header = f"{emoji} {PREFIX.get(message.kind, '')}{message.title}"
    fields = [
        (name, value)
        for name, value in [
            ("Figure", message.figure),
            ("Threshold", message.threshold),
            ("Period", message.period),
            ("Tenant", message.tenant),
            ("Rule", message.rule),
        ]
        if value
    ]
    section: dict[str, Any] = {
        "type": "section",
        "text": {
            "type": "mrkdwn",
            "text": _cut(_escape(message.text or message.title), MAX_SECTION_CHARS),
        },
    }
    if fields:
        section["fields"] = [
            {"type": "mrkdwn", "text": f"*{name}*\n{_escape(value)}"} for name, value in fields
        ]
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _cut(header, MAX_HEADER_CHARS), "emoji": True},
        },
        section,
    ]
    if message.link:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in costmon"},
                        "url": message.link,
                    }
                ],
            }
        )
    return {"text": _escape(fallback_text(message)), "blocks": blocks}


class SlackTransport(Transport):
    kind = "slack"
    label = "Slack"

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        return {"url": http.clean_url(config.get("url"))}

    def notify(self, message: Message) -> Delivery:
        body = json.dumps(payload(message)).encode()
        # Slack answers 200 "ok"; its errors (invalid_token, channel_is_archived) come as 4xx.
        code, _text, duration_ms = http.post(
            self.config["url"], body=body, headers={"Content-Type": "application/json"}
        )
        return Delivery(response_code=code, duration_ms=duration_ms)
