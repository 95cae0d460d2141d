"""Domain errors raised by services, and the one place they become HTTP responses."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


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


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, BatchInvalid):
        return Response({"errors": exc.errors}, status=exc.status_code)
    if isinstance(exc, DomainError):
        body: dict[str, Any] = {"detail": exc.message}
        if exc.field:
            body["field"] = exc.field
        return Response(body, status=exc.status_code)
    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "error_dict"):
            errors = {k: [str(m) for m in v[0].messages] for k, v in exc.error_dict.items()}
            return Response({"detail": "Invalid input.", "fields": errors}, status=400)
        return Response({"detail": " ".join(exc.messages)}, status=400)
    if isinstance(exc, Http404):
        return Response({"detail": "Not found."}, status=404)
    response = exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.ParseError):
        response.data = {"detail": f"Malformed JSON: {exc.detail}"}
    return response
