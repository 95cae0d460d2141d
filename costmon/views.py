from __future__ import annotations

import sys

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

from costmon.exceptions import UNAVAILABLE_ERRORS, error_body
from costmon.middleware import internal_error, is_api_path, unavailable
from usage.views import dashboard_home


def home(request: HttpRequest) -> HttpResponse:
    # The dashboard: the first of the user's tenants, or the login page.
    return dashboard_home(request)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: an exception outside any view (in a middleware, say). Django calls this
    while handling it, so the exception is at hand."""
    exception = sys.exc_info()[1]
    if isinstance(exception, UNAVAILABLE_ERRORS):
        return unavailable(request)
    if is_api_path(request.path):
        return internal_error(request)
    return defaults.server_error(request)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler404: an unknown URL under the API answers in the API's JSON error shape."""
    if is_api_path(request.path):
        return JsonResponse(
            error_body(f"No API endpoint at {request.path}; see /api/docs/."), status=404
        )
    return defaults.page_not_found(request, exception)
