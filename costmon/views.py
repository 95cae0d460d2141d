from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from usage.views import dashboard_home


def home(request: HttpRequest) -> HttpResponse:
    # The dashboard: the first of the user's tenants, or the login page.
    return dashboard_home(request)
