from __future__ import annotations

import logging
import time
from collections.abc import Callable

import structlog
from django.core import signals
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from costmon.core.exceptions import (
    INTERNAL_ERROR_MESSAGE,
    RETRY_AFTER_SECONDS,
    UNAVAILABLE_ERRORS,
    UNAVAILABLE_MESSAGE,
    error_body,
)
from costmon.core.tenancy import forget_rls_state, no_tenant, unscoped

log = structlog.get_logger(__name__)
logger = logging.getLogger("django.request")


class ServerTimingMiddleware:
    """`Server-Timing: app;dur=<ms>` on every response: the time Django spent on the request,
    shown by browsers' developer tools and read by the benchmark."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        # A streamed response's time is that of its first part.
        response["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
        return response


class TenantContextMiddleware:
    """Every request starts with no tenant in context: nothing tenant-owned is visible until
    authentication names the tenant (API key) or a view picks one the user belongs to."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        forget_rls_state(connection)
        with no_tenant():
            return self.get_response(request)


class StaffAdminMiddleware:
    """Django admin is staff's tool for every tenant: it reads and writes unscoped."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if (
            request.path.startswith("/admin/")
            and user is not None
            and user.is_active
            and user.is_staff
        ):
            with unscoped():
                return self.get_response(request)
        return self.get_response(request)


API_PREFIXES = ("/api/", "/v1/")


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def unavailable(request: HttpRequest) -> HttpResponse:
    """503 with Retry-After: the database is unreachable (JSON for the API)."""
    if is_api_path(request.path):
        response: HttpResponse = JsonResponse(error_body(UNAVAILABLE_MESSAGE), status=503)
    else:
        response = HttpResponse(
            "costmon cannot reach its database right now. Reload in a few seconds.\n",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def internal_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body(INTERNAL_ERROR_MESSAGE), status=500)


class ApiErrorMiddleware:
    """Errors no view answered: a database that is unreachable answers 503 with Retry-After
    everywhere (a restart or fail-over is not a bug; clients retry), and any other exception
    under the API answers 500 in the API's JSON error shape instead of an HTML page. Exceptions
    raised outside views get the same answers from `costmon.core.views.server_error`."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, UNAVAILABLE_ERRORS):
            log.warning(
                "database_unavailable",
                path=request.path,
                error=f"{exception.__class__.__name__}: {exception}",
            )
            return unavailable(request)
        if not is_api_path(request.path):
            return None  # Django's own 500 page, logged as usual
        # As Django does for an uncaught exception: error reporting and the test client hear
        # of it, and the log has the traceback.
        signals.got_request_exception.send(sender=None, request=request)
        logger.error(
            "Internal Server Error: %s",
            request.path,
            exc_info=exception,
            extra={"request": request},
        )
        response = internal_error(request)
        response._has_been_logged = True  # type: ignore[attr-defined]
        return response
