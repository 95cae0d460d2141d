"""Generic signed webhooks: a JSON POST a receiver can verify with `verify_signature`.

The signature is HMAC-SHA256 over "<timestamp>." followed by the raw body, so a captured
request cannot be replayed later with a fresh timestamp.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from django.core.exceptions import ValidationError

from alerts.transports import http
from alerts.transports.base import Delivery, Message, Transport

USER_AGENT = "costmon-webhooks/1"
SIGNATURE_PREFIX = "sha256="
MIN_SECRET_CHARS = 16
MAX_SECRET_CHARS = 200
EVENT_TYPES = {
    "alert": "costmon.alert",
    "reminder": "costmon.alert.reminder",
    "resolved": "costmon.alert.resolved",
    "test": "costmon.test",
}


def body_for(message: Message) -> bytes:
    """The documented payload as compact JSON with sorted keys: the exact bytes that are signed."""
    if message.kind not in EVENT_TYPES:
        raise ValueError(f"Unknown message kind {message.kind!r}")
    document = {
        "type": EVENT_TYPES[message.kind],
        "id": message.alert_id,
        "tenant": message.tenant,
        "rule": message.rule,
        "title": message.title,
        "severity": message.severity,
        "text": message.text,
        "figure": message.figure,
        "threshold": message.threshold,
        "period": message.period,
        "link": message.link,
        "occurred_at": message.occurred_at,
        "details": message.details,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def sign(*, secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return SIGNATURE_PREFIX + digest.hexdigest()


def verify_signature(
    *,
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    tolerance_seconds: int = 300,
    now: float | None = None,
) -> bool:
    """True when `signature` (the X-Costmon-Signature header) was made with `secret` over this
    `timestamp` (X-Costmon-Timestamp) and `body`, and the timestamp is within
    `tolerance_seconds` of `now`. Receivers should reject the request otherwise."""
    try:
        sent_at = int(timestamp)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance_seconds:
        return False
    expected = sign(secret=secret, timestamp=timestamp, body=body)
    return hmac.compare_digest(expected.encode(), signature.strip().encode())


class WebhookTransport(Transport):
    kind = "webhook"
    label = "Webhook"

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        url = http.clean_url(config.get("url"))
        secret = config.get("secret")
        if secret is None or secret == "":
            secret = secrets.token_urlsafe(32)
        elif not isinstance(secret, str) or not MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS:
            raise ValidationError(
                {
                    "secret": f"The secret must be {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} "
                    "characters; leave it empty to have one generated."
                }
            )
        return {"url": url, "secret": secret}

    def notify(self, message: Message) -> Delivery:
        body = body_for(message)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Costmon-Timestamp": timestamp,
            "X-Costmon-Signature": sign(
                secret=self.config["secret"], timestamp=timestamp, body=body
            ),
        }
        code, _text, duration_ms = http.post(self.config["url"], body=body, headers=headers)
        return Delivery(response_code=code, duration_ms=duration_ms)
