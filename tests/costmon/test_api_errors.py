"""API errors in one JSON shape (README, "Errors"): refusals, unknown URLs, bugs (500) and a
database that cannot be reached (503 with Retry-After); and JSON posts from the dashboard's own
pages with the session and its CSRF token."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import OperationalError, connection
from django.test import Client, RequestFactory

from costmon.core.exceptions import INTERNAL_ERROR_MESSAGE, UNAVAILABLE_MESSAGE
from costmon.core.views import server_error
from tests.helpers import event
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db


def shape(message: str, field: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"detail": message}
    if field:
        body["field"] = field
    body["errors"] = [{"field": field, "message": message}]
    return body


def test_an_unknown_api_url_is_a_json_404(read_client):
    response = read_client.get("/api/v1/nothing-here/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == shape("No API endpoint at /api/v1/nothing-here/; see /api/docs/.")


def test_a_host_not_allowed_is_a_json_400_under_the_api(client, settings):
    response = client.get("/api/v1/metrics/", HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json() == shape(
        "The Host header names no host this costmon serves (ALLOWED_HOSTS)."
    )


def test_refusals_of_authentication_and_method_share_the_shape(client, read_client, acme):
    response = client.get("/api/v1/metrics/")
    assert response.status_code == 401
    assert response.json() == shape("Authentication credentials were not provided.")
    response = read_client.put("/api/v1/metrics/", {}, format="json")
    assert response.status_code == 405
    assert response.json() == shape('Method "PUT" not allowed.')
    response = read_client.post("/api/v1/budgets/", {}, format="json")
    assert response.status_code == 403
    assert response.json()["errors"] == [
        {
            "field": None,
            "message": "This API key lacks the 'admin' scope. Create a key with "
            "`--scopes admin` for this call.",
        }
    ]


def test_a_refused_body_lists_each_field_and_keeps_its_old_keys(admin_client_key):
    response = admin_client_key.post(
        "/api/v1/budgets/", {"limit_usd": "x", "period": "year"}, format="json"
    )
    assert response.status_code == 400
    data = response.json()
    assert data["name"] == ["This field is required."]  # as before
    assert sorted(data["errors"], key=lambda e: e["field"]) == [
        {"field": "limit_usd", "message": 'Must be a decimal number, e.g. "10.50".'},
        {"field": "name", "message": "This field is required."},
        {"field": "period", "message": '"year" is not a valid choice.'},
    ]
    assert data["detail"].endswith("(and 2 more)")


def test_a_bug_answers_500_in_the_json_shape_and_is_logged(read_client, monkeypatch, caplog):
    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("usage.api.usage_metrics", broken)
    read_client.raise_request_exception = False
    response = read_client.get("/api/v1/metrics/")
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json() == shape(INTERNAL_ERROR_MESSAGE)
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert record.exc_info and record.exc_info[0] is RuntimeError


def test_a_bug_still_reaches_the_test_clients_traceback(read_client, monkeypatch):
    monkeypatch.setattr("usage.api.usage_metrics", lambda **kw: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        read_client.get("/api/v1/metrics/")


# --- the database away -------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Database:
    """Takes the database away (a PostgreSQL port nothing listens on; on SQLite, a file in a
    folder that does not exist) and brings it back, as a restart would."""

    def __init__(self) -> None:
        self.saved = dict(connection.settings_dict)

    def away(self) -> None:
        connection.close()
        if connection.vendor == "postgresql":
            connection.settings_dict["PORT"] = str(_closed_port())
        else:
            connection.settings_dict["NAME"] = "/nonexistent-costmon-dir/db.sqlite3"

    def back(self) -> None:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(self.saved)


@pytest.fixture
def database(transactional_db: None) -> Iterator[Database]:
    db = Database()
    try:
        yield db
    finally:
        db.back()


@pytest.mark.usefixtures("prices", "in_acme")
def test_the_api_answers_503_with_retry_after_while_the_database_is_away(
    acme, ingest_client, read_client, database
):
    database.away()
    for response in (
        read_client.get("/api/v1/metrics/"),
        ingest_client.post("/api/v1/usage/", event(), format="json"),
        ingest_client.post("/api/v1/check/", {"model": "gpt-4o"}, format="json"),
    ):
        assert response.status_code == 503, response.content
        assert response["Retry-After"] == "5"
        assert response["Content-Type"] == "application/json"
        assert response.json() == shape(UNAVAILABLE_MESSAGE)
    database.back()  # as after a restart: the same client's retry is stored
    assert ingest_client.post("/api/v1/usage/", event(), format="json").status_code == 201
    assert UsageEvent.objects.for_tenant(acme).count() == 1


def test_the_dashboard_answers_503_with_retry_after_while_the_database_is_away(
    client, owner, database
):
    client.force_login(owner)
    database.away()  # the session is read from the database
    response = client.get("/t/acme/")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert b"cannot reach its database" in response.content


def test_an_outage_outside_any_view_is_a_503_too():
    request = RequestFactory().get("/api/v1/usage/")
    try:
        raise OperationalError("server closed the connection unexpectedly")
    except OperationalError:
        response = server_error(request)
    assert (response.status_code, response["Retry-After"]) == (503, "5")
    try:
        raise RuntimeError("bug in a middleware")
    except RuntimeError:
        response = server_error(request)
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"


# --- JSON from the dashboard's own pages --------------------------------------------------


@pytest.fixture
def browser(owner: Any) -> Client:
    """A logged-in member's browser: CSRF enforced as it is for real browsers."""
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)
    assert browser.get("/t/acme/").status_code == 200  # sets the csrftoken cookie
    return browser


@pytest.mark.usefixtures("prices", "in_acme")
def test_a_member_posts_usage_and_checks_as_json_with_the_csrf_token(browser, acme):
    token = browser.cookies["csrftoken"].value
    headers = {"HTTP_X_CSRFTOKEN": token, "HTTP_ORIGIN": "http://testserver"}
    response = browser.post("/api/v1/usage/", event(), content_type="application/json", **headers)
    assert response.status_code == 201, response.content
    assert UsageEvent.objects.for_tenant(acme).count() == 1
    response = browser.post(
        "/api/v1/check/", {"model": "gpt-4o"}, content_type="application/json", **headers
    )
    assert response.status_code == 200, response.content
    assert response.json()["allowed"] is True
    response = browser.post(
        "/api/v1/budgets/",
        {"name": "From the page", "limit_usd": "5"},
        content_type="application/json",
        **headers,
    )
    assert response.status_code == 201, response.content


@pytest.mark.usefixtures("prices", "in_acme")
@pytest.mark.parametrize(
    "headers",
    [{}, {"HTTP_ORIGIN": "http://evil.example"}],
    ids=["no token", "another origin"],
)
def test_a_post_without_the_token_or_from_another_origin_is_refused(browser, acme, headers):
    if headers:
        headers = {**headers, "HTTP_X_CSRFTOKEN": browser.cookies["csrftoken"].value}
    for path, body in (("/api/v1/usage/", event()), ("/api/v1/check/", {"model": "gpt-4o"})):
        response = browser.post(path, body, content_type="application/json", **headers)
        assert response.status_code == 403, response.content
        assert response.json()["detail"].startswith("CSRF Failed")
    assert UsageEvent.objects.for_tenant(acme).count() == 0
