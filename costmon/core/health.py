"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET
from django_redis import get_redis_connection


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is the health check
        checks["database"] = f"error: {exc.__class__.__name__}: {exc}"
    if settings.REDIS_URL:
        try:
            get_redis_connection("default").ping()
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["redis"] = f"error: {exc.__class__.__name__}: {exc}"
    else:
        checks["redis"] = "not configured (embedded mode)"
    ready = all(v == "ok" or v.startswith("not configured") for v in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )
