"""Error pages Django calls outside any view, in the API's JSON error shape under /api/."""

from __future__ import annotations

import sys

from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

from costmon.core.exceptions import UNAVAILABLE_ERRORS, error_body
from costmon.core.middleware import internal_error, is_api_path, unavailable


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: an exception outside any view (in a middleware, say). Django calls this
    while handling it, so the exception is at hand."""
    exception = sys.exc_info()[1]
    if isinstance(exception, UNAVAILABLE_ERRORS):
        return unavailable(request)
    if is_api_path(request.path):
        return internal_error(request)
    return defaults.server_error(request)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler400: a request Django refuses before any view (a Host not in ALLOWED_HOSTS)."""
    if is_api_path(request.path):
        message = (
            "The Host header names no host this costmon serves (ALLOWED_HOSTS)."
            if isinstance(exception, DisallowedHost)
            else "Bad request."
        )
        return JsonResponse(error_body(message), status=400)
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler403, for API paths in the API's JSON error shape."""
    if is_api_path(request.path):
        return JsonResponse(error_body(str(exception) or "Forbidden."), status=403)
    return defaults.permission_denied(request, exception)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler404: an unknown URL under the API answers in the API's JSON error shape."""
    if is_api_path(request.path):
        return JsonResponse(
            error_body(f"No API endpoint at {request.path}; see /api/docs/."), status=404
        )
    return defaults.page_not_found(request, exception)
