"""What every notification channel implements, and the one HTTP wrapper they share.

A transport formats a `Message` for its kind of channel and reads the response; it never
opens sockets itself: `post` owns timeouts, redirects and the private-address guard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Message:
    """One notification, in the words a person reads."""

    kind: str  # alert | reminder | resolved | test
    tenant: str  # the tenant's slug
    title: str  # "Spend today is above $10"
    severity: str  # info | warning | critical
    text: str  # a sentence or two: what crossed, by how much
    figure: str | None = None  # "$12.40"
    threshold: str | None = None  # "$10"
    period: str | None = None  # "2026-11-21", "November 2026"
    link: str | None = None  # the dashboard page that shows it
    alert_id: int | None = None
    rule: str | None = None  # the rule's name
    occurred_at: str = ""  # ISO 8601, when the condition was seen
    details: dict[str, Any] = field(default_factory=dict)  # extra machine-readable fields


@dataclass(frozen=True)
class Delivery:
    response_code: int | None
    duration_ms: int


class TransportError(Exception):
    """A failed delivery. `permanent` ones (a 404 or 410 from a webhook) disable the channel;
    the others are retried with backoff."""

    def __init__(
        self, message: str, *, permanent: bool = False, response_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.response_code = response_code


class Transport:
    kind: ClassVar[str]
    label: ClassVar[str]

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The cleaned config, or django ValidationError({field: message}) saying what to fix."""
        raise NotImplementedError

    def notify(self, message: Message) -> Delivery:
        raise NotImplementedError
