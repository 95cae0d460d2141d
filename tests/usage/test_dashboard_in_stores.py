"""The dashboard's pages filtered by a tag, or by an end user and a tag, sum the events in
whichever store keeps them (PostgreSQL, ClickHouse, two ClickHouse shards): the same exact
figures on each, and an outsider whose events carry the same names and tags shows nowhere.

acme (Asia/Kolkata, UTC+5:30), the last 7 days to Saturday 21 November 2026:
    a1 20 Nov 10:00Z (15:30 Fri)  haiku        ann  chat       team=search            $0.00135
    a2 21 Nov 09:00Z (14:30 Sat)  gpt-4o-mini  ann  chat       team=search env=prod   $0.00045
    a3 19 Nov 10:00Z (15:30 Thu)  haiku        bob  summarize  team=search            $0.00135
    a4 20 Nov 11:00Z              haiku        ann  chat       team=ops               $0.00135
    a5 20 Nov 11:00Z              haiku        ann  chat       (no tag)               $0.00135
team=search: 3 calls, $0.00315; ann's: 2 calls, $0.0018.
globex (the outsider): three haiku calls by ann tagged team=search env=prod, $0.00405.
"""

from __future__ import annotations

from typing import Any

import pytest
import time_machine

from costmon.core.models import Tenant
from costmon.core.periods import recent_range
from costmon.web.dashboard.pages import spend_heatmap, spend_per_bucket
from tests.helpers import event, post_usage
from tests.usage.test_dashboard import card, csv_rows, page
from usage.event_sums import has_events
from usage.selectors import UsageFilters

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
HEADER = ["name", "cost_usd", "calls", "avg_cost_usd", "errors", "cache_hits"]
SEARCH = ("team", "search")


@pytest.fixture(autouse=True)
def _frozen_clock() -> Any:
    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        yield


@pytest.fixture
def member(client: Any, viewer: Any) -> Any:
    client.force_login(viewer)
    return client


@pytest.fixture
def usage(store: Any, acme: Tenant, ingest_client: Any, outsider_client: Any) -> None:
    Tenant.objects.filter(pk=acme.pk).update(timezone="Asia/Kolkata")
    acme.refresh_from_db()
    search = {"team": "search"}
    ours = [
        event(event_id="a1", occurred_at="2026-11-20T10:00:00Z", end_user="ann", tags=search),
        event(
            event_id="a2",
            occurred_at="2026-11-21T09:00:00Z",
            end_user="ann",
            provider="openai",
            model="gpt-4o-mini",
            input_tokens=1000,
            output_tokens=500,
            tags={**search, "env": "prod"},
        ),
        event(
            event_id="a3",
            occurred_at="2026-11-19T10:00:00Z",
            end_user="bob",
            operation="summarize",
            tags=search,
        ),
        event(
            event_id="a4", occurred_at="2026-11-20T11:00:00Z", end_user="ann", tags={"team": "ops"}
        ),
        event(event_id="a5", occurred_at="2026-11-20T11:00:00Z", end_user="ann"),
    ]
    assert post_usage(ingest_client, ours).status_code == 201
    theirs = [
        event(event_id=f"g{i}", end_user="ann", tags={**search, "env": "prod"}) for i in range(3)
    ]
    assert post_usage(outsider_client, theirs).status_code == 201


def test_a_tag_filtered_overview_sums_the_stores_events(member, usage):
    html = page(member, "/t/acme/?period=7d&tag=team:search")
    assert (card(html, "period"), card(html, "calls")) == ("$0.00315", "3")
    assert csv_rows(member, "/t/acme/?period=7d&tag=team:search&export=end_users") == [
        HEADER,
        ["ann", "0.0018", "2", "0.0009", "0", "0"],
        ["bob", "0.00135", "1", "0.00135", "0", "0"],
    ]
    assert csv_rows(member, "/t/acme/?period=7d&tag=team:search&export=models") == [
        HEADER,
        ["claude-haiku-4-5", "0.0027", "2", "0.00135", "0", "0"],
        ["gpt-4o-mini", "0.00045", "1", "0.00045", "0", "0"],
    ]
    # A model filter counts the model's family, through the events too.
    narrowed = page(member, "/t/acme/?period=7d&tag=team:search&model=claude-haiku-4-5")
    assert (card(narrowed, "period"), card(narrowed, "calls")) == ("$0.0027", "2")


def test_an_end_user_and_tag_filter_sums_the_stores_events(member, usage):
    html = page(member, "/t/acme/?period=7d&tag=team:search&end_user=ann")
    assert (card(html, "period"), card(html, "calls")) == ("$0.0018", "2")
    assert csv_rows(member, "/t/acme/users/ann/?period=7d&tag=team:search&export=models") == [
        HEADER,
        ["claude-haiku-4-5", "0.00135", "1", "0.00135", "0", "0"],
        ["gpt-4o-mini", "0.00045", "1", "0.00045", "0", "0"],
    ]
    # Stacked by another tag: its values from the events, the rest of ann's searches apart.
    assert csv_rows(
        member, "/t/acme/?period=7d&tag=team:search&end_user=ann&by=tag:env&export=tag"
    ) == [
        HEADER,
        ["", "0.00135", "1", "0.00135", "0", "0"],
        ["prod", "0.00045", "1", "0.00045", "0", "0"],
    ]


def test_the_tag_filtered_charts_sum_per_local_day_and_hour(usage, acme, unscoped):
    span = recent_range(tenant=acme, period="7d")
    filters = UsageFilters(tag=SEARCH)
    days, spend = spend_per_bucket(
        tenant=acme, time_range=span, filters=filters, interval="day", families=True
    )
    assert {d.day: s for d, s in zip(days, spend, strict=True) if s} == {
        19: 1_350_000,
        20: 1_350_000,
        21: 450_000,
    }
    matrix = spend_heatmap(tenant=acme, time_range=span, filters=filters, families=True)
    # Monday first: Thursday and Friday at 15:00, Saturday at 14:00 in Kolkata.
    assert {(d, h): v for d, row in enumerate(matrix) for h, v in enumerate(row) if v} == {
        (3, 15): 1_350_000,
        (4, 15): 1_350_000,
        (5, 14): 450_000,
    }


def test_has_events_asks_the_store(store, acme, outsider, ingest_client, unscoped):
    assert not has_events(tenant=acme)
    assert post_usage(ingest_client, [event(event_id="x1")]).status_code == 201
    assert (has_events(tenant=acme), has_events(tenant=outsider)) == (True, False)
