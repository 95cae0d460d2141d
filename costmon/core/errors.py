"""Domain errors: what services raise when a request cannot be done as asked.

`costmon.core.exceptions` turns them into responses (and re-exports them). They live apart so
the request parser (`costmon.core.inputs`), which DRF's views import through the settings, can
raise them without importing the exception handler, which imports DRF's views.
"""

from __future__ import annotations

from typing import Any

from rest_framework import status


class DomainError(Exception):
    """A request that cannot be done as asked; `message` is shown to the caller as is."""

    status_code = status.HTTP_400_BAD_REQUEST

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(DomainError):
    status_code = status.HTTP_404_NOT_FOUND


class Conflict(DomainError):
    status_code = status.HTTP_409_CONFLICT


class BatchInvalid(DomainError):
    """A usage batch with errors: each one is {index, field, message}; nothing was stored."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} invalid field(s); nothing was stored.")
        self.errors = errors


class PayloadTooLarge(DomainError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE


class ServiceUnavailable(DomainError):
    """A store the request needs cannot be reached (e.g. the ClickHouse event store): answered
    503 with Retry-After; nothing was changed."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
