"""A tag budget's burn-down on the budget page: its spend per local day, read from the events in
whichever store keeps them (PostgreSQL, ClickHouse, two ClickHouse shards), with an outsider
whose spend on the same tag never shows.

Every event is claude-haiku-4-5, 450 in / 180 out: $0.00135. acme's zone is Europe/Paris.
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

import pytest
import time_machine

from budgets.services import budget_create
from costmon.core.models import Tenant
from tests.helpers import event, post_usage

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "unscoped")]
SEARCH = {"team": "search"}


@pytest.fixture(autouse=True)
def _frozen_clock() -> Any:
    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        yield


@pytest.fixture
def member(client: Any, viewer: Any) -> Any:
    client.force_login(viewer)
    return client


def days_of(client: Any, url: str) -> list[list[str]]:
    response = client.get(url)
    assert response.status_code == 200, response.content[:300]
    return list(csv.reader(io.StringIO(response.content.decode())))


def test_a_tag_budgets_burn_down_sums_each_local_day_from_the_event_store(
    store, member, acme: Tenant, outsider: Tenant, ingest_client, outsider_client
):
    Tenant.objects.filter(pk=acme.pk).update(timezone="Europe/Paris")
    budget = budget_create(
        tenant=acme,
        data={
            "name": "Search",
            "scope": "tag",
            "scope_value": "team=search",
            "limit_usd": Decimal("0.006"),
        },
    )
    ours = [
        event(event_id="a", occurred_at="2026-11-02T08:00:00Z", tags=SEARCH),
        # 23:30 UTC on the 15th is 00:30 on the 16th in Paris.
        event(event_id="b", occurred_at="2026-11-15T23:30:00Z", tags=SEARCH),
        event(event_id="c", occurred_at="2026-11-21T09:00:00Z", tags=SEARCH),
        event(event_id="d", occurred_at="2026-11-21T10:00:00Z", tags=SEARCH),
        event(event_id="ops", occurred_at="2026-11-21T10:00:00Z", tags={"team": "ops"}),
        event(event_id="none", occurred_at="2026-11-21T10:00:00Z"),
    ]
    assert post_usage(ingest_client, ours).status_code == 201
    theirs = [
        event(event_id=f"g{i}", occurred_at="2026-11-21T09:00:00Z", tags=SEARCH) for i in range(4)
    ]
    assert post_usage(outsider_client, theirs).status_code == 201

    days = days_of(member, f"/t/acme/budgets/{budget.pk}/?export=days")
    assert days[0] == ["day", "spent_usd", "cumulative_usd", "remaining_usd"]
    spent = {row[0]: row[1] for row in days[1:] if row[1] != "0"}
    assert spent == {"2026-11-02": "0.00135", "2026-11-16": "0.00135", "2026-11-21": "0.0027"}
    assert days[-1] == ["2026-11-21", "0.0027", "0.0054", "0.0006"]
