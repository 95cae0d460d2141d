"""One number everywhere: for one period, the overview's cards, tables and recommendations, an
end user's drill-down and the metrics API show the same totals, calls and cache hits, counted in
the tenant's time zone (Tokyo here, with calls minutes either side of its midnights)."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal
from typing import Any

import pytest
import time_machine

from costmon.core import tenancy
from costmon.core.models import Tenant
from tests.helpers import event, post_usage

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]

# Saturday 21 November 2026, 21:00 in Tokyo (UTC+9, no daylight saving).
NOW = "2026-11-21T12:00:00Z"
USERS = ("ann", "bob", "cy")

# (UTC moment, its local day in Tokyo): each pair sits a minute either side of a local midnight
# that bounds a period: the month (1 November), the last 30 days (23 October), today (21st).
MOMENTS = (
    ("2026-10-22T14:59:00Z", "Oct 22"),
    ("2026-10-22T15:01:00Z", "Oct 23"),
    ("2026-10-31T14:59:00Z", "Oct 31"),
    ("2026-10-31T15:01:00Z", "Nov 1"),
    ("2026-11-20T14:59:00Z", "Nov 20"),
    ("2026-11-20T15:01:00Z", "Nov 21"),
)


@pytest.fixture(autouse=True)
def _frozen_clock() -> Any:
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def tokyo(acme: Tenant) -> Tenant:
    with tenancy.unscoped():
        Tenant.objects.filter(pk=acme.pk).update(timezone="Asia/Tokyo")
        acme.refresh_from_db()
    return acme


@pytest.fixture
def usage(tokyo: Tenant, ingest_client: Any, outsider_client: Any) -> None:
    """120 calls (enough for the cache-rate recommendation), spread over the six moments and
    three end users, a third of them cache hits, at exact caller-reported costs."""
    batch = [
        event(
            event_id=f"e{i}",
            occurred_at=MOMENTS[i % len(MOMENTS)][0],
            end_user=USERS[i % len(USERS)],
            operation=("chat", "summarize")[i % 2],
            cost_usd=f"0.00{i + 100}7",
            cache_hit=i % 3 == 0,
        )
        for i in range(120)
    ]
    assert post_usage(ingest_client, batch).status_code == 201
    # The outsider's calls at the same moments must count nowhere in acme's figures.
    theirs = [
        event(event_id=f"o{i}", occurred_at=m, end_user="ann", cost_usd="5", cache_hit=True)
        for i, (m, _) in enumerate(MOMENTS)
    ]
    assert post_usage(outsider_client, theirs).status_code == 201


@pytest.fixture
def member(client: Any, viewer: Any) -> Any:
    client.force_login(viewer)
    return client


def expected(days: set[str], user: str | None = None) -> tuple[Decimal, int, int]:
    """(cost, calls, cache hits) of the generated calls on those local days."""
    cost, calls, hits = Decimal(0), 0, 0
    for i in range(120):
        if MOMENTS[i % len(MOMENTS)][1] in days and user in (None, USERS[i % len(USERS)]):
            cost += Decimal(f"0.00{i + 100}7")
            calls += 1
            hits += i % 3 == 0
    return cost, calls, hits


def html_of(client: Any, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.content[:300]
    return response.content.decode()


def card_figures(html: str) -> tuple[Decimal, int, int]:
    """(period spend exactly, calls, cache hits) from the cards."""
    value = re.search(
        r'id="card-period">.*?<div class="value[^"]*"(?: title="\$([^"]+)")?>\$?([^<]*)<',
        html,
        re.S,
    )
    assert value, "no period card"
    spend = Decimal((value.group(1) or value.group(2)).replace(",", ""))
    calls = re.search(r'id="card-calls">.*?<div class="value[^"]*"[^>]*>([^<]*)<', html, re.S)
    assert calls, "no calls card"
    cache = re.search(
        r'id="card-cache">.*?<div class="note">([\d,]+) of ([\d,]+) calls<', html, re.S
    )
    n_calls = int(calls.group(1).replace(",", ""))
    n_hits = int(cache.group(1).replace(",", "")) if cache else 0
    if cache:
        assert int(cache.group(2).replace(",", "")) == n_calls
    return spend, n_calls, n_hits


def csv_of(client: Any, url: str) -> dict[str, list[str]]:
    response = client.get(url)
    assert response.status_code == 200
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["name", "cost_usd", "calls", "avg_cost_usd", "errors", "cache_hits"]
    return {row[0]: row for row in rows[1:]}


def api_figures(read_client: Any, query: str) -> tuple[Decimal, int, int]:
    response = read_client.get(f"/api/v1/metrics/?{query}")
    assert response.status_code == 200, response.content
    total = response.json()["total"]
    return Decimal(total["cost_usd"]), total["calls"], total["cache_hits"]


MONTH = {"Nov 1", "Nov 20", "Nov 21"}
LAST_30 = {"Oct 23", "Oct 31"} | MONTH


@pytest.mark.parametrize(
    ("page_query", "api_query", "days"),
    [
        ("period=month", "period=month", MONTH),
        ("period=30d", "start=2026-10-23&end=2026-11-21", LAST_30),
        (
            "period=custom&start=2026-10-23&end=2026-11-21",
            "start=2026-10-23&end=2026-11-21",
            LAST_30,
        ),
        ("period=today", "period=day", {"Nov 21"}),
        (
            "period=custom&start=2026-11-01&end=2026-11-20",
            "start=2026-11-01&end=2026-11-20",
            {"Nov 1", "Nov 20"},
        ),
    ],
)
def test_the_overview_a_drill_down_and_the_api_agree_in_the_tenants_zone(
    member, read_client, usage, page_query, api_query, days
):
    total = expected(days)
    overview = html_of(member, f"/t/acme/?{page_query}")
    assert card_figures(overview) == total
    assert api_figures(read_client, api_query) == total
    # Every breakdown table adds up to the cards.
    for table in ("end_users", "operations", "models"):
        rows = csv_of(member, f"/t/acme/?{page_query}&export={table}")
        assert sum(Decimal(r[1]) for r in rows.values()) == total[0], table
        assert sum(int(r[2]) for r in rows.values()) == total[1], table
        assert sum(int(r[5]) for r in rows.values()) == total[2], table
    users = csv_of(member, f"/t/acme/?{page_query}&export=end_users")
    for user in USERS:
        mine = expected(days, user)
        drill = html_of(member, f"/t/acme/users/{user}/?{page_query}")
        assert card_figures(drill) == mine, user
        assert api_figures(read_client, f"{api_query}&end_user={user}") == mine, user
        row = users.get(user, [user, "0", "0", "", "0", "0"])
        assert (Decimal(row[1]), int(row[2]), int(row[5])) == mine, user


def test_the_recommendations_count_the_same_30_days_as_the_cards(member, usage):
    cost, calls, hits = expected(LAST_30)
    html = html_of(member, "/t/acme/?period=30d")
    assert card_figures(html) == (cost, calls, hits)
    text = " ".join(re.findall(r'<p class="text">([^<]*)</p>', html))
    # The cache-rate and top-operations recommendations name the cards' calls and spend.
    assert f"{hits:,} of {calls:,} calls" in text
    shown = re.search(r'id="card-period">.*?<div class="value[^"]*"[^>]*>([^<]*)<', html, re.S)
    assert shown and f"Of {shown.group(1)} in the last 30 days" in text
    operations = csv_of(member, "/t/acme/?period=30d&export=operations")
    assert set(operations) == {"chat", "summarize"}


def test_an_outsider_sees_none_of_it(client, outsider_user, usage):
    client.force_login(outsider_user)
    html = html_of(client, "/t/globex/?period=month")
    # Its own calls of the month: globex keeps UTC, so only the two of 20 November count.
    assert card_figures(html) == (Decimal(10), 2, 2)
    assert not any(f">{u}<" in html for u in ("bob", "cy"))
    assert client.get("/t/acme/?period=month").status_code == 404
