from django.urls import path

from usage import api

urlpatterns = [
    path("usage/", api.UsageApi.as_view(), name="api-usage"),
    path("metrics/", api.MetricsApi.as_view(), name="api-metrics"),
]
