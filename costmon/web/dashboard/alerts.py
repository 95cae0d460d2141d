"""Acknowledging alerts from the overview: the open alerts with a button each (a POST form with
CSRF), allowed to the roles the API's acknowledge allows (its `admin` scope: admins and owners).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from alerts.models import Alert
from alerts.services import alert_acknowledge
from costmon.core.models import ApiKey, Tenant
from costmon.core.periods import tenant_zone
from costmon.core.scoping import user_scopes
from costmon.core.tenancy import tenant_context
from costmon.web.dashboard.statements import member_tenant_or_404
from usage.links import tenant_url

OPEN_ALERTS = 10
ANCHOR = "#open-alerts"


def can_acknowledge(user: Any, tenant: Tenant) -> bool:
    """As `POST /api/v1/alerts/<id>/acknowledge/` decides for a logged-in member."""
    return ApiKey.Scope.ADMIN in user_scopes(user, tenant)


def acknowledge_url(slug: str, alert_id: int) -> str:
    return f"{tenant_url(slug)}alerts/{int(alert_id)}/acknowledge/"


def open_alerts(request: HttpRequest, tenant: Tenant) -> dict[str, Any]:
    """The newest firing alerts nobody acknowledged yet, for the overview's panel."""
    alerts = (
        Alert.objects.for_tenant(tenant)
        .filter(status=Alert.Status.FIRING, acknowledged_at__isnull=True)
        .order_by("-first_seen_at", "-pk")[:OPEN_ALERTS]
    )
    tz = tenant_zone(tenant)
    return {
        "can_acknowledge": can_acknowledge(request.user, tenant),
        "next": request.get_full_path(),
        "alerts": [
            {
                "id": a.pk,
                "title": a.title,
                "severity": a.severity,
                "figure": a.figure,
                "first_seen": f"{a.first_seen_at.astimezone(tz):%Y-%m-%d %H:%M}",
                "link": a.link,
                "ack_url": acknowledge_url(tenant.slug, a.pk),
            }
            for a in alerts
        ],
    }


def _plain(message: str, status: int) -> HttpResponse:
    return HttpResponse(f"{message}\n", status=status, content_type="text/plain; charset=utf-8")


@login_required
@require_POST
def acknowledge(request: HttpRequest, slug: str, alert_id: int) -> HttpResponse:
    tenant, _ = member_tenant_or_404(request, slug)
    with tenant_context(tenant):
        alert = Alert.objects.for_tenant(tenant).filter(pk=alert_id).first()
        if alert is None:
            raise Http404("No such alert in this tenant.")
        if not can_acknowledge(request.user, tenant):
            return _plain(
                f"Your role in {tenant.slug} may not acknowledge alerts; an admin or owner can.",
                403,
            )
        alert_acknowledge(alert=alert, user=request.user)
    back = request.POST.get("next", "")
    if not back or not url_has_allowed_host_and_scheme(
        back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        back = tenant_url(tenant.slug)
    return HttpResponseRedirect(f"{back.split('#')[0]}{ANCHOR}")
