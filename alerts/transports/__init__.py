"""Notification channels, one module per kind. A new kind is a new module and one line below."""

from __future__ import annotations

from typing import Any

from alerts.transports.base import Delivery, Message, Transport, TransportError
from alerts.transports.email import EmailTransport
from alerts.transports.slack import SlackTransport
from alerts.transports.webhook import WebhookTransport

TRANSPORTS: dict[str, type[Transport]] = {
    "slack": SlackTransport,
    "webhook": WebhookTransport,
    "email": EmailTransport,
}


def get_transport(kind: str, config: dict[str, Any]) -> Transport:
    try:
        transport_class = TRANSPORTS[kind]
    except KeyError:
        known = ", ".join(sorted(TRANSPORTS))
        raise ValueError(f"Unknown channel kind {kind!r} (known kinds: {known})") from None
    return transport_class(config)


__all__ = [
    "TRANSPORTS",
    "Delivery",
    "EmailTransport",
    "Message",
    "SlackTransport",
    "Transport",
    "TransportError",
    "WebhookTransport",
    "get_transport",
]
