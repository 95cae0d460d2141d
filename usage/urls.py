from django.urls import path

from usage import api

urlpatterns = [
    path("usage/", api.UsageApi.as_view(), name="api-usage"),
    path("usage/<path:event_id>/", api.UsageEventApi.as_view(), name="api-usage-event"),
    path("metrics/", api.MetricsApi.as_view(), name="api-metrics"),
]
