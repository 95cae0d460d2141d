from __future__ import annotations

import time
from collections.abc import Callable

from django.db import connection
from django.http import HttpRequest, HttpResponse

from costmon.tenancy import forget_rls_state, no_tenant, unscoped


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
