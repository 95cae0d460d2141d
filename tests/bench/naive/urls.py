from django.http import HttpRequest, HttpResponse
from django.urls import path

from tests.bench.naive.views import NaiveUsageView


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")  # what tests/bench/run.py waits for before it starts


urlpatterns = [path("healthz", healthz), path("api/v1/usage/", NaiveUsageView.as_view())]
