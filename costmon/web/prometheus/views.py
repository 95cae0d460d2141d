"""`GET /metrics`: for Prometheus, with the operator's token (COSTMON_METRICS_TOKEN).

The scrape reads every tenant's figures, so it is not an API-key endpoint: no tenant's key opens
it. Without a token configured the endpoint is off (404), and it never answers without one.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from costmon.web.prometheus.collector import scrape

_TEXT = "text/plain; charset=utf-8"
# The classic text format, which every Prometheus reads (newer prometheus_client versions label
# the same bytes version=1.0.0, which Prometheus 2 does not know).
_EXPOSITION = "text/plain; version=0.0.4; charset=utf-8"


def _authorized(request: HttpRequest, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Constant time: the comparison does not tell how much of a guess was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    token = settings.COSTMON_METRICS_TOKEN
    if not token:
        return HttpResponse(
            "Prometheus metrics are off. Set COSTMON_METRICS_TOKEN (at least 16 characters) "
            "and scrape with Authorization: Bearer <that token>; see docs/prometheus.md.\n",
            status=404,
            content_type=_TEXT,
        )
    if not _authorized(request, token):
        response = HttpResponse(
            "Send Authorization: Bearer <COSTMON_METRICS_TOKEN> to read the metrics.\n",
            status=401,
            content_type=_TEXT,
        )
        response["WWW-Authenticate"] = 'Bearer realm="costmon metrics"'
        return response
    response = HttpResponse(scrape(), content_type=_EXPOSITION)
    response["Cache-Control"] = "no-store"
    return response
