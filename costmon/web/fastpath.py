"""The API's lean WSGI path: POST /api/v1/usage/ and POST /api/v1/check/ before Django's middleware
stack.

Single events and pre-flight checks are the requests costmon serves most, and the middleware
stack (sessions, CSRF, messages, authentication, URL resolution) costs a good part of such a
request while doing nothing for it: of a check's Python time in the workers (py-spy's `--gil`
samples, 4 clients at full speed), Django's handler and middleware were 30%, the check itself
37%. `ApiFastPath` wraps the WSGI application: a POST to either endpoint goes straight to its
view's hot path (`UsageApi._answer_directly`, `CheckApi._answer_directly`: API key, scope,
validation, the work, DRF's reply byte for byte), with what the stack would add done here the
same way: request signals (connection hygiene), no tenant in context until the key names one,
the `Server-Timing` header and the endpoint's Prometheus histogram, the security headers (by
the middleware's own `process_response`), and an uncaught exception answered by
`ApiErrorMiddleware` (503 or the API's 500). Anything the hot path does not answer (no key, a
bad body, another Accept) goes through Django whole, the body handed over as read, so every
error keeps its shape.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.core import signals
from django.core.handlers.wsgi import WSGIRequest
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.security import SecurityMiddleware

from budgets.api.check import CheckApi
from costmon.core import instruments
from costmon.core.middleware import ApiErrorMiddleware
from costmon.core.tenancy import forget_rls_state, no_tenant
from usage.api import UsageApi

# The endpoints answered here: their view (with an `_answer_directly`) and server-time histogram.
ROUTES: dict[str, tuple[type[Any], Any]] = {
    "/api/v1/usage/": (UsageApi, instruments.INGEST_SECONDS),
    "/api/v1/check/": (CheckApi, instruments.CHECK_SECONDS),
}
StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _unused(request: HttpRequest) -> HttpResponse:
    raise AssertionError("only process_response is called")  # pragma: no cover


class ApiFastPath:
    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        # The middleware that touch a report's or a check's response, in the settings' order reversed
        # (the order Django runs process_response in).
        self._responders: list[Any] = [
            XFrameOptionsMiddleware(_unused),
            CommonMiddleware(_unused),
            SecurityMiddleware(_unused),
        ]
        self._errors = ApiErrorMiddleware(_unused)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        route = ROUTES.get(environ.get("PATH_INFO", ""))
        if route is None or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        view_class, histogram = route
        started = time.perf_counter()
        signals.request_started.send(sender=self.__class__, environ=environ)
        try:
            request = WSGIRequest(environ)
            response = self._answer(view_class, request)
        finally:
            signals.request_finished.send(sender=self.__class__)
        if response is None:
            # Django answers, and words any error; the body as read, if it was.
            if hasattr(request, "_body"):
                environ["wsgi.input"] = io.BytesIO(request._body)
                environ["CONTENT_LENGTH"] = str(len(request._body))
            return self.app(environ, start_response)
        if callable(getattr(response, "render", None)):
            response = response.render()  # type: ignore[attr-defined]  # DRF error reply, as Django renders it
        for responder in self._responders:
            response = responder.process_response(request, response)
        elapsed = time.perf_counter() - started
        histogram.labels(code=str(response.status_code)).observe(elapsed)
        response["Server-Timing"] = f"app;dur={elapsed * 1000:.2f}"
        start_response(f"{response.status_code} {response.reason_phrase}", list(response.items()))
        return [response.content]

    def _answer(self, view_class: type[Any], request: WSGIRequest) -> HttpResponse | None:
        # As TenantContextMiddleware: no tenant in context until the key names one.
        forget_rls_state(connection)
        with no_tenant():
            view = view_class()
            view.setup(request)
            try:
                return view._answer_directly(request)
            except Exception as exc:  # noqa: BLE001 - answered as ApiErrorMiddleware does
                return self._errors.process_exception(request, exc)
