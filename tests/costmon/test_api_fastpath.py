"""POST /api/v1/usage/ and POST /api/v1/check/ before the middleware stack (costmon.web.fastpath):
the same replies as Django's whole stack gives, headers included; whatever the hot path does not
answer goes to Django with its body intact."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import OperationalError, close_old_connections
from django.test import RequestFactory

from budgets import counters
from budgets.services import budget_create
from costmon.core import instruments
from costmon.core.services import api_key_create
from costmon.web.fastpath import ApiFastPath
from tests.helpers import event
from usage import grouping
from usage.models import UsageEvent

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "unscoped")]


class Recorded:
    """The WSGI application behind the fast path, counting the requests it gets."""

    def __init__(self) -> None:
        self.handler = WSGIHandler()
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.calls += 1
        return self.handler(environ, start_response)


@pytest.fixture
def django_app():
    # As Django's test client does: the request signals must not close the test's connection.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield Recorded()
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


def send(
    app: Any, body: Any, *, secret: str | None, path: str = "/api/v1/usage/", **extra: str
) -> tuple[int, dict, bytes]:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if secret else {}
    request = RequestFactory().post(
        path,
        data=body if isinstance(body, str) else json.dumps(body),
        content_type="application/json",
        **headers,
        **extra,
    )
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer["status"] = int(status.split()[0])
        answer["headers"] = dict(headers)

    content = b"".join(app(request.environ, start_response))
    return answer["status"], answer["headers"], content


def secrets(tenant: Any) -> dict[str | None, str | None]:
    """The secrets the error cases send: an ingest key, a read key, an unknown one, none."""
    return {
        "key": api_key_create(tenant=tenant, scopes="ingest").secret,
        "read": api_key_create(tenant=tenant, scopes="read").secret,
        "wrong": "cm_live_notakey",
        None: None,
    }


def same_reply(a: tuple[int, dict, bytes], b: tuple[int, dict, bytes]) -> None:
    assert a[0] == b[0]
    assert a[2] == b[2]
    assert a[1].keys() == b[1].keys()
    assert {k: v for k, v in a[1].items() if k != "Server-Timing"} == {
        k: v for k, v in b[1].items() if k != "Server-Timing"
    }
    assert a[1]["Server-Timing"].startswith("app;dur=")


def test_a_report_is_answered_before_the_middleware_as_django_answers_it(
    django_app, acme, outsider
):
    batch = [event(event_id="a"), event(event_id="b", cost_usd="0.25"), event(event_id="a")]
    fast = send(
        ApiFastPath(django_app),
        batch,
        secret=api_key_create(tenant=acme, scopes="ingest").secret,
    )
    assert django_app.calls == 0
    whole = send(django_app, batch, secret=api_key_create(tenant=outsider, scopes="ingest").secret)
    assert fast[0] == 201
    same_reply(fast, whole)
    assert fast[1]["X-Frame-Options"] == "DENY"
    assert fast[1]["X-Content-Type-Options"] == "nosniff"
    # Each tenant has its own two events: the fast path acted for the key's tenant only.
    for tenant in (acme, outsider):
        ids = UsageEvent.objects.for_tenant(tenant).order_by("event_id")
        assert list(ids.values_list("event_id", flat=True)) == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "secret", "extra"),
    [
        ([event(input_tokens=-1)], "key", {}),  # invalid: 400 with the errors list
        ("[{", "key", {}),  # malformed JSON
        ([event()], None, {}),  # no key: 401
        ([event()], "wrong", {}),  # unknown key
        ([event()], "read", {}),  # a key without the ingest scope: 403
        ([event()], "key", {"HTTP_ACCEPT": "text/html"}),  # DRF's content negotiation
    ],
)
def test_anything_else_is_answered_by_django_with_its_body(
    django_app, acme, outsider, body, secret, extra
):
    keys = secrets(acme)
    fast = send(ApiFastPath(django_app), body, secret=keys[secret], **extra)
    assert django_app.calls == 1
    whole = send(django_app, body, secret=keys[secret], **extra)
    assert fast[0] == whole[0] and fast[0] in (201, 400, 401, 403, 406)
    assert fast[2] == whole[2]  # the same error, worded the same (or the same events stored)
    assert UsageEvent.objects.for_tenant(outsider).count() == 0


@pytest.mark.parametrize(
    ("error", "status"),
    [(OperationalError("server closed the connection"), 503), (RuntimeError("bug"), 500)],
)
def test_a_failure_while_storing_gets_the_apis_error_shape(
    django_app, acme, monkeypatch, error, status
):
    def fail(**kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(grouping, "usage_record_batch", fail)
    secret = api_key_create(tenant=acme, scopes="ingest").secret
    code, headers, content = send(ApiFastPath(django_app), [event()], secret=secret)
    assert django_app.calls == 0
    assert code == status
    assert json.loads(content)["errors"][0]["message"]
    assert headers["Content-Type"] == "application/json"
    if status == 503:
        assert headers["Retry-After"]


CHECK = "/api/v1/check/"
A_CHECK = {
    "end_user": "user-1",
    "provider": "openai",
    "model": "gpt-4o",
    "estimated_input_tokens": 4000,
}


def checks_observed() -> float:
    return sum(
        s.value
        for m in instruments.CHECK_SECONDS.collect()
        for s in m.samples
        if s.name.endswith("_count")
    )


def test_a_check_is_answered_before_the_middleware_as_django_answers_it(django_app, acme, outsider):
    """The same bytes and headers as Django's whole stack, a warning included; timed in the
    check's histogram; and for the key's tenant only (the outsider, with no budget, is
    allowed without a warning)."""
    budget_create(tenant=acme, data={"name": "soft", "limit_usd": "0.000001"})
    for tenant in (acme, outsider):  # replies from the counters, as after their first rebuild
        counters.counters_reconcile(tenant=tenant)
    secret = api_key_create(tenant=acme, scopes="ingest").secret
    observed = checks_observed()
    fast = send(ApiFastPath(django_app), A_CHECK, secret=secret, path=CHECK)
    assert django_app.calls == 0
    assert checks_observed() == observed + 1
    whole = send(django_app, A_CHECK, secret=secret, path=CHECK)
    assert fast[0] == 200
    same_reply(fast, whole)
    assert fast[1]["X-Content-Type-Options"] == "nosniff"
    assert json.loads(fast[2])["warnings"][0]["code"] == "soft_budget_would_exceed"
    other = send(
        ApiFastPath(django_app),
        A_CHECK,
        secret=api_key_create(tenant=outsider, scopes="ingest").secret,
        path=CHECK,
    )
    assert other[0] == 200
    assert json.loads(other[2])["warnings"] == json.loads(other[2])["budgets"] == []


@pytest.mark.parametrize(
    ("body", "secret", "extra"),
    [
        ({"model": "gpt-4o", "estimated_input_tokens": -1}, "key", {}),  # invalid: 400
        ("{nope", "key", {}),  # malformed JSON
        (A_CHECK, None, {}),  # no key: 401
        (A_CHECK, "wrong", {}),  # unknown key
        (A_CHECK, "read", {}),  # a key without the ingest scope: 403
        (A_CHECK, "key", {"HTTP_ACCEPT": "text/html"}),  # DRF's content negotiation: 406
    ],
)
def test_any_other_check_is_answered_by_django_with_its_body(django_app, acme, body, secret, extra):
    keys = secrets(acme)
    fast = send(ApiFastPath(django_app), body, secret=keys[secret], path=CHECK, **extra)
    assert django_app.calls == 1
    whole = send(django_app, body, secret=keys[secret], path=CHECK, **extra)
    assert fast[0] == whole[0] and fast[0] in (400, 401, 403, 406)
    assert fast[2] == whole[2]  # the same error, worded the same
