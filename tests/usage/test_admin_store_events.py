"""Staff's list of one tenant's events in the event store, and deleting chosen ones, on each
store (`store`: PostgreSQL, ClickHouse one node, two shards): `usage.admin.storeevents`. The
outsider holds an event of the same id and time as acme's, and never shows nor changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import time_machine

from costmon.core.tenancy import unscoped
from tests.factories import UserFactory
from tests.helpers import event, post_usage, stored_events
from tests.usage.test_rewrites_in_stores import assert_rollups_equal_events
from usage.admin import storeevents

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
URL = "/admin/usage/usageevent/store/"
AT = datetime(2026, 11, 20, 10, 15, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _frozen_clock():
    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        yield


@pytest.fixture
def events(store, acme, outsider, ingest_client, outsider_client, monkeypatch):
    """acme: three events (newest last sent, one an error); globex: one of the same id and
    time as acme's `a-1`. Two a page."""
    ours = [
        event(event_id="a-1"),
        event(event_id="a-2", occurred_at="2026-11-20T10:20:00.250000Z", status="error"),
        event(event_id="a-3", occurred_at="2026-11-20T11:00:00Z", end_user="user-2"),
    ]
    assert post_usage(ingest_client, ours).status_code == 201
    assert post_usage(outsider_client, event(event_id="a-1")).status_code == 201
    monkeypatch.setattr(storeevents, "PER_PAGE", 2)
    return store


def ids(response) -> list[str]:
    return [row["event"].event_id for row in response.context["rows"]]


def test_staff_page_and_filter_one_tenants_events_in_the_store(admin_client, events, outsider):
    first = admin_client.get(URL, {"tenant": "acme"})

    assert first.status_code == 200
    assert ids(first) == ["a-3", "a-2"]
    assert '<td class="field-cost">0.00135</td>' in first.content.decode()
    second = admin_client.get(first.context["next_url"])
    assert (ids(second), second.context["next_url"]) == (["a-1"], None)
    assert (
        admin_client.get(URL, {"tenant": "acme", "status": "error"}).context["rows"][0]["status"]
        == "error"
    )
    assert ids(admin_client.get(URL, {"tenant": "acme", "end_user": "user-2"})) == ["a-3"]
    assert ids(admin_client.get(URL, {"tenant": "acme", "end_user": "nobody"})) == []
    assert ids(admin_client.get(URL, {"tenant": "acme", "event_id": "a-2"})) == ["a-2"]
    theirs = admin_client.get(URL, {"tenant": outsider.slug})
    assert [row["event"].tenant_id for row in theirs.context["rows"]] == [outsider.pk]
    # With ClickHouse the usual list (PostgreSQL's empty table) sends staff here.
    usual = admin_client.get("/admin/usage/usageevent/")
    if events.name == "postgres":
        assert usual.status_code == 200
    else:
        assert (usual.status_code, usual["Location"]) == (302, URL)


def test_deleting_chosen_events_rebuilds_rollups_and_leaves_the_outsider(
    admin_client, events, acme, outsider
):
    keys = [f"{AT.isoformat()}|a-1", "2026-11-20T10:20:00.250000+00:00|a-2"]

    asked = admin_client.post(URL, {"tenant": "acme", "key": keys, "delete": "1"})

    assert asked.status_code == 200 and asked.context["confirm"]
    assert len(stored_events(acme)) == 3
    done = admin_client.post(URL, {"tenant": "acme", "key": keys, "confirm": "1"})
    assert (done.status_code, done["Location"]) == (302, f"{URL}?tenant=acme")
    assert [e.event_id for e in stored_events(acme)] == ["a-3"]
    assert [e.event_id for e in stored_events(outsider)] == ["a-1"]
    assert_rollups_equal_events(acme)
    assert_rollups_equal_events(outsider)
    # Deleting them again finds nothing; the list shows what remains.
    again = admin_client.post(URL, {"tenant": "acme", "key": keys, "confirm": "1"}, follow=True)
    assert "Deleted 0 events of acme" in again.content.decode()
    assert ids(again) == ["a-3"]


BAD_QUERIES = [
    ({"tenant": "nobody"}, 400),
    ({"tenant": "acme", "cursor": "not-a-cursor"}, 400),
    ({"tenant": "acme", "cursor": "Y2h8OTk5OTk5OTk5OTl8MHx4"}, 400),  # year 33658
    ({"tenant": "acme", "status": "maybe"}, 400),
    ({"tenant": "acme", "provider": "open\x00ai"}, 400),
    ({"tenant": "acme", "event_id": "x" * 500}, 400),
    ({"tenant": "acme", "event_id": "nope"}, 200),
    ({}, 200),  # the empty form
]
BAD_KEYS = [
    ["2026-11-20T10:15:00|a-1"],  # no time zone
    ["yesterday|a-1"],
    ["1900-01-01T00:00:00+00:00|a-1"],
    ["a-1"],
    [f"{AT.isoformat()}|"],
]


def test_any_input_is_answered_without_a_500_and_changes_nothing(admin_client, events, acme):
    for params, status in BAD_QUERIES:
        response = admin_client.get(URL, params)
        assert (response.status_code, ids(response)) == (status, []), params
    for keys in BAD_KEYS:
        response = admin_client.post(URL, {"tenant": "acme", "key": keys, "confirm": "1"})
        assert response.status_code == 400, keys
    nothing = admin_client.post(URL, {"tenant": "acme", "confirm": "1"})
    assert (nothing.status_code, nothing["Location"]) == (302, f"{URL}?tenant=acme")
    for tenant in ("nobody", "ac\x00me", "x" * 500):
        assert admin_client.post(URL, {"tenant": tenant, "key": BAD_KEYS[0]}).status_code == 400
    assert len(stored_events(acme)) == 3


def test_only_superusers_delete_and_only_staff_see(client, events, acme):
    staff = UserFactory(username="dora", is_staff=True)
    with unscoped():
        from django.contrib.auth.models import Permission

        staff.user_permissions.set(Permission.objects.filter(codename="view_usageevent"))
    client.force_login(staff)

    assert client.get(URL, {"tenant": "acme"}).status_code == 200
    key = f"{AT.isoformat()}|a-1"
    assert client.post(URL, {"tenant": "acme", "key": key, "confirm": "1"}).status_code == 403
    assert len(stored_events(acme)) == 3
    staff.user_permissions.clear()
    assert client.get(URL, {"tenant": "acme"}).status_code == 403


def test_the_hourly_rollups_page_says_where_a_store_keeps_them(admin_client, events):
    page = admin_client.get("/admin/usage/hourlyrollup/", follow=True)
    assert page.status_code == 200
    said = [str(m) for m in page.context["messages"]]
    if events.keeps_user_rollups:
        assert len(said) == 1
        assert "kept in ClickHouse, not in this table" in said[0]
        assert "0.00135" not in page.content.decode()  # nothing listed: PostgreSQL keeps none
    else:
        assert said == []
        assert "0.00135" in page.content.decode()
