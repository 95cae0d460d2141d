"""Every dashboard page, link and CSV export works for any name that was ever stored: line
feeds, tabs and carriage returns (rows from before such names were refused), quotes, `/ % ? #`,
`.` and `..`, emoji and right-to-left text. An outsider sees none of it."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from html import escape, unescape
from typing import Any

import pytest
import time_machine

from alerts.models import Alert, AlertRule
from alerts.rules import EVALUATORS
from budgets.models import Budget
from budgets.services import budget_create
from costmon.core.models import Membership, Tenant
from costmon.core.services import membership_add
from tests.factories import UserFactory
from tests.helpers import event, post_usage
from usage.ingest import parse_batch
from usage.links import drilldown_url, shown
from usage.services import usage_record_batch

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "unscoped")]

NOW = "2026-11-21T12:00:00Z"
# Accepted by the API today.
NAMES = [
    "say \"hi\" 'there'",
    "a/b/c",
    "/lead",
    "trail/",
    "a//b",
    "..",
    ".",
    "./x/../y",
    "100% off",
    "what?",
    "#frag",
    "a&b=c",
    "emoji 🦊",
    "עברית",
    "مرحبا بالعالم",
    "<b>bold</b>",
    "back\\slash",
    "semi;colon",
]
# Stored before control characters were refused: such rows must still show.
LEGACY = ["line\nfeed", "tab\there", "cr\rlf", "x\r\n y", "esc\x1b[31m"]
ALL = NAMES + LEGACY


def cost(i: int) -> str:
    return f"0.{i + 1:02d}1"  # no trailing zero: as the pages and exports write it


@pytest.fixture(autouse=True)
def _frozen_clock() -> Any:
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def usage(acme: Tenant, outsider: Tenant, ingest_client: Any, outsider_client: Any) -> None:
    def one(i: int, name: str) -> dict[str, Any]:
        return event(
            event_id=f"e{i}",
            occurred_at="2026-11-21T09:00:00Z",
            provider="custom",
            model=name,
            operation=name,
            end_user=name,
            session_id=name,
            tags={"team": name},
            cost_usd=cost(i),
        )

    fine = [one(i, n) for i, n in enumerate(NAMES)]
    assert post_usage(ingest_client, fine).status_code == 201
    legacy = [one(len(NAMES) + i, n) for i, n in enumerate(LEGACY)]
    assert post_usage(ingest_client, legacy).status_code == 400  # refused today...
    # ...but stored by an earlier version: straight to the service, past today's validation.
    usage_record_batch(tenant=acme, events=parse_batch(legacy, may_hold_refused=False))
    assert (
        post_usage(outsider_client, [event(event_id="o", end_user="globex-ceo")]).status_code == 201
    )


@pytest.fixture
def member(client: Any, viewer: Any) -> Any:
    client.force_login(viewer)
    return client


def get(client: Any, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code, response.content[:300])
    return response.content.decode()


def card(html: str, card_id: str) -> str:
    match = re.search(
        rf'id="card-{card_id}">\s*<div class="label">[^<]*</div>\s*<div class="value(?: long)?"(?: title="[^"]*")?>([^<]*)</div>',
        html,
    )
    assert match, f"no card {card_id}"
    return unescape(match.group(1))


def csv_of(client: Any, url: str) -> list[list[str]]:
    response = client.get(url)
    assert response.status_code == 200, (url, response.content[:300])
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(response.content.decode(), newline="")))


def hrefs(html: str) -> set[str]:
    return {unescape(h) for h in re.findall(r'href="([^"]*)"', html)}


def test_the_overview_and_its_exports_show_every_name_exactly(member, usage):
    html = get(member, "/t/acme/?period=today")
    assert card(html, "today") == "$2.78"  # 0.011 + 0.021 + ... + 0.231 = 2.783
    for name in ALL:
        assert escape(shown(name)) in html, name
    for table in ("end_users", "models", "operations"):
        rows = csv_of(member, f"/t/acme/?period=today&export={table}")
        assert {row[0] for row in rows[1:]} == set(ALL), table
        assert {row[0]: row[1] for row in rows[1:]} == {n: cost(i) for i, n in enumerate(ALL)}


# The period and stacking switches of a names page are the same links for every name: they are
# followed from a name in the path, names in the query string, and a legacy name with breaks.
SWITCHED = {"a/b/c", "..", "a//b", "emoji 🦊", "x\r\n y"}


@pytest.mark.slow  # follows every link of the overview
@pytest.mark.parametrize("kind", ["end_user", "model"])
def test_every_link_from_the_overview_opens_that_names_page(member, usage, kind):
    html = get(member, "/t/acme/?period=today")
    links = hrefs(html)
    for i, name in enumerate(ALL):
        url = drilldown_url("acme", kind, name, {"period": "today"})
        assert url in links, (name, url)
        page = get(member, url)
        label = "End user" if kind == "end_user" else "Model"
        assert f"{label} {escape(shown(name))}" in page, name
        assert card(page, "period") == f"${cost(i)}", name
        # The page's own exports and links work from its URL.
        other = "models" if kind == "end_user" else "end_users"
        export = unescape(re.search(rf'id="table-{other}".*?href="([^"]*)"', page, re.S).group(1))
        rows = csv_of(member, url.split("?")[0] + export)
        assert [row[0] for row in rows[1:]] == [name], name
        if name in SWITCHED:
            for group in re.findall(r'<div class="switch">.*?</div>', page, re.S):
                for link in hrefs(group):
                    assert member.get(url.split("?")[0] + link).status_code == 200


def test_a_name_with_line_breaks_keeps_them_through_the_filter_form(member, usage):
    name = "cr\rlf"
    url = drilldown_url("acme", "end_user", name)
    assert url == "/t/acme/users/?name=cr%0Dlf"
    page = get(member, url)
    # A browser reads a raw carriage return in an attribute as a line feed: it is a reference.
    assert '<input type="hidden" name="name" value="cr&#13;lf">' in page
    assert card(get(member, url + "&period=today"), "period") == f"${cost(ALL.index(name))}"


def test_names_that_are_clean_path_segments_keep_their_path(member, usage):
    assert drilldown_url("acme", "model", "a/b/c") == "/t/acme/models/a/b/c/"
    assert drilldown_url("acme", "model", "100% off") == "/t/acme/models/100%25%20off/"
    assert drilldown_url("acme", "model", "what?") == "/t/acme/models/what%3F/"
    assert drilldown_url("acme", "model", "#frag") == "/t/acme/models/%23frag/"
    assert drilldown_url("acme", "model", "emoji 🦊") == "/t/acme/models/emoji%20%F0%9F%A6%8A/"
    # Browsers rewrite `..` and empty segments, and proxies merge `//`: the query string then.
    assert drilldown_url("acme", "model", "..") == "/t/acme/models/?name=.."
    assert drilldown_url("acme", "model", "a//b") == "/t/acme/models/?name=a%2F%2Fb"
    assert drilldown_url("acme", "model", "trail/", {"period": "7d"}) == (
        "/t/acme/models/?name=trail%2F&period=7d"
    )
    # The path alerts link to answers for an ordinary name.
    assert card(get(member, "/t/acme/models/what%3F/?period=today"), "period") == "$0.101"


@pytest.mark.slow  # about 10 s
def test_budget_pages_link_to_their_scopes_page_for_any_name(member, usage, acme):
    for i, name in enumerate(ALL):
        for scope in ("end_user", "model"):
            budget = budget_create(
                tenant=acme,
                data={
                    "name": f"{scope} {i}",
                    "scope": scope,
                    "scope_value": name,
                    "limit_usd": Decimal("10"),
                },
            )
            page = get(member, f"/t/acme/budgets/{budget.pk}/")
            link = drilldown_url("acme", scope, name)
            assert link in hrefs(page), name
            assert member.get(link).status_code == 200
            days = csv_of(member, f"/t/acme/budgets/{budget.pk}/?export=days")
            assert days[-1][1] == cost(i), name
    rows = csv_of(member, "/t/acme/?export=budgets")
    labels = [Budget.Scope(s).label for s in ("end_user", "model")]
    assert {r[1] for r in rows[1:]} == {f"{label}: {n}" for n in ALL for label in labels}


def test_an_unpriced_model_alert_links_to_that_models_page(member, usage, acme):
    unpriced = [
        event(event_id=f"u{i}", occurred_at="2026-11-21T10:00:00Z", provider="custom", model=n)
        for i, n in enumerate(ALL)
    ]
    usage_record_batch(tenant=acme, events=parse_batch(unpriced, may_hold_refused=False))
    rule = AlertRule.objects.create(tenant=acme, name="unpriced", kind="unpriced")
    conditions = EVALUATORS["unpriced"](rule, acme, datetime.now(UTC))
    links = {c.link for c in conditions}
    for name in ALL:
        assert f"http://127.0.0.1:8000{drilldown_url('acme', 'model', name)}" in links, name
    for condition in conditions:
        Alert.objects.create(
            tenant=acme,
            rule=rule,
            scope=condition.scope,
            period=condition.period,
            level=condition.level,
            severity="warning",
            title=condition.title,
            text=condition.text,
            figure=condition.figure,
            link=condition.link,
        )
    # The overview lists the most recent alerts; each row keeps its name and its link works.
    titles = {c.title: c.link for c in conditions}
    rows = csv_of(member, "/t/acme/?export=alerts")
    assert len(rows) > 5
    html = get(member, "/t/acme/")
    for row in rows[1:]:
        link = titles[row[3]]
        assert link in hrefs(html), row[3]
        assert member.get(link.removeprefix("http://127.0.0.1:8000")).status_code == 200


def test_the_api_csv_export_keeps_every_name_exactly(usage, read_client):
    response = read_client.get("/api/v1/usage/?period=day&format=csv")
    assert response.status_code == 200
    body = b"".join(response.streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(body, newline="")))
    assert {r["end_user"] for r in rows} == set(ALL)
    assert {r["model"] for r in rows} == set(ALL)
    assert {r["tags"] for r in rows} == {json.dumps({"team": n}) for n in ALL}


def test_a_member_of_two_tenants_switches_on_an_odd_names_page(client, usage, acme, outsider):
    user = UserFactory(username="dana")
    membership_add(tenant=acme, user=user, role=Membership.Role.VIEWER)
    membership_add(tenant=outsider, user=user, role=Membership.Role.VIEWER)
    client.force_login(user)
    for name in ("line\nfeed", "a/b/c", ".."):
        page = get(client, drilldown_url("acme", "end_user", name, {"period": "today"}))
        [switch] = [h for h in hrefs(page) if h.startswith("/t/globex/")]
        assert switch.split("?")[0] + "?" in drilldown_url("globex", "end_user", name) + "?"
        assert "period=today" in switch
        other = get(client, switch)
        assert card(other, "period") == "$0"


def test_an_outsider_gets_404_for_every_page_of_acmes_names(client, outsider_user, usage):
    client.force_login(outsider_user)
    for name in ALL:
        for kind in ("end_user", "model"):
            assert client.get(drilldown_url("acme", kind, name)).status_code == 404
    html = get(client, "/t/globex/?period=today")
    for name in ("emoji 🦊", "עברית", "line\nfeed"):
        assert escape(shown(name)) not in html
