from django.contrib import admin
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from costmon.core import health
from costmon.web.dashboard import views as dashboard_views
from costmon.web.prometheus import views as prometheus_views
from usage.otlp_api import OtlpTracesApi

urlpatterns = [
    path("", dashboard_views.dashboard_home, name="home"),
    path("admin/", admin.site.urls),
    path("", include("costmon.web.dashboard.urls")),
    path("api/v1/", include("usage.urls")),
    path("api/v1/", include("budgets.urls")),
    path("api/v1/", include("alerts.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("v1/traces", OtlpTracesApi.as_view(), name="otlp-traces"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", prometheus_views.metrics, name="prometheus-metrics"),
    # Browsers ask for /favicon.ico where a page names no icon (JSON read in a browser).
    path("favicon.ico", lambda request: redirect(static("costmon/favicon.ico")), name="favicon"),
]

# Errors outside any view, and unknown URLs under the API, in the API's JSON error shape.
handler400 = "costmon.core.views.bad_request"
handler403 = "costmon.core.views.permission_denied"
handler404 = "costmon.core.views.not_found"
handler500 = "costmon.core.views.server_error"
