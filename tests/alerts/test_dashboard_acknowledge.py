"""Acknowledging alerts from the overview: a POST form with CSRF, allowed to the roles the API's
acknowledge allows (admin scope: owners and admins); a viewer is refused, an outsider gets 404
for acme's tenant and for acme's alert id in its own."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from django.test import Client

from alerts.models import Alert, AlertRule
from costmon.core import tenancy
from costmon.core.models import Tenant
from tests.helpers import event, post_usage

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _frozen_clock() -> Any:
    with time_machine.travel(NOW, tick=False):
        yield


def make_alert(tenant: Tenant, title: str) -> Alert:
    with tenancy.unscoped():
        rule = AlertRule.objects.create(tenant=tenant, name="spend", kind="spend")
        return Alert.objects.create(
            tenant=tenant,
            rule=rule,
            scope="tenant",
            period="20261121",
            level="above",
            severity="warning",
            title=title,
            text=title,
            figure="$0.0027",
        )


@pytest.fixture
def alerts(acme: Tenant, outsider: Tenant, ingest_client: Any) -> tuple[Alert, Alert]:
    assert post_usage(ingest_client, event(occurred_at="2026-11-21T11:00:00Z")).status_code == 201
    return make_alert(acme, "Spend today is above $0.002"), make_alert(outsider, "Globex secret")


def logged_in(user: Any) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def csrf_token(page: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, "no CSRF token on the page"
    return match[1]


def acknowledged(alert: Alert) -> tuple[datetime | None, int | None]:
    with tenancy.unscoped():
        alert.refresh_from_db()
    return alert.acknowledged_at, alert.acknowledged_by_id


def test_an_owner_acknowledges_an_alert_from_the_overview(alerts, owner):
    mine, theirs = alerts
    client = logged_in(owner)
    page = client.get("/t/acme/?period=7d").content.decode()
    assert 'id="open-alerts"' in page and "Spend today is above $0.002" in page
    assert f'action="/t/acme/alerts/{mine.pk}/acknowledge/"' in page
    assert "Globex secret" not in page
    response = client.post(
        f"/t/acme/alerts/{mine.pk}/acknowledge/",
        {"csrfmiddlewaretoken": csrf_token(page), "next": "/t/acme/?period=7d"},
    )
    assert response.status_code == 302
    assert response["Location"] == "/t/acme/?period=7d#open-alerts"
    assert acknowledged(mine) == (NOW, owner.pk)
    after = client.get("/t/acme/?period=7d").content.decode()
    assert f"/alerts/{mine.pk}/acknowledge/" not in after
    assert "every firing alert has been acknowledged" in after
    assert acknowledged(theirs) == (None, None)


def test_without_the_csrf_token_nothing_is_acknowledged(alerts, owner):
    mine, _ = alerts
    response = logged_in(owner).post(f"/t/acme/alerts/{mine.pk}/acknowledge/")
    assert response.status_code == 403
    assert acknowledged(mine) == (None, None)


def test_a_viewer_sees_open_alerts_but_may_not_acknowledge_them(alerts, viewer):
    mine, _ = alerts
    client = logged_in(viewer)
    page = client.get("/t/acme/?period=7d").content.decode()
    assert "Spend today is above $0.002" in page
    assert "/acknowledge/" not in page and "Admins and owners can acknowledge alerts." in page
    response = client.post(
        f"/t/acme/alerts/{mine.pk}/acknowledge/", {"csrfmiddlewaretoken": csrf_token(page)}
    )
    assert response.status_code == 403
    assert response.content.decode() == (
        "Your role in acme may not acknowledge alerts; an admin or owner can.\n"
    )
    assert acknowledged(mine) == (None, None)


def test_an_outsider_can_acknowledge_none_of_acmes_alerts(alerts, outsider_user):
    mine, theirs = alerts
    client = logged_in(outsider_user)
    token = csrf_token(client.get("/t/globex/?period=7d").content.decode())
    for path in (
        f"/t/acme/alerts/{mine.pk}/acknowledge/",  # not their tenant
        f"/t/globex/alerts/{mine.pk}/acknowledge/",  # not their alert
    ):
        assert client.post(path, {"csrfmiddlewaretoken": token}).status_code == 404
    assert acknowledged(mine) == (None, None)
    own = client.post(
        f"/t/globex/alerts/{theirs.pk}/acknowledge/",
        {"csrfmiddlewaretoken": token, "next": "https://evil.example/"},
    )
    # An outside `next` is not followed: back to the tenant's overview.
    assert (own.status_code, own["Location"]) == (302, "/t/globex/#open-alerts")
    assert acknowledged(theirs) == (NOW, outsider_user.pk)


def test_acknowledging_takes_a_post(alerts, owner):
    mine, _ = alerts
    assert logged_in(owner).get(f"/t/acme/alerts/{mine.pk}/acknowledge/").status_code == 405
    assert Client().post(f"/t/acme/alerts/{mine.pk}/acknowledge/").status_code in (302, 403)
