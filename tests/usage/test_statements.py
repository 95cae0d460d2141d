"""Chargeback statements: exact figures by model for a calendar month in the tenant's time zone,
the markup (rounded half-up to the nano-dollar per line), the page, its CSV and print view, the
`cost_report --statement` command, bad input, and an outsider that sees nothing.

Prices (tests/conftest.py): claude-haiku-4-5 $1 in / $5 out / $0.10 cached; gpt-4o-mini $0.15 /
$0.60; gpt-4o $2.50 / $10. acme's time zone is Europe/Paris (UTC+1 in November):
    c1 11-03 haiku        u1  customer=acme-corp  1000 in (400 cached), 200 out  $0.00164
    c2 11-10 gpt-4o-mini  u2  customer=acme-corp  2000 in, 1000 out              $0.0009
    c3 11-30 22:30Z haiku u2  customer=acme-corp  100 in (23:30 in Paris: November) $0.0001
    c4 11-30 23:30Z haiku u1  customer=acme-corp  (00:30 on 1 December in Paris: not November)
    c5 10-31 23:30Z haiku u2  customer=acme-corp  500 in, 100 out (00:30 on 1 November in Paris) $0.001
    c6 11-12 gpt-4o       u1  no tag              1000 in, 100 out               $0.0035
    c7 11-05 gpt-4o       u3  customer=other-co   1M in                          $2.50
globex (the outsider) tags a $2.50 gpt-4o call customer=acme-corp too.
customer=acme-corp in November: haiku 3 calls 1600 in / 300 out / 400 cached $0.00274;
gpt-4o-mini 1 call 2000 / 1000 / 0 $0.0009; $0.00364 in all.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.test import Client

from costmon.core import tenancy
from costmon.core.admin import TenantForm
from costmon.core.exceptions import DomainError
from costmon.core.models import Tenant
from tests.helpers import event
from usage.ingest import parse_batch
from usage.services import usage_record_batch
from usage.statements import (
    Subject,
    markup_of,
    parse_month,
    parse_subject,
    statement_for,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
NOW = "2026-12-02T12:00:00Z"
ACME_CORP = Subject("customer", "acme-corp")
NOVEMBER = date(2026, 11, 1)


def tagged(customer: str | None, **fields: Any) -> dict[str, Any]:
    return event(tags={"customer": customer} if customer else None, **fields)


ACME_EVENTS = [
    tagged(
        "acme-corp",
        event_id="c1",
        occurred_at="2026-11-03T10:00:00Z",
        end_user="u1",
        input_tokens=1000,
        cached_input_tokens=400,
        output_tokens=200,
    ),
    tagged(
        "acme-corp",
        event_id="c2",
        occurred_at="2026-11-10T10:00:00Z",
        provider="openai",
        model="gpt-4o-mini",
        end_user="u2",
        input_tokens=2000,
        output_tokens=1000,
    ),
    tagged(
        "acme-corp",
        event_id="c3",
        occurred_at="2026-11-30T22:30:00Z",
        end_user="u2",
        input_tokens=100,
        output_tokens=0,
    ),
    tagged(
        "acme-corp",
        event_id="c4",
        occurred_at="2026-11-30T23:30:00Z",
        end_user="u1",
        input_tokens=100,
        output_tokens=0,
    ),
    tagged(
        "acme-corp",
        event_id="c5",
        occurred_at="2026-10-31T23:30:00Z",
        end_user="u2",
        input_tokens=500,
        output_tokens=100,
    ),
    tagged(
        None,
        event_id="c6",
        occurred_at="2026-11-12T10:00:00Z",
        provider="openai",
        model="gpt-4o",
        end_user="u1",
        input_tokens=1000,
        output_tokens=100,
    ),
    tagged(
        "other-co",
        event_id="c7",
        occurred_at="2026-11-05T10:00:00Z",
        provider="openai",
        model="gpt-4o",
        end_user="u3",
        input_tokens=1_000_000,
        output_tokens=0,
    ),
]
GLOBEX_EVENTS = [
    tagged(
        "acme-corp",
        event_id="g1",
        occurred_at="2026-11-05T10:00:00Z",
        provider="openai",
        model="gpt-4o",
        end_user="u1",
        input_tokens=1_000_000,
        output_tokens=0,
    )
]


@pytest.fixture(autouse=True)
def _frozen_clock() -> Any:
    with time_machine.travel(NOW, tick=False):
        yield


def set_markup(tenant: Tenant, percent: str) -> None:
    with tenancy.unscoped():
        tenant.statement_markup_percent = Decimal(percent)
        tenant.save(update_fields=["statement_markup_percent"])


@pytest.fixture
def usage(request: pytest.FixtureRequest, acme: Tenant, outsider: Tenant) -> None:
    """The events above, in the event store the test runs against when it names one (`store`:
    PostgreSQL, ClickHouse, two ClickHouse shards), else in PostgreSQL."""
    if "store" in request.fixturenames:
        request.getfixturevalue("store")
    with tenancy.unscoped():
        acme.timezone = "Europe/Paris"
        acme.save(update_fields=["timezone"])
        usage_record_batch(tenant=acme, events=parse_batch(ACME_EVENTS))
        usage_record_batch(tenant=outsider, events=parse_batch(GLOBEX_EVENTS))
    set_markup(acme, "15")


def line_tuples(st: Any) -> list[tuple[Any, ...]]:
    return [
        (
            f"{x.provider}/{x.model}",
            x.calls,
            x.input_tokens,
            x.output_tokens,
            x.cached_input_tokens,
            x.cost_nanos,
            x.markup_nanos,
            x.total_nanos,
        )
        for x in st.lines
    ]


# --- the figures -----------------------------------------------------------------------------


def test_a_tag_statement_sums_the_month_in_the_tenants_zone_by_model_with_markup(
    usage, acme, store
):
    with tenancy.tenant_context(acme):
        st = statement_for(tenant=acme, subject=ACME_CORP, month=NOVEMBER)
    # 15% of $0.00274 is $0.000411; of $0.0009, $0.000135.
    assert line_tuples(st) == [
        ("anthropic/claude-haiku-4-5", 3, 1600, 300, 400, 2_740_000, 411_000, 3_151_000),
        ("openai/gpt-4o-mini", 1, 2000, 1000, 0, 900_000, 135_000, 1_035_000),
    ]
    assert st.markup_percent == Decimal("15.000")
    assert (st.total("calls"), st.total("cost_nanos")) == (4, 3_640_000)
    assert (st.total("markup_nanos"), st.total("total_nanos")) == (546_000, 4_186_000)


def test_an_end_user_statement_reads_that_users_rollups(usage, acme, store):
    with tenancy.tenant_context(acme):
        st = statement_for(tenant=acme, subject=Subject("end_user", "u1"), month=NOVEMBER)
    # c4 (u1, haiku) is on 1 December in Paris: not in November's statement.
    assert line_tuples(st) == [
        ("openai/gpt-4o", 1, 1000, 100, 0, 3_500_000, 525_000, 4_025_000),
        ("anthropic/claude-haiku-4-5", 1, 1000, 200, 400, 1_640_000, 246_000, 1_886_000),
    ]
    with tenancy.tenant_context(acme):
        december = statement_for(
            tenant=acme, subject=Subject("end_user", "u1"), month=date(2026, 12, 1)
        )
    assert line_tuples(december) == [
        ("anthropic/claude-haiku-4-5", 1, 100, 0, 0, 100_000, 15_000, 115_000)
    ]


def test_the_markup_is_rounded_half_up_to_the_nano_dollar_on_each_line(usage, acme, store):
    assert [markup_of(n, Decimal(10)) for n in (4, 5, 15, 25, 0)] == [0, 1, 2, 3, 0]
    set_markup(acme, "33.333")
    with tenancy.tenant_context(acme):
        st = statement_for(tenant=acme, subject=ACME_CORP, month=NOVEMBER)
    # 2,740,000 x 0.33333 = 913,324.2 -> 913,324; 900,000 x 0.33333 = 299,997.
    assert [x.markup_nanos for x in st.lines] == [913_324, 299_997]
    assert st.total("total_nanos") == 3_640_000 + 1_213_321


def test_without_a_markup_the_total_is_the_cost(usage, acme):
    set_markup(acme, "0")
    with tenancy.tenant_context(acme):
        st = statement_for(tenant=acme, subject=ACME_CORP, month=NOVEMBER)
    assert st.total("markup_nanos") == 0
    assert st.total("total_nanos") == st.total("cost_nanos") == 3_640_000


def test_the_outsider_sees_only_its_own_usage_of_the_same_tag(usage, acme, outsider, store):
    with tenancy.tenant_context(outsider):
        theirs = statement_for(tenant=outsider, subject=ACME_CORP, month=NOVEMBER)
    assert line_tuples(theirs) == [
        ("openai/gpt-4o", 1, 1_000_000, 0, 0, 2_500_000_000, 0, 2_500_000_000)
    ]
    # And acme's own statement never holds globex's $2.50 gpt-4o call.
    with tenancy.tenant_context(acme):
        mine = statement_for(tenant=acme, subject=ACME_CORP, month=NOVEMBER)
    assert "openai/gpt-4o" not in [row[0] for row in line_tuples(mine)]


def test_unpriced_calls_are_counted_and_the_statement_says_so(usage, acme, owner, store):
    unpriced = tagged(
        "acme-corp",
        event_id="c8",
        occurred_at="2026-11-20T10:00:00Z",
        provider="newco",
        model="x-1",
        input_tokens=700,
        output_tokens=70,
    )
    with tenancy.unscoped():
        usage_record_batch(tenant=acme, events=parse_batch([unpriced]))
    with tenancy.tenant_context(acme):
        st = statement_for(tenant=acme, subject=ACME_CORP, month=NOVEMBER)
    assert line_tuples(st)[-1] == ("newco/x-1", 1, 700, 70, 0, 0, 0, 0)
    assert (st.lines[-1].unpriced_calls, st.total("unpriced_calls"), st.total("calls")) == (1, 1, 5)
    warning = (
        "1 call(s) had no price in the catalog and count as $0 (newco/x-1): add their prices "
        "(admin, Model prices), re-price, and issue the statement again."
    )
    assert st.unpriced_warning == warning
    assert f"Warning: {warning}" in command(
        "--statement", "customer=acme-corp", "--month", "2026-11"
    )
    client = Client()
    client.force_login(owner)
    page = client.get(URL, {"subject": "customer=acme-corp", "month": "2026-11"})
    assert warning in page.content.decode()
    rows = list(
        csv.DictReader(
            io.StringIO(
                client.get(
                    URL, {"subject": "customer=acme-corp", "month": "2026-11", "format": "csv"}
                ).content.decode()
            )
        )
    )
    assert [(r["model"], r["unpriced_calls"]) for r in rows][-2:] == [("x-1", "1"), ("", "1")]


# --- input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("customer=acme-corp", ("customer", "acme-corp")), (" end_user = u 1 ", ("end_user", "u 1"))],
)
def test_a_subject_is_key_equals_value(text, expected):
    subject = parse_subject(text)
    assert (subject.key, subject.value) == expected


@pytest.mark.parametrize("text", ["customer", "=acme", "customer=", "  ", "x" * 65 + "=y"])
def test_a_subject_that_is_not_key_equals_value_says_how_to_write_it(text):
    with pytest.raises(DomainError) as caught:
        parse_subject(text)
    assert "customer=acme-corp" in caught.value.message or "at most" in caught.value.message


@pytest.mark.parametrize(
    "text", ["2026-13", "2026-00", "11-2026", "2026-1", "2026-11-01", "1999-12", "next"]
)
def test_a_month_must_be_yyyy_mm(text):
    with pytest.raises(DomainError, match="write it as YYYY-MM"):
        parse_month(text)


def test_the_admin_form_edits_the_markup(acme):
    data = {"slug": "acme", "name": "Acme Corp", "timezone": "UTC", "prices_auto_apply": "on"}
    form = TenantForm(data={**data, "statement_markup_percent": "12.5"}, instance=acme)
    assert form.is_valid(), form.errors
    assert form.cleaned_data["statement_markup_percent"] == Decimal("12.5")
    negative = TenantForm(data={**data, "statement_markup_percent": "-1"}, instance=acme)
    assert not negative.is_valid()
    assert "statement_markup_percent" in negative.errors


# --- the command -----------------------------------------------------------------------------


def command(*args: str) -> str:
    out = io.StringIO()
    call_command("cost_report", *args, stdout=out)
    return out.getvalue()


def test_cost_report_prints_the_statement_as_a_table(usage):
    out = command("--statement", "customer=acme-corp", "--month", "2026-11")
    assert out.splitlines()[:2] == [
        "Statement for customer=acme-corp: acme (Acme Corp), November 2026 (Europe/Paris)",
        "  Markup 15%",
    ]
    total = [line for line in out.splitlines() if line.strip().startswith("Total")]
    assert total and "$0.00364" in total[0] and "$0.004186" in total[0]
    # Without --tenant, every tenant with usage for the tag: globex's own $2.50 in its own.
    acme_part, globex_part = out.split("\n\n\n")
    assert "gpt-4o " not in acme_part and "2.5" not in acme_part
    assert globex_part.startswith("Statement for customer=acme-corp: globex")
    assert globex_part.splitlines()[-1].split()[:2] == ["Total", "$2.5"]


def test_cost_report_statement_csv_is_exact(usage, store):
    out = command(
        "--statement",
        "customer=acme-corp",
        "--month",
        "2026-11",
        "--tenant",
        "acme",
        "--format",
        "csv",
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [
        (r["provider"], r["model"], r["calls"], r["cost_usd"], r["markup_usd"], r["total_usd"])
        for r in rows
    ] == [
        ("anthropic", "claude-haiku-4-5", "3", "0.00274", "0.000411", "0.003151"),
        ("openai", "gpt-4o-mini", "1", "0.0009", "0.000135", "0.001035"),
        ("total", "", "4", "0.00364", "0.000546", "0.004186"),
    ]
    assert {r["markup_percent"] for r in rows} == {"15"}
    assert {r["tenant"] for r in rows} == {"acme"}


def test_cost_report_statement_json_for_an_end_user(usage):
    out = command(
        "--statement", "end_user=u1", "--month", "2026-11", "--tenant", "acme", "--format", "json"
    )
    (st,) = json.loads(out)["statements"]
    assert st["subject"] == "end_user=u1" and st["time_zone"] == "Europe/Paris"
    assert st["total"] == {
        "calls": 2,
        "unpriced_calls": 0,
        "input_tokens": 2000,
        "output_tokens": 300,
        "cached_input_tokens": 400,
        "cost_usd": "0.00514",
        "markup_usd": "0.000771",
        "total_usd": "0.005911",
    }


def test_cost_report_statement_for_nobody_says_so(usage):
    assert command("--statement", "customer=nobody", "--month", "2026-11") == (
        "No usage for customer=nobody in 2026-11 in any tenant.\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--statement", "customer"], "--statement"),
        (["--statement", "customer=acme-corp", "--month", "2026-13"], "--month"),
        (["--statement", "customer=acme-corp", "--period", "month"], "--month YYYY-MM"),
        (["--month", "2026-11"], "--month goes with --statement"),
        (["--statement", "customer=acme-corp", "--tenant", "nope"], "No tenant 'nope'"),
    ],
)
def test_cost_report_statement_bad_input_is_a_clear_error(usage, args, message):
    with pytest.raises(CommandError, match=message):
        command(*args)


# --- the page --------------------------------------------------------------------------------


@pytest.fixture
def client(owner: Any) -> Client:
    c = Client()
    c.force_login(owner)
    return c


URL = "/t/acme/statements/"


def test_the_page_shows_the_statement_with_markup_and_total(usage, client):
    response = client.get(URL, {"subject": "customer=acme-corp", "month": "2026-11"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "Statement for customer=acme-corp" in page
    assert "November 2026" in page and "Europe/Paris" in page and "markup 15%" in page
    for figure in ("$0.00364", "$0.000546", "$0.004186", "$0.00274", "$0.000411", "$0.003151"):
        assert figure in page
    assert "1,600" in page and "globex" not in page.lower()
    assert "format=csv" in page and "format=print" in page


def test_the_page_csv_is_exact(usage, client, store):
    response = client.get(
        URL, {"subject": "customer=acme-corp", "month": "2026-11", "format": "csv"}
    )
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="acme-statement-2026-11.csv"'
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert rows[-1]["provider"] == "total"
    assert (rows[-1]["cost_usd"], rows[-1]["markup_usd"], rows[-1]["total_usd"]) == (
        "0.00364",
        "0.000546",
        "0.004186",
    )


def test_the_print_view_is_a_document_of_its_own_with_a_print_stylesheet(usage, client):
    response = client.get(
        URL, {"subject": "customer=acme-corp", "month": "2026-11", "format": "print"}
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert "@page" in page and "@media print" in page
    assert 'class="topbar"' not in page and "$0.004186" in page


def test_an_end_users_drilldown_links_to_their_statement(usage, client):
    page = client.get("/t/acme/users/u1/").content.decode()
    assert 'href="/t/acme/statements/?subject=end_user%3Du1"' in page
    statement = client.get("/t/acme/statements/?subject=end_user%3Du1&month=2026-11")
    assert "$0.005911" in statement.content.decode()
    overview = client.get("/t/acme/").content.decode()
    assert 'href="/t/acme/statements/"' in overview
    tagged_view = client.get("/t/acme/", {"tag": "customer:acme-corp"}).content.decode()
    assert (
        '<a class="statement-link" href="/t/acme/statements/?subject=customer%3Dacme-corp">'
        "Statement for customer=acme-corp</a>"
    ) in tagged_view


def test_without_a_subject_the_page_explains_what_to_enter(usage, client):
    response = client.get(URL)
    assert response.status_code == 200
    assert "customer=acme-corp" in response.content.decode()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"subject": "customer", "month": "2026-11"}, "is not key=value"),
        ({"subject": "customer=acme-corp", "month": "2026-13"}, "write it as YYYY-MM"),
    ],
)
def test_bad_input_on_the_page_is_a_400_that_says_how_to_write_it(usage, client, params, message):
    response = client.get(URL, params)
    assert response.status_code == 400
    assert message in response.content.decode()
    as_csv = client.get(URL, {**params, "format": "csv"})
    assert as_csv.status_code == 400 and message in as_csv.content.decode()


def test_an_unknown_format_is_a_400(usage, client):
    response = client.get(URL, {"subject": "customer=acme-corp", "format": "pdf"})
    assert response.status_code == 400
    assert "use html, csv or print" in response.content.decode()


def test_the_outsider_gets_a_404_for_acmes_statement(usage, outsider_user):
    c = Client()
    c.force_login(outsider_user)
    response = c.get(URL, {"subject": "customer=acme-corp", "month": "2026-11"})
    assert response.status_code == 404
    assert (
        "acme-corp" not in response.content.decode() or "0.00364" not in response.content.decode()
    )
    own = c.get("/t/globex/statements/", {"subject": "customer=acme-corp", "month": "2026-11"})
    assert own.status_code == 200
    assert "$2.50" in own.content.decode() and "claude-haiku" not in own.content.decode()


def test_anonymous_visitors_are_sent_to_log_in(usage):
    response = Client().get(URL, {"subject": "customer=acme-corp"})
    assert response.status_code == 302 and "/login/" in response["Location"]
