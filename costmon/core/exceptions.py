"""Domain errors raised by services, and the one place they become HTTP responses.

Every API error is JSON of one shape (README, "Errors"):

    {"detail": "<one line for people>", "errors": [{"field": "<name or null>", "message": "..."}]}

A usage batch (and a check) lists every problem with the event's position and nothing else,
`{"errors": [{"index": 1, "field": "input_tokens", "message": "..."}]}`, as it always has. Keys
that existed before this shape stay: `field` beside `detail` for a refused parameter, and a
refused body's field names mapped to their messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import structlog
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from costmon.core.errors import BatchInvalid as BatchInvalid
from costmon.core.errors import Conflict as Conflict
from costmon.core.errors import DomainError as DomainError
from costmon.core.errors import NotFound as NotFound
from costmon.core.errors import PayloadTooLarge as PayloadTooLarge
from costmon.core.errors import ServiceUnavailable as ServiceUnavailable

log = structlog.get_logger(__name__)

# How long a client should wait before trying again when the database is unreachable (a
# restart or a fail-over takes a few seconds).
RETRY_AFTER_SECONDS = 5
UNAVAILABLE_MESSAGE = (
    "costmon cannot reach its database right now; nothing was changed. Try again in a few seconds."
)
INTERNAL_ERROR_MESSAGE = (
    "costmon failed on this request (a bug, logged on the server); nothing was changed."
)
# Errors that mean the database is unreachable or went away mid-request (a restart, a
# fail-over, a lost connection): worth retrying, not a bug.
# psycopg's own classes come from statements run on a raw cursor (the bulk ingest path), which
# Django does not wrap.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


def error_body(message: str, *, field: str | None = None) -> dict[str, Any]:
    """The body of a single-problem API error."""
    body: dict[str, Any] = {"detail": message}
    if field:
        body["field"] = field
    body["errors"] = [{"field": field, "message": message}]
    return body


def unavailable_response() -> Response:
    return Response(
        error_body(UNAVAILABLE_MESSAGE),
        status=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _flatten(data: Any, path: str = "") -> Iterator[dict[str, Any]]:
    """A serializer's nested errors as [{field, message}], fields as dotted paths."""
    if isinstance(data, dict):
        for key, value in data.items():
            name = "" if key in ("non_field_errors", "detail") else str(key)
            yield from _flatten(value, f"{path}.{name}" if path and name else path or name)
    elif isinstance(data, list):
        if all(not isinstance(item, dict | list) for item in data):
            for item in data:
                yield {"field": path or None, "message": str(item)}
        else:
            for index, item in enumerate(data):
                if item:
                    yield from _flatten(item, f"{path}.{index}" if path else str(index))
    else:
        yield {"field": path or None, "message": str(data)}


def _invalid_body(original: dict[str, Any] | list[Any]) -> dict[str, Any]:
    errors = list(_flatten(original))
    first = errors[0] if errors else {"field": None, "message": "Invalid input."}
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    summary = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    body: dict[str, Any] = dict(original) if isinstance(original, dict) else {}
    body.update(detail=f"{summary}{more}", errors=errors)
    return body


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, BatchInvalid):
        return Response({"errors": exc.errors}, status=exc.status_code)
    if isinstance(exc, ServiceUnavailable):
        log.warning("store_unavailable", error=exc.message)
        return Response(
            error_body(exc.message),
            status=exc.status_code,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, DomainError):
        return Response(error_body(exc.message, field=exc.field), status=exc.status_code)
    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "error_dict"):
            fields = {k: [str(m) for m in v[0].messages] for k, v in exc.error_dict.items()}
            body = {"detail": "Invalid input.", "fields": fields, "errors": list(_flatten(fields))}
            return Response(body, status=400)
        return Response(error_body(" ".join(exc.messages)), status=400)
    if isinstance(exc, Http404):
        return Response(error_body("Not found."), status=404)
    if isinstance(exc, UNAVAILABLE_ERRORS):
        log.warning("database_unavailable", error=f"{exc.__class__.__name__}: {exc}")
        return unavailable_response()
    response = exception_handler(exc, context)
    if response is None:
        return None  # unexpected: costmon.core.middleware.ApiErrorMiddleware answers (500)
    if isinstance(exc, exceptions.ParseError):
        response.data = error_body(f"Malformed JSON: {exc.detail}")
    elif isinstance(exc, exceptions.ValidationError):
        response.data = _invalid_body(response.data)
    elif isinstance(response.data, dict) and isinstance(response.data.get("detail"), str):
        response.data = {**response.data, **error_body(response.data["detail"])}
    return response
