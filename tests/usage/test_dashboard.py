"""The server-rendered dashboard: exact figures, filters, CSV exports, tenant scoping (an outsider
gets 404 and never sees acme's names), the empty state, no CDN; and the pure chart builders."""

from __future__ import annotations

import csv
import io
import re
from datetime import date, datetime
from decimal import Decimal
from html import unescape
from typing import Any

import pytest
import time_machine

from alerts.models import Alert, AlertRule
from budgets.emergency_stop import emergency_stop_trip
from budgets.models import Budget
from budgets.services import budget_create
from costmon.core import tenancy
from costmon.core.models import Membership, Tenant
from costmon.core.periods import custom_range, recent_range
from costmon.core.services import membership_add, tenant_create
from costmon.web.dashboard import charts, pages
from costmon.web.dashboard.pages import spend_heatmap
from tests.factories import UserFactory
from tests.helpers import event, post_usage
from usage.selectors import UsageFilters

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "unscoped")]

# Saturday 21 November 2026, 12:00 UTC
NOW = "2026-11-21T12:00:00Z"
ACME_USERS = ("acme-ann", "acme-bob", "acme-cy")


@pytest.fixture(autouse=True)
def _frozen_clock() -> Any:
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def usage(ingest_client: Any, outsider_client: Any) -> None:
    batch = [
        # today: 2 haiku chats by ann (one an error), a response-cache hit for bob (free), and
        # an unpriced call by cy
        event(
            event_id="t1",
            occurred_at="2026-11-21T09:10:00Z",
            end_user="acme-ann",
            tags={"team": "search"},
        ),
        event(
            event_id="t2",
            occurred_at="2026-11-21T11:30:00Z",
            end_user="acme-ann",
            status="error",
            tags={"team": "search"},
        ),
        event(
            event_id="t3",
            occurred_at="2026-11-21T10:00:00Z",
            provider="openai",
            model="gpt-4o-mini",
            operation="summarize",
            end_user="acme-bob",
            input_tokens=1500,
            output_tokens=500,
            cache_hit=True,
        ),
        event(
            event_id="unpriced",
            occurred_at="2026-11-21T08:00:00Z",
            provider="newco",
            model="x-1",
            end_user="acme-cy",
        ),
        # Monday 16th, Monday 2nd, and Saturday 31 October (inside the last 30 days)
        event(
            event_id="w1",
            occurred_at="2026-11-16T08:00:00Z",
            provider="openai",
            model="gpt-4o-mini",
            operation="summarize",
            end_user="acme-bob",
            input_tokens=1500,
            output_tokens=500,
            tags={"team": "ops"},
        ),
        event(
            event_id="m1",
            occurred_at="2026-11-02T08:00:00Z",
            provider="openai",
            model="text-embedding-3-large",
            operation="embed",
            end_user="acme-cy",
            input_tokens=1000,
            output_tokens=0,
        ),
        event(event_id="old", occurred_at="2026-10-31T23:00:00Z", end_user="acme-ann"),
    ]
    assert post_usage(ingest_client, batch).status_code == 201
    # The outsider spends $3.00 today on the same model; none of it may reach acme's pages.
    outsider = [
        event(
            event_id=f"o{i}",
            occurred_at="2026-11-21T09:00:00Z",
            end_user="globex-ceo",
            input_tokens=100_000,
            output_tokens=100_000,
        )
        for i in range(5)
    ]
    assert post_usage(outsider_client, outsider).status_code == 201


@pytest.fixture
def monthly_budget(acme: Tenant) -> Budget:
    return budget_create(tenant=acme, data={"name": "Acme monthly", "limit_usd": Decimal("0.004")})


@pytest.fixture
def member(client: Any, viewer: Any) -> Any:
    client.force_login(viewer)
    return client


def page(client: Any, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


def card(html: str, card_id: str) -> str:
    match = re.search(
        rf'id="card-{card_id}">\s*<div class="label">[^<]*</div>\s*<div class="value(?: long)?"(?: title="[^"]*")?>([^<]*)</div>',
        html,
    )
    assert match, f"no card {card_id}"
    return match.group(1)


def card_note(html: str, card_id: str) -> str:
    match = re.search(rf'id="card-{card_id}">.*?<div class="note">([^<]*)</div>', html, re.S)
    assert match, f"no note on card {card_id}"
    return match.group(1)


def csv_rows(client: Any, url: str) -> list[list[str]]:
    response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(response.content.decode())))


# --- login, tenants, scoping -----------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_the_login_page(client, acme):
    response = client.get("/")
    assert (response.status_code, response["Location"]) == (302, "/login/?next=/")
    response = client.get("/t/acme/")
    assert (response.status_code, response["Location"]) == (302, "/login/?next=/t/acme/")


def test_the_root_opens_the_users_first_tenant(member, outsider_user, client):
    assert member.get("/")["Location"] == "/t/acme/"
    client.force_login(outsider_user)
    assert client.get("/")["Location"] == "/t/globex/"


def test_a_member_who_is_not_staff_can_log_out(member, acme):
    response = member.post("/logout/")
    assert (response.status_code, response["Location"]) == (302, "/login/")
    assert member.get("/t/acme/").status_code == 302


def test_a_user_without_a_tenant_is_told_what_to_do(client, db):
    client.force_login(UserFactory(username="newcomer"))
    html = page(client, "/")
    assert "You are not a member of any tenant yet" in html


def test_a_member_sees_only_their_tenants_in_the_switcher(member, usage, outsider):
    html = page(member, "/t/acme/")
    assert re.findall(r'data-tenant="([^"]+)"', html) == ["acme"]
    assert "Globex" not in html


def test_a_superuser_sees_every_tenant(client, usage, acme, outsider):
    client.force_login(UserFactory(username="root", is_superuser=True, is_staff=True))
    html = page(client, "/t/acme/?period=7d")
    assert re.findall(r'data-tenant="([^"]+)"', html) == ["acme", "globex"]
    # The switcher keeps the page and its filters.
    assert 'href="/t/globex/?period=7d"' in html
    assert card(page(client, "/t/globex/"), "today") == "$3.00"


def test_an_outsider_gets_404_on_every_acme_page(client, outsider_user, usage, monthly_budget):
    client.force_login(outsider_user)
    for url in (
        "/t/acme/",
        "/t/acme/?export=end_users",
        "/t/acme/models/claude-haiku-4-5/",
        "/t/acme/users/acme-ann/",
        "/t/acme/users/acme-ann/?export=models",
        f"/t/acme/budgets/{monthly_budget.pk}/",
        "/t/no-such-tenant/",
    ):
        response = client.get(url)
        assert response.status_code == 404, url
        assert not any(name in response.content.decode() for name in ACME_USERS), url


def test_an_outsider_never_sees_acmes_names_on_its_own_pages(client, outsider_user, usage):
    client.force_login(outsider_user)
    overview = page(client, "/t/globex/")
    assert "globex-ceo" in overview
    assert card(overview, "today") == "$3.00"
    for html in (
        overview,
        page(client, "/t/globex/models/gpt-4o-mini/"),
        page(client, "/t/globex/models/claude-haiku-4-5/?period=month"),
    ):
        assert not any(name in html for name in ACME_USERS)
    # Naming an acme end user in globex's URL shows globex's (empty) figures for that name.
    probe = page(client, "/t/globex/users/acme-bob/?period=month")
    assert (card(probe, "period"), card(probe, "calls")) == ("$0", "0")
    assert not any(name in probe for name in ("acme-ann", "acme-cy", "gpt-4o-mini"))


def test_a_budget_of_another_tenant_is_404(member, outsider, usage):
    theirs = budget_create(tenant=outsider, data={"name": "Globex", "limit_usd": Decimal(10)})
    assert member.get(f"/t/acme/budgets/{theirs.pk}/").status_code == 404
    assert member.get("/t/acme/budgets/999999/").status_code == 404


# --- the overview: exact figures -------------------------------------------------------------


def test_the_overview_cards_show_exact_figures(member, usage, monthly_budget):
    html = page(member, "/t/acme/")
    assert card(html, "today") == "$0.0027"
    assert card(html, "month") == "$0.00336"
    # 20.5 of November's 30 days gone: 3,355,000 nanos * 30 / 20.5, rounded down.
    assert card(html, "projected") == "$0.00491"
    assert card_note(html, "projected") == "at risk against the $0.004 monthly budget"
    # The default period: the last 30 days, 23 October to today (the 31 October call counts).
    assert card(html, "period") == "$0.00471"
    assert card(html, "calls") == "7"
    assert card_note(html, "calls") == "1 errors"
    assert card(html, "avg") == "$0.000672"
    assert card(html, "cache") == "14.3%"
    assert card(html, "unpriced") == "1"
    assert card(html, "stop") == "off"
    assert not any(name in html for name in ("globex-ceo", "$3.00"))


MONEY = re.compile(r"-?\$-?[\d,]*\.?\d+")


def badly_shown_money(html: str) -> list[str]:
    """Dollar figures outside tooltips that break the rule: cents from $1 ("$12.50"), at most
    three significant digits below ("$0.0985", "$0.50"), "$0" for nothing."""
    bad = []
    for figure in MONEY.findall(re.sub(r'title="[^"]*"', "", html)):
        digits = figure.replace("-", "").replace("$", "").replace(",", "")
        cents = digits.partition(".")[2]
        if digits == "0":
            continue
        if Decimal(digits) >= 1:
            ok = len(cents) == 2
        else:
            ok = len(cents) >= 2 and len(cents.lstrip("0")) <= 3
        if not ok:
            bad.append(figure)
    return bad


def test_every_money_figure_follows_the_one_rule_with_the_exact_amount_as_tooltip(
    member, usage, monthly_budget, ingest_client
):
    # Amounts with many digits on either side of a dollar: 2 x $1.234567891 and $0.006694667.
    batch = [
        event(event_id=f"big{i}", occurred_at="2026-11-20T10:00:00Z", cost_usd="1.234567891")
        for i in range(2)
    ] + [event(event_id="odd", occurred_at="2026-11-19T10:00:00Z", cost_usd="0.006694667")]
    assert post_usage(ingest_client, batch).status_code == 201
    pages = [
        page(member, url)
        for url in (
            "/t/acme/",
            "/t/acme/?period=48h&by=model",
            "/t/acme/models/claude-haiku-4-5/",
            "/t/acme/users/acme-ann/",
            f"/t/acme/budgets/{monthly_budget.pk}/",
            "/t/acme/statements/?subject=end_user%3Dacme-ann&month=2026-11",
        )
    ]
    for html in pages:
        assert MONEY.findall(html)  # there is money to check
        assert badly_shown_money(html) == []
    overview = pages[0]
    assert card(overview, "period") == "$2.48"  # 2.469135782 + 0.006694667 + 0.004705
    assert 'title="$2.480535449">$2.48<' in overview
    # The table cell shows three digits and carries the exact amount.
    assert '<td class="money" title="$0.006694667">$0.00669</td>' in page(
        member, "/t/acme/?period=custom&start=2026-11-19&end=2026-11-19"
    )
    # Hover labels are the same strings, pre-formatted on the server.
    assert '"$2.47"' in overview and "$1.234567891" not in overview.replace(
        'title="$1.234567891"', ""
    )


@pytest.mark.parametrize(
    ("limit", "shown", "outlook"),
    [("1", "$1.00", "on track"), ("0.004", "$0.004", "at risk"), ("0.003", "$0.003", "over")],
)
def test_the_projection_is_judged_against_the_monthly_budget(
    member, usage, acme, limit, shown, outlook
):
    budget_create(tenant=acme, data={"name": "Monthly", "limit_usd": Decimal(limit)})
    html = page(member, "/t/acme/")
    assert card_note(html, "projected") == f"{outlook} against the {shown} monthly budget"


def test_without_a_monthly_budget_the_projection_says_so(member, usage):
    html = page(member, "/t/acme/")
    assert card_note(html, "projected") == "No monthly budget on the whole tenant."


def test_an_active_emergency_stop_shows_on_the_overview(member, usage, acme):
    emergency_stop_trip(tenant=acme, reason="runaway agent loop", duration_minutes=30)
    html = page(member, "/t/acme/")
    assert card(html, "stop") == "ACTIVE"
    assert "runaway agent loop (until 2026-11-21 12:30 UTC)" in html


@pytest.mark.parametrize(
    ("query", "period", "calls", "cache"),
    [
        ("period=today", "$0.0027", "4", "25.0%"),
        ("period=48h", "$0.0027", "4", "25.0%"),
        ("period=7d", "$0.00323", "5", "20.0%"),
        ("period=month", "$0.00336", "6", "16.7%"),
        ("period=custom&start=2026-10-31&end=2026-11-02", "$0.00148", "2", "0.0%"),
        ("provider=openai", "$0.000655", "3", "33.3%"),
        ("model=claude-haiku-4-5", "$0.00405", "3", "0.0%"),
        ("end_user=acme-bob&operation=summarize", "$0.000525", "2", "50.0%"),
        ("tag=team:search", "$0.0027", "2", "0.0%"),
        ("model=nope", "$0", "0", "\u2013"),
    ],
)
def test_filters_narrow_the_figures(member, usage, query, period, calls, cache):
    html = page(member, f"/t/acme/?{query}")
    assert (card(html, "period"), card(html, "calls"), card(html, "cache")) == (
        period,
        calls,
        cache,
    )


def test_filters_also_narrow_today_and_the_month(member, usage, monthly_budget):
    html = page(member, "/t/acme/?provider=openai")
    assert (card(html, "today"), card(html, "month")) == ("$0", "$0.000655")
    # A tenant budget says nothing about one provider: no verdict under a filter.
    assert card_note(html, "projected") == "At the month-to-date pace, for these filters."
    assert "No usage in this period matches" in page(member, "/t/acme/?model=nope")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("period=year", "Unknown period &#x27;year&#x27;; showing last 30 days."),
        ("period=custom", "A custom period needs a start date. Showing last 30 days."),
        (
            "period=custom&start=yesterday",
            "start must be a date (2026-11-01) or an ISO 8601 date-time. Showing last 30 days.",
        ),
        (
            "period=custom&start=2026-11-10&end=2026-11-01",
            "end must be after start. Showing last 30 days.",
        ),
        ("tag=team", "Write the tag filter as name:value, e.g. team:search."),
        ("tag=:x", "Write the tag filter as name:value, e.g. team:search."),
        ("by=colour", "Unknown grouping &#x27;colour&#x27;"),
        (f"model={'m' * 300}", "The model filter is longer than 255 characters."),
    ],
)
def test_bad_filter_values_show_a_message_not_an_error(member, usage, query, message):
    html = page(member, f"/t/acme/?{query}")
    assert message in html
    assert 'class="problem"' in html
    # The page still shows the default figures.
    assert card(html, "today") == "$0.0027"


def test_the_overview_has_every_chart(member, usage, monthly_budget):
    html = page(member, "/t/acme/")
    for div_id in (
        "chart-spend",
        "chart-end-users",
        "chart-operations",
        "chart-cache",
        "chart-heatmap",
        f"chart-budget-{monthly_budget.pk}",
    ):
        assert f'<div id="{div_id}" class="plotly-graph-div"' in html, div_id
        assert re.search(rf'Plotly\.newPlot\(\s*"{div_id}"', html), div_id
    assert "Spend per day by provider" in html
    assert "Spend per day by model" in page(member, "/t/acme/?by=model")
    # Today and the last 48 hours are drawn hour by hour.
    assert "Spend per hour by provider" in page(member, "/t/acme/?period=48h")


def test_the_page_loads_plotly_from_our_static_files_and_nothing_from_a_cdn(member, usage):
    html = page(member, "/t/acme/")
    assert '<script src="/static/costmon/plotly.min.js"></script>' in html
    assert "cdn." not in html
    assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//", html)
    assert not re.search(r"<link[^>]+href=[\"']?(https?:)?//", html)
    response = member.get("/static/costmon/plotly.min.js")
    assert response.status_code == 200


def test_recent_alerts_are_the_tenants_own(member, usage, acme, outsider):
    for tenant, title in ((acme, "Acme spend above $0.001"), (outsider, "Globex is burning")):
        rule = AlertRule.objects.create(tenant=tenant, name="spend", kind="spend")
        Alert.objects.create(
            tenant=tenant,
            rule=rule,
            scope="tenant",
            period="20261121",
            level="above",
            severity="warning",
            title=title,
            text=title,
            figure="$0.0027",
            link=f"http://127.0.0.1:8000/t/{tenant.slug}/",
        )
    html = page(member, "/t/acme/")
    assert "Acme spend above $0.001" in html
    assert "Globex is burning" not in html
    rows = csv_rows(member, "/t/acme/?export=alerts")
    assert rows == [
        ["first_seen", "severity", "status", "title", "figure"],
        ["2026-11-21 12:00", "warning", "firing", "Acme spend above $0.001", "$0.0027"],
    ]


# --- CSV exports -----------------------------------------------------------------------------


def test_the_end_user_table_exports_exact_rows(member, usage):
    assert csv_rows(member, "/t/acme/?export=end_users") == [
        ["name", "cost_usd", "calls", "avg_cost_usd", "errors", "cache_hits"],
        ["acme-ann", "0.00405", "3", "0.00135", "1", "0"],
        ["acme-bob", "0.000525", "2", "0.0002625", "0", "1"],
        ["acme-cy", "0.00013", "2", "0.000065", "0", "0"],
    ]


def test_an_export_follows_the_pages_filters(member, usage):
    assert csv_rows(member, "/t/acme/?export=models&provider=openai&period=month") == [
        ["name", "cost_usd", "calls", "avg_cost_usd", "errors", "cache_hits"],
        ["gpt-4o-mini", "0.000525", "2", "0.0002625", "0", "1"],
        ["text-embedding-3-large", "0.00013", "1", "0.00013", "0", "0"],
    ]
    assert csv_rows(member, "/t/acme/?export=operations&tag=team:search") == [
        ["name", "cost_usd", "calls", "avg_cost_usd", "errors", "cache_hits"],
        ["chat", "0.0027", "2", "0.00135", "1", "0"],
    ]


def test_the_budget_table_exports_spend_and_projection(member, usage, monthly_budget):
    assert csv_rows(member, "/t/acme/?export=budgets") == [
        ["name", "scope", "period", "spent_usd", "limit_usd", "percent", "status", "projected_usd"],
        [
            "Acme monthly",
            "the whole tenant",
            "Month",
            "0.003355",
            "0.004",
            "83.88",
            "warning",
            "0.004909756",
        ],
    ]


def test_every_table_has_a_csv_link_and_an_unknown_table_is_a_400(member, usage):
    html = page(member, "/t/acme/?period=7d")
    for name in ("end_users", "models", "operations", "budgets", "alerts"):
        assert f'href="?period=7d&amp;export={name}"' in html, name
    response = member.get("/t/acme/?export=nope")
    assert response.status_code == 400
    assert (
        "export one of: end_users, models, operations, budgets, alerts" in response.content.decode()
    )


# --- drill-downs -----------------------------------------------------------------------------


def test_the_model_page_shows_that_model_only(member, usage):
    html = page(member, "/t/acme/models/claude-haiku-4-5/")
    assert "Model claude-haiku-4-5" in html
    assert (card(html, "today"), card(html, "month"), card(html, "period")) == (
        "$0.0027",
        "$0.0027",
        "$0.00405",
    )
    assert "Spend per day by operation" in html
    for div_id in ("chart-spend", "chart-end-users", "chart-operations", "chart-heatmap"):
        assert f'<div id="{div_id}"' in html
    assert csv_rows(member, "/t/acme/models/claude-haiku-4-5/?export=end_users")[1:] == [
        ["acme-ann", "0.00405", "3", "0.00135", "1", "0"]
    ]
    # The model comes from the path: a model in the query string does not override it.
    assert card(page(member, "/t/acme/models/claude-haiku-4-5/?model=x-1"), "period") == "$0.00405"


def test_a_model_name_with_slashes_has_its_page(member, ingest_client):
    name = "accounts/fireworks/models/llama-v3"
    body = event(
        event_id="fw",
        occurred_at="2026-11-21T10:00:00Z",
        provider="fireworks",
        model=name,
        cost_usd="0.25",
    )
    assert post_usage(ingest_client, body).status_code == 201
    html = page(member, f"/t/acme/models/{name}/")
    assert card(html, "today") == "$0.25"


def test_the_end_user_page_shows_that_end_user_only(member, usage):
    html = page(member, "/t/acme/users/acme-bob/?period=month")
    assert "End user acme-bob" in html
    assert (card(html, "period"), card(html, "calls"), card(html, "cache")) == (
        "$0.000525",
        "2",
        "50.0%",
    )
    assert "Spend per day by model" in html
    assert '<div id="chart-models"' in html
    assert "acme-ann" not in html.split('id="table-models"')[0].split("</header>")[1]
    # Links from the overview's tables keep the period.
    assert 'href="/t/acme/users/acme-bob/?period=month"' in page(member, "/t/acme/?period=month")
    assert csv_rows(member, "/t/acme/users/acme-bob/?export=models") == [
        ["name", "cost_usd", "calls", "avg_cost_usd", "errors", "cache_hits"],
        ["gpt-4o-mini", "0.000525", "2", "0.0002625", "0", "1"],
    ]


def test_the_budget_page_shows_the_burn_down_and_its_days(member, usage, monthly_budget):
    url = f"/t/acme/budgets/{monthly_budget.pk}/"
    html = page(member, url)
    assert "Budget Acme monthly" in html
    assert (card(html, "spent"), card(html, "limit"), card(html, "used")) == (
        "$0.00336",
        "$0.004",
        "83.88%",
    )
    assert card(html, "projected") == "$0.00491"
    assert card(html, "resets") == "2026-12-01 00:00"
    assert '<div id="chart-burndown"' in html
    days = csv_rows(member, f"{url}?export=days")
    assert days[0] == ["day", "spent_usd", "cumulative_usd", "remaining_usd"]
    assert len(days) == 1 + 21  # 1 to 21 November
    assert days[2] == ["2026-11-02", "0.00013", "0.00013", "0.00387"]
    assert days[16] == ["2026-11-16", "0.000525", "0.000655", "0.003345"]
    assert days[21] == ["2026-11-21", "0.0027", "0.003355", "0.000645"]


# --- the empty state -------------------------------------------------------------------------


def test_a_tenant_without_usage_shows_how_to_send_the_first_event(member, acme, settings):
    settings.SITE_URL = "https://costmon.example.com"
    html = page(member, "/t/acme/")
    assert 'id="empty-state"' in html
    assert (
        "curl -X POST https://costmon.example.com/api/v1/usage/ "
        '-H "Authorization: Bearer YOUR_API_KEY" -H "Content-Type: application/json"'
    ) in html
    assert "python manage.py create_api_key acme --scopes ingest" in html
    assert "plotly-graph-div" not in html
    # Exports still answer, with the header only.
    assert csv_rows(member, "/t/acme/?export=end_users") == [
        ["name", "cost_usd", "calls", "avg_cost_usd", "errors", "cache_hits"]
    ]


def test_a_member_of_two_tenants_switches_between_them(client, usage, acme, outsider):
    user = UserFactory(username="dana")
    membership_add(tenant=acme, user=user, role=Membership.Role.VIEWER)
    membership_add(tenant=outsider, user=user, role=Membership.Role.VIEWER)
    initech = tenant_create(slug="initech", name="Initech")
    client.force_login(user)
    html = page(client, "/t/acme/users/acme-ann/")
    assert 'href="/t/globex/users/acme-ann/"' in html
    assert "initech" not in html
    assert client.get(f"/t/{initech.slug}/").status_code == 404


# --- selectors -------------------------------------------------------------------------------


def test_the_heat_map_groups_by_the_tenants_local_hour_and_weekday(usage, acme):
    Tenant.objects.filter(pk=acme.pk).update(timezone="America/New_York")
    acme.refresh_from_db()
    span = custom_range(tenant=acme, start="2026-10-23", end="2026-11-21")
    matrix = spend_heatmap(tenant=acme, time_range=span, filters=UsageFilters())
    found = {(day, hour): v for day, row in enumerate(matrix) for hour, v in enumerate(row) if v}
    # Monday 03:00 in New York: 16 Nov and 2 Nov (both 08:00 UTC, EST); Saturday 04:00 and
    # 06:30 today; Saturday 31 Oct 19:00 (EDT).
    assert found == {
        (0, 3): 525_000 + 130_000,
        (5, 4): 1_350_000,
        (5, 6): 1_350_000,
        (5, 19): 1_350_000,
    }
    tagged = spend_heatmap(
        tenant=acme, time_range=span, filters=UsageFilters(tag=("team", "search"))
    )
    assert sum(map(sum, tagged)) == 2_700_000


# --- chart builders (pure) -------------------------------------------------------------------


def test_spend_by_day_stacks_one_trace_per_key_with_fixed_colours():
    d1, d2 = datetime(2026, 11, 1), datetime(2026, 11, 2)
    rows = [
        {"bucket": d1, "key": "gpt-4o-mini", "cost_nanos": 500_000},
        {"bucket": d2, "key": "gpt-4o-mini", "cost_nanos": 250_000},
        {"bucket": d2, "key": "claude-haiku-4-5", "cost_nanos": 2_000_000},
    ]
    fig = charts.spend_by_day(rows, buckets=[d1, d2], group_label="model")
    assert fig.layout.barmode == "stack"
    assert [t.name for t in fig.data] == ["claude-haiku-4-5", "gpt-4o-mini"]
    assert list(fig.data[0].y) == [0.0, 0.002]
    assert list(fig.data[1].customdata) == ["$0.0005", "$0.00025"]
    assert fig.data[1].marker.color == charts.colour_for("gpt-4o-mini")
    assert fig.layout.title.text == "Spend per day by model"


def test_the_same_model_has_the_same_colour_in_every_figure():
    series = charts.spend_by_day(
        [{"bucket": datetime(2026, 11, 1), "key": "gpt-4o", "cost_nanos": 1}]
    )
    bars = charts.spend_by_model(
        [{"key": "o3", "cost_nanos": 9, "calls": 1}, {"key": "gpt-4o", "cost_nanos": 1, "calls": 1}]
    )
    assert series.data[0].marker.color == bars.data[0].marker.color[0]  # largest is listed last
    assert list(bars.data[0].y) == ["gpt-4o", "o3"]
    assert charts.colour_for("GPT-4o") == charts.colour_for("gpt-4o") in charts.PALETTE
    assert charts.colour_for("openai") == charts.FIXED_COLOURS["openai"]
    assert charts.colour_for("anthropic") != charts.colour_for("openai")


def test_breakdown_charts_and_cache_split():
    users = charts.top_end_users(
        [
            {"key": "u1", "cost_nanos": 3_000_000_000, "calls": 2},
            {"key": "", "cost_nanos": 5, "calls": 1},
        ]
    )
    assert list(users.data[0].y) == ["(none)", "u1"]
    assert [c[0] for c in users.data[0].customdata] == ["$0.000000005", "$3.00"]
    ops = charts.spend_by_operation([{"key": "chat", "cost_nanos": 1, "calls": 1}])
    assert ops.data[0].marker.color == (charts.colour_for("chat"),)
    pie = charts.cache_hits(1, 3)
    assert (list(pie.data[0].values), list(pie.data[0].marker.colors)) == (
        [1, 3],
        [charts.HIT_COLOUR, charts.MISS_COLOUR],
    )
    assert charts.cache_hits(0, 0).layout.annotations[0].text == "No calls in this period"


def test_the_heat_map_figure_starts_its_week_on_monday():
    matrix = [[0] * 24 for _ in range(7)]
    matrix[5][9] = 1_350_000
    fig = charts.heatmap(matrix)
    assert list(fig.data[0].y) == ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    assert fig.data[0].z[5][9] == 0.00135
    assert fig.data[0].customdata[5][9] == "$0.00135"
    assert charts.heatmap([[0] * 24] * 7).layout.annotations[0].text == "No spend in this period"


def test_the_burn_down_projects_to_the_period_end():
    fig = charts.budget_burndown(
        name="Monthly",
        limit_nanos=4_000_000,
        days=[date(2026, 11, 1), date(2026, 11, 2)],
        daily_nanos=[1_000_000, 500_000],
        period_end=date(2026, 11, 30),
        projected_nanos=5_000_000,
    )
    remaining, projected = fig.data
    assert (remaining.name, list(remaining.customdata)) == ("Remaining", ["$0.003", "$0.0025"])
    assert projected.name == "Projected"
    assert list(projected.x) == [date(2026, 11, 2), date(2026, 11, 30)]
    assert list(projected.customdata) == ["$0.0025", "-$0.001"]
    assert projected.line.color == charts.LIMIT_COLOUR  # the projection ends over budget
    rolling = charts.budget_burndown(
        name="Rolling", limit_nanos=1, days=[date(2026, 11, 1)], daily_nanos=[0]
    )
    assert [t.name for t in rolling.data] == ["Remaining"]


def test_a_figure_embeds_without_plotly_js_or_a_cdn():
    html = charts.to_div(charts.cache_hits(1, 1), "chart-x")
    assert '<div id="chart-x" class="plotly-graph-div"' in html
    assert '"responsive": true, "displaylogo": false' in html
    assert "<script src" not in html
    assert "https://" not in html


def test_a_member_who_is_not_staff_logs_in_and_lands_on_their_tenant(client, acme, viewer):
    page = client.get("/login/?next=/")
    assert page.status_code == 200
    assert b'name="password"' in page.content and b"cdn." not in page.content
    response = client.post(
        "/login/", {"username": "bob", "password": "correct horse battery staple", "next": "/"}
    )
    assert (response.status_code, response["Location"]) == (302, "/")
    assert client.get("/", follow=False)["Location"] == "/t/acme/"
    assert client.get("/t/acme/").status_code == 200


def test_a_wrong_password_is_refused_with_a_message(client, viewer):
    response = client.post("/login/", {"username": "bob", "password": "nope"})
    assert response.status_code == 200
    assert b"did not match" in response.content


# --- readable charts -------------------------------------------------------------------------


def test_series_shown_together_never_share_a_colour_and_keep_theirs_where_they_can():
    names = [
        "fireworks",
        "azure",
        "gpt-4o",
        "text-embedding-3-small",
        "mistral-small",
        "gpt-4o-mini",
        "openai",
        "anthropic",
        *(f"op-{i}" for i in range(12)),
    ]
    colours = charts.colours_for(names)
    assert len(set(colours.values())) == len(names)
    assert set(colours.values()) <= set(charts.PALETTE)
    # The big providers keep their own colour whatever their rank.
    assert (colours["openai"], colours["anthropic"], colours["azure"]) == (
        charts.FIXED_COLOURS["openai"],
        charts.FIXED_COLOURS["anthropic"],
        charts.FIXED_COLOURS["azure"],
    )
    # The biggest series that is no provider keeps its own colour; alone, every name does.
    assert colours["fireworks"] == charts.colour_for("fireworks")
    assert charts.colours_for(["mistral-small"]) == {
        "mistral-small": charts.colour_for("mistral-small")
    }
    # A stacked chart and a bar chart take their colours the same way.
    d = datetime(2026, 11, 1)
    fig = charts.spend_by_day(
        [{"bucket": d, "key": n, "cost_nanos": 100 - i} for i, n in enumerate(names)], buckets=[d]
    )
    assert len({t.marker.color for t in fig.data}) == len(names)
    bars = charts.spend_by_operation(
        [{"key": n, "cost_nanos": 100 - i, "calls": 1} for i, n in enumerate(names)]
    )
    assert len(set(bars.data[0].marker.color)) == len(names)


def luminance(colour: str) -> float:
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_the_heat_maps_scale_runs_from_light_at_zero_to_dark_at_the_most():
    matrix = [[0] * 24 for _ in range(7)]
    matrix[0][9], matrix[4][15] = 1_000_000, 9_000_000
    cells = charts.heatmap(matrix).data[0]
    assert cells.zmin == 0
    stops = [colour for _, colour in cells.colorscale]
    shades = [luminance(c) for c in stops]
    assert shades == sorted(shades, reverse=True)  # each stop darker than the one before
    assert shades[0] > 240  # $0 is nearly white


@pytest.fixture
def snapshots(ingest_client: Any) -> None:
    batch = [
        event(
            event_id=f"s{i}",
            occurred_at="2026-11-20T10:00:00Z",
            provider="openai",
            model=model,
            operation="chat",
            end_user="acme-dee",
            cost_usd=cost,
        )
        for i, (model, cost) in enumerate(
            [("gpt-4o", "0.25"), ("gpt-4o-2024-08-06", "0.5"), ("gpt-4o-mini-2024-07-18", "0.125")]
        )
    ]
    assert post_usage(ingest_client, batch).status_code == 201


def test_dated_snapshots_are_counted_under_their_family_unless_split(member, snapshots):
    assert csv_rows(member, "/t/acme/?export=models")[1:] == [
        ["gpt-4o", "0.75", "2", "0.375", "0", "0"],
        ["gpt-4o-mini", "0.125", "1", "0.125", "0", "0"],
    ]
    assert csv_rows(member, "/t/acme/?export=models&snapshots=split")[1:] == [
        ["gpt-4o-2024-08-06", "0.5", "1", "0.5", "0", "0"],
        ["gpt-4o", "0.25", "1", "0.25", "0", "0"],
        ["gpt-4o-mini-2024-07-18", "0.125", "1", "0.125", "0", "0"],
    ]
    html = page(member, "/t/acme/?by=model")
    series = re.findall(r'"name":"([^"]+)","x"', html.replace(": ", ":").replace(", ", ","))
    assert series == ["gpt-4o", "gpt-4o-mini"]
    split = page(member, "/t/acme/?by=model&snapshots=split")
    assert 'href="?by=model"' in split and "snapshots=split" in split
    # The family's page counts its snapshots; a dated name's page counts that name only.
    assert card(page(member, "/t/acme/models/gpt-4o/"), "period") == "$0.75"
    assert card(page(member, "/t/acme/models/gpt-4o/?snapshots=split"), "period") == "$0.25"
    assert card(page(member, "/t/acme/models/gpt-4o-2024-08-06/"), "period") == "$0.50"
    assert card(page(member, "/t/acme/?model=gpt-4o"), "period") == "$0.75"


def test_the_date_fields_show_the_selected_periods_days(member, usage):
    def dates(html: str) -> tuple[str, str]:
        found = re.search(r'name="start" value="([^"]*)".*?name="end" value="([^"]*)"', html, re.S)
        assert found
        return found.group(1), found.group(2)

    assert dates(page(member, "/t/acme/")) == ("2026-10-23", "2026-11-21")
    assert dates(page(member, "/t/acme/?period=month")) == ("2026-11-01", "2026-11-30")
    assert dates(page(member, "/t/acme/?period=today")) == ("2026-11-21", "2026-11-21")
    custom = page(member, "/t/acme/?period=custom&start=2026-11-02&end=2026-11-05")
    assert dates(custom) == ("2026-11-02", "2026-11-05")


def test_an_end_users_page_offers_no_stacking_by_end_user(member, usage):
    html = page(member, "/t/acme/users/acme-bob/")
    switch = html.split('class="switch"')[1].split("</div>")[0]
    assert ">end user<" not in switch and ">model<" in switch
    forced = page(member, "/t/acme/users/acme-bob/?by=end_user")
    assert "Spend per day by model" in forced
    assert ">end user<" in page(member, "/t/acme/").split('class="switch"')[1].split("</div>")[0]


def test_the_toolbar_is_hidden_on_narrow_screens(member):
    css = b"".join(member.get("/static/costmon/dashboard.css").streaming_content).decode()
    narrow = css.split("@media (max-width: 600px)")[1]
    assert ".modebar-container { display: none !important; }" in narrow


# --- comparisons with the previous period ----------------------------------------------------


def change(html: str, card_id: str) -> str:
    match = re.search(
        rf'id="card-{card_id}">(?:(?!id="card-).)*?<div class="change[^"]*">([^<]*)</div>',
        html,
        re.S,
    )
    assert match, f"no change on card {card_id}"
    return unescape(match.group(1))


@pytest.fixture
def earlier(usage: None, ingest_client: Any) -> None:
    """Calls in the periods the cards compare with: 10 October (last month's same days and the
    previous 30 days), and yesterday before and after this time of day."""
    batch = [
        event(event_id="p1", occurred_at="2026-10-10T10:00:00Z", cost_usd="0.001"),
        event(event_id="p2", occurred_at="2026-10-10T11:00:00Z", cost_usd="0.002", cache_hit=True),
        event(event_id="y1", occurred_at="2026-11-20T09:00:00Z", cost_usd="0.0018"),
        event(event_id="y2", occurred_at="2026-11-20T13:00:00Z", cost_usd="0.0042"),
    ]
    assert post_usage(ingest_client, batch).status_code == 201


def test_every_card_shows_its_change_against_the_previous_period(member, earlier):
    html = page(member, "/t/acme/")
    # Today $0.0027 against yesterday up to 12:00 ($0.0018; the 13:00 call is later).
    assert change(html, "today") == "+50% vs same time yesterday ($0.0018)"
    # 1 to 21 November 12:00 ($0.009355) against 1 to 21 October 12:00 ($0.003).
    assert change(html, "month") == "+212% vs same days last month ($0.003)"
    # $0.013690243 projected against October's $0.00435.
    assert change(html, "projected") == "+215% vs last month ($0.00435)"
    # The last 30 days ($0.010705, 9 calls, 1 hit) against the 30 before ($0.003, 2, 1 hit).
    assert change(html, "period") == "+257% vs previous 30 days ($0.003)"
    assert change(html, "calls") == "+350% vs previous 30 days (2)"
    assert change(html, "avg") == "-21% vs previous 30 days ($0.0015)"
    assert change(html, "cache") == "-38.9 pts vs previous 30 days (50.0%)"
    assert change(html, "unpriced") == "new vs previous 30 days (0)"
    week = page(member, "/t/acme/?period=7d")
    assert change(week, "period") == "new vs previous 7 days ($0)"
    month = page(member, "/t/acme/?period=month")
    assert change(month, "period") == "+212% vs same days last month ($0.003)"
    custom = page(member, "/t/acme/?period=custom&start=2026-10-10&end=2026-10-11")
    assert change(custom, "calls") == "new vs previous 2 days (0)"
    assert "Previous period" not in html


def test_the_spend_chart_can_draw_the_previous_period_over_this_one(member, earlier):
    html = page(member, "/t/acme/?compare=previous")
    assert '"name":"Previous period"' in html
    # 10 October is the 18th day of the previous 30 (23 September on): drawn over 9 November.
    assert '["$0.003","Oct 10"]' in html
    assert 'href="?"' in html  # the toggle turns it off again


def test_the_previous_period_line_is_aligned_bucket_by_bucket():
    days = [datetime(2026, 11, d) for d in (1, 2, 3)]
    before = [datetime(2026, 10, d) for d in (1, 2, 3, 4)]
    fig = charts.spend_by_day(
        [{"bucket": days[0], "key": "openai", "cost_nanos": 1}],
        buckets=days,
        previous=(before, [0, 2_500_000_000, 7, 9]),
    )
    line = fig.data[-1]
    assert (line.name, line.mode, list(line.x)) == ("Previous period", "lines", days)
    assert [list(c) for c in line.customdata] == [
        ["$0", "Oct 01"],
        ["$2.50", "Oct 02"],
        ["$0.000000007", "Oct 03"],
    ]


# --- many series -----------------------------------------------------------------------------


def test_a_stacked_chart_shows_the_ten_biggest_and_sums_the_rest_as_others(
    member, ingest_client, acme
):
    # 14 end users on 20 November: user-k spends $0.0k1 ... the smallest four make "(others)".
    batch = [
        event(
            event_id=f"u{k}",
            occurred_at="2026-11-20T10:00:00Z",
            end_user=f"user-{k:02d}",
            operation=f"op-{k:02d}",
            cost_usd=f"0.{k:02d}1",
        )
        for k in range(1, 15)
    ]
    assert post_usage(ingest_client, batch).status_code == 201
    for by in ("end_user", "operation"):
        with tenancy.tenant_context(acme):
            _, cells, _ = pages.spend_series(
                tenant=acme,
                time_range=recent_range(tenant=acme, period="7d"),
                filters=UsageFilters(),
                group_by=by,
                top=[f"user-{k:02d}" for k in range(14, 0, -1)] if by == "end_user" else None,
            )
        spend = {c["key"]: c["cost_nanos"] for c in cells}
        prefix = "user" if by == "end_user" else "op"
        assert spend == {
            **{f"{prefix}-{k:02d}": (k * 10 + 1) * 1_000_000 for k in range(5, 15)},
            pages.OTHERS: (11 + 21 + 31 + 41) * 1_000_000,
        }, by
    html = page(member, "/t/acme/?period=7d&by=end_user")
    series = re.findall(r'"name":"([^"]+)","x"', html)
    assert series[-1] == "(others)" and len(series) == 11
