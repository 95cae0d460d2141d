"""Staff's admin for budgets, rate limits and the emergency stop: every tenant's rows, writes
through the services, and checks that see what staff changed."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.utils.html import escape

from budgets import config
from budgets.admin import budgets as budgets_admin
from budgets.emergency_stop import emergency_stop_lift, emergency_stop_trip
from budgets.models import (
    Budget,
    BudgetDefaults,
    CounterCorrection,
    CounterState,
    EmergencyStop,
    EmergencyStopRule,
    RateLimit,
)
from budgets.services import budget_create
from costmon.core.services import api_key_create
from tests.budgets.conftest import check
from tests.helpers import event, post_usage, requires_redis

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "ready", "unscoped")]
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # the clock tests/budgets/conftest.py freezes

CHANGELISTS = {
    # admin path: the owner each listed row shows
    "budgets/budget": lambda row: row.tenant.slug,
    "budgets/ratelimit": lambda row: row.tenant.slug,
    "budgets/emergencystoprule": lambda row: row.tenant.slug if row.tenant_id else "all tenants",
    "budgets/emergencystop": lambda row: row.tenant.slug if row.tenant_id else "global",
    "budgets/counterstate": lambda row: row.tenant.slug,
    "budgets/budgetdefaults": lambda row: row.tenant.slug,
    "budgets/countercorrection": lambda row: row.tenant.slug,
}
EXPECTED_OWNERS = {"budgets/emergencystoprule": {"acme", "globex", "all tenants"}}


@pytest.fixture
def two_tenants(acme, outsider, admin_user):
    """Rows of every kind for both tenants (and the global ones)."""
    key = api_key_create(tenant=acme, scopes="ingest", name="ci").api_key
    budget_create(tenant=acme, data={"name": "Acme monthly", "limit_usd": Decimal("10")})
    budget_create(
        tenant=acme,
        data={
            "name": "CI key",
            "scope": "api_key",
            "api_key": key,
            "period": "rolling",
            "rolling_days": 7,
            "limit_usd": Decimal("1"),
        },
    )
    budget_create(
        tenant=outsider,
        data={
            "name": "Globex gpt-4o",
            "scope": "model",
            "scope_value": "gpt-4o",
            "period": "day",
            "limit_usd": Decimal("5"),
        },
    )
    RateLimit.objects.create(tenant=acme, scope="end_user", max_requests=60)
    RateLimit.objects.create(tenant=outsider, scope="ip", value="10.0.0.1", max_tokens=100_000)
    EmergencyStopRule.objects.create(tenant=acme, threshold_usd=Decimal("50"))
    EmergencyStopRule.objects.create(tenant=outsider, window="hour", threshold_usd=Decimal("5"))
    rule = EmergencyStopRule.objects.create(window="month", threshold_usd=Decimal("1000"))
    emergency_stop_trip(tenant=acme, reason="runaway agent", user=admin_user)
    emergency_stop_trip(tenant=outsider, reason="over", rule=rule, spend_nanos=1_000_500_000_000)
    emergency_stop_lift(tenant=outsider, reason="checked")
    CounterState.objects.create(tenant=acme, stale_since=NOW)
    CounterState.objects.create(tenant=outsider, stale_since=NOW - timedelta(minutes=5))
    BudgetDefaults.objects.create(tenant=acme, fail_mode="open")
    BudgetDefaults.objects.create(tenant=outsider)
    CounterCorrection.objects.create(tenant=acme, cause="sample", fields=2, drift_nanos=5_070)
    CounterCorrection.objects.create(tenant=outsider, cause="rebuild", fields=1, drift_nanos=7)
    return acme, outsider


def budget_form(tenant, **changes) -> dict[str, str]:
    """The add form of a budget as a browser would post it."""
    data = {
        "tenant": str(tenant.pk),
        "name": "Acme monthly",
        "is_active": "on",
        "scope": "tenant",
        "scope_value": "",
        "api_key": "",
        "period": "month",
        "rolling_days": "",
        "limit_usd": "10",
        "thresholds": "80, 95",
        "enforcement": "hard",
        "suggested_model": "",
    }
    data.update(changes)
    return data


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def form_errors(response) -> dict[str, list[str]]:
    return response.context["adminform"].form.errors


def versions(*tenant_ids) -> list[object]:
    return [cache.get(config.version_key(t)) for t in tenant_ids]


# --- every page, every tenant -----------------------------------------------------------------


@pytest.mark.parametrize("path", CHANGELISTS)
def test_staff_see_every_tenants_rows_in_each_list(admin_client, two_tenants, path):
    response = admin_client.get(f"/admin/{path}/")

    assert response.status_code == 200
    owners = {CHANGELISTS[path](row) for row in response.context["cl"].result_list}
    assert owners == EXPECTED_OWNERS.get(path, {"acme", "globex"})


@pytest.mark.parametrize(
    "path",
    [
        "budgets/budget",
        "budgets/ratelimit",
        "budgets/emergencystoprule",
        "budgets/emergencystop",
        "budgets/budgetdefaults",
    ],
)
def test_each_add_page_opens(admin_client, two_tenants, path):
    response = admin_client.get(f"/admin/{path}/add/")

    assert response.status_code == 200
    # The empty add form of that model, not a redirect or another page.
    assert response.context["title"] == f"Add {response.context['opts'].verbose_name}"
    assert response.context["adminform"].form.instance.pk is None


def test_counter_states_cannot_be_added_changed_or_deleted(admin_client, two_tenants):
    acme, _ = two_tenants

    assert admin_client.get("/admin/budgets/counterstate/add/").status_code == 403
    assert admin_client.get(f"/admin/budgets/counterstate/{acme.pk}/change/").status_code == 200
    delete = admin_client.post(f"/admin/budgets/counterstate/{acme.pk}/delete/", {"post": "yes"})
    assert delete.status_code == 403
    assert CounterState.objects.unscoped().count() == 2


@pytest.mark.parametrize(
    "model",
    [
        Budget,
        RateLimit,
        EmergencyStopRule,
        EmergencyStop,
        CounterState,
        BudgetDefaults,
        CounterCorrection,
    ],
)
def test_every_row_opens(admin_client, two_tenants, model):
    rows = list(model.objects.unscoped())
    assert rows  # the fixture made some: an empty loop would prove nothing
    for row in rows:
        path = f"/admin/budgets/{model._meta.model_name}/{row.pk}/change/"
        response = admin_client.get(path)
        assert response.status_code == 200, path
        # The page shows that row, by the name staff know it by.
        assert response.context["original"].pk == row.pk, path
        assert escape(str(row)) in response.content.decode(), path


def test_the_lists_say_what_each_row_covers(admin_client, two_tenants):
    budgets = admin_client.get("/admin/budgets/budget/").content.decode()
    limits = admin_client.get("/admin/budgets/ratelimit/").content.decode()
    rules = admin_client.get("/admin/budgets/emergencystoprule/").content.decode()
    stops = admin_client.get("/admin/budgets/emergencystop/").content.decode()

    assert '<td class="field-covers">a model: gpt-4o</td>' in budgets
    assert '<td class="field-period_text">rolling 7 days</td>' in budgets
    assert '<td class="field-limit">$10.00</td>' in budgets
    assert '<td class="field-value_or_each">each</td>' in limits
    assert '<td class="field-value_or_each">10.0.0.1</td>' in limits
    assert re.search(r'<th class="field-tenant_or_all"><a href="[^"]+">all tenants</a></th>', rules)
    assert '<td class="field-threshold">$1,000.00</td>' in rules
    assert '<td class="field-tripped_by_text">rule</td>' in stops
    assert '<td class="field-spend_at_trip">$1,000.50</td>' in stops
    assert '<td class="field-tripped_by_text">admin</td>' in stops


def test_non_staff_members_are_sent_to_the_login_page(client, owner, two_tenants):
    client.force_login(owner)

    response = client.get("/admin/budgets/budget/")

    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/admin/budgets/budget/"


# --- budgets ----------------------------------------------------------------------------------


def test_a_budget_added_in_admin_is_seen_by_the_next_check(
    admin_client, acme, outsider, ingest_client, django_capture_on_commit_callbacks
):
    # The check has cached the tenant's configuration: only the version bump makes it reload.
    assert check(ingest_client, end_user="u1").json()["budgets"] == []
    before = versions(outsider.pk, None)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/budgets/budget/add/", budget_form(acme, limit_usd="0.75")
        )

    assert response.status_code == 302
    budget = Budget.objects.unscoped().get()
    assert (budget.tenant_id, budget.name, budget.limit_usd, budget.thresholds) == (
        acme.pk,
        "Acme monthly",
        Decimal("0.75"),
        [80, 95],
    )
    reply = check(
        ingest_client,
        end_user="u1",
        provider="anthropic",
        model="claude-haiku-4-5",
        estimated_cost_usd="0.5",
    ).json()
    assert [(b["id"], b["limit_usd"], b["enforcement"]) for b in reply["budgets"]] == [
        (budget.pk, "0.75", "hard")
    ]
    # The outsider's checks are not touched by acme's budget.
    assert versions(outsider.pk, None) == before


@pytest.mark.parametrize(
    ("changes", "errors"),
    [
        (
            {"thresholds": "120"},
            {
                "thresholds": [
                    "120 is outside 0-100%: each threshold is a percentage above 0 and at most 100."
                ]
            },
        ),
        (
            {"limit_usd": "-5"},
            {"limit_usd": ["Ensure this value is greater than or equal to 0.000001."]},
        ),
        (
            {"scope": "model"},
            {"scope_value": ["Say which model this budget covers."]},
        ),
    ],
)
def test_a_bad_budget_is_refused_with_a_form_error(admin_client, acme, changes, errors):
    before = versions(acme.pk)

    response = admin_client.post("/admin/budgets/budget/add/", budget_form(acme, **changes))

    assert response.status_code == 200
    assert form_errors(response) == errors
    assert Budget.objects.unscoped().count() == 0
    assert versions(acme.pk) == before


# --- thresholds, typed as a list ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("80, 95", [80, 95]),
        ("95,80", [80, 95]),  # in order, whatever order they were typed in
        ("50 75 90", [50, 75, 90]),
        ("80.5%; 100%", [80.5, 100]),
        ("60, 90,", [60, 90]),
        ("[80, 95]", [80, 95]),  # as the field was typed when it took JSON
    ],
)
def test_thresholds_are_typed_as_a_list_of_percentages(admin_client, acme, outsider, typed, stored):
    response = admin_client.post("/admin/budgets/budget/add/", budget_form(acme, thresholds=typed))

    assert response.status_code == 302
    assert Budget.objects.unscoped().get().thresholds == stored
    assert not Budget.objects.unscoped().filter(tenant=outsider).exists()


@pytest.mark.parametrize(
    ("typed", "error"),
    [
        ("", "Give at least one percentage, e.g. 80, 95."),
        (
            "80, nine-five",
            "“nine-five” is not a number: give percentages separated by commas, e.g. 80, 95.",
        ),
        ("80, (95)", "“(95)” is not a number: give percentages separated by commas, e.g. 80, 95."),
        ("80, NaN", "“NaN” is not a number: give percentages separated by commas, e.g. 80, 95."),
        ("0, 95", "0 is outside 0-100%: each threshold is a percentage above 0 and at most 100."),
        ("80, 80.0", "Thresholds must differ from each other."),
    ],
)
def test_a_threshold_that_is_not_a_percentage_is_refused_by_name(admin_client, acme, typed, error):
    response = admin_client.post("/admin/budgets/budget/add/", budget_form(acme, thresholds=typed))

    assert response.status_code == 200
    assert form_errors(response) == {"thresholds": [error]}
    assert Budget.objects.unscoped().count() == 0


def test_a_budgets_thresholds_are_shown_and_changed_as_a_list(admin_client, acme, outsider):
    budget = budget_create(
        tenant=acme,
        data={"name": "Acme monthly", "limit_usd": Decimal("10"), "thresholds": [50, 80.5]},
    )
    other = budget_create(tenant=outsider, data={"name": "Globex", "limit_usd": Decimal("1")})
    page = f"/admin/budgets/budget/{budget.pk}/change/"

    shown = admin_client.get(page).content.decode()
    assert 'name="thresholds" value="50, 80.5"' in shown

    form = budget_form(acme, thresholds="70, 90, 100", limit_usd="10")
    del form["tenant"]  # read-only once saved
    assert admin_client.post(page, form).status_code == 302
    budget.refresh_from_db()
    other.refresh_from_db()
    assert (budget.thresholds, other.thresholds) == ([70, 90, 100], [80, 95])


def test_another_tenants_api_key_is_refused_on_the_key_field(admin_client, acme, outsider):
    foreign = api_key_create(tenant=outsider, scopes="ingest", name="globex ci").api_key

    response = admin_client.post(
        "/admin/budgets/budget/add/",
        budget_form(acme, scope="api_key", api_key=str(foreign.pk)),
    )

    assert response.status_code == 200
    assert form_errors(response) == {"api_key": ["That API key belongs to another tenant."]}
    assert "That API key belongs to another tenant." in response.content.decode()
    assert Budget.objects.unscoped().count() == 0


def test_a_saved_budget_offers_only_its_tenants_live_keys(admin_client, acme, outsider):
    own = api_key_create(tenant=acme, scopes="ingest", name="ci").api_key
    revoked = api_key_create(tenant=acme, scopes="ingest", name="old").api_key
    revoked.revoked_at = NOW
    revoked.save()
    api_key_create(tenant=outsider, scopes="ingest")
    budget = budget_create(
        tenant=acme,
        data={"name": "CI", "scope": "api_key", "api_key": own, "limit_usd": Decimal("1")},
    )

    response = admin_client.get(f"/admin/budgets/budget/{budget.pk}/change/")

    offered = response.context["adminform"].form.fields["api_key"].queryset
    assert [k.pk for k in offered] == [own.pk]


def test_the_budget_list_shows_the_exact_spend_this_period(
    admin_client, acme, outsider, ingest_client
):
    budget_create(tenant=acme, data={"name": "Acme monthly", "limit_usd": Decimal("0.0015")})
    budget_create(tenant=outsider, data={"name": "Globex monthly", "limit_usd": Decimal("1")})
    # 450 input at $1 + 180 output at $5 per million = $0.00135, 90% of $0.0015
    assert post_usage(ingest_client, event()).status_code == 201

    response = admin_client.get("/admin/budgets/budget/")

    body = response.content.decode()
    assert (
        '<td class="field-limit">$0.0015</td><td class="field-spent">$0.00135</td>'
        '<td class="field-percent">90.00%</td><td class="field-status">warning</td>'
    ) in body
    assert (
        '<td class="field-limit">$1.00</td><td class="field-spent">$0</td>'
        '<td class="field-percent">0.00%</td><td class="field-status">ok</td>'
    ) in body


def test_the_budget_list_reads_spend_once_per_tenant_on_the_page(
    admin_client, acme, outsider, monkeypatch
):
    for n in range(3):
        budget_create(tenant=acme, data={"name": f"Acme {n}", "limit_usd": Decimal("1")})
    budget_create(tenant=outsider, data={"name": "Globex", "limit_usd": Decimal("1")})
    calls = []
    real = budgets_admin.budget_views

    def spy(*, tenant, budgets):
        calls.append((tenant.slug, sorted(b.name for b in budgets)))
        return real(tenant=tenant, budgets=budgets)

    monkeypatch.setattr(budgets_admin, "budget_views", spy)

    assert admin_client.get("/admin/budgets/budget/").status_code == 200

    assert sorted(calls) == [("acme", ["Acme 0", "Acme 1", "Acme 2"]), ("globex", ["Globex"])]


def test_editing_a_budget_goes_through_the_service_and_bumps_its_tenant(
    admin_client, acme, outsider, ingest_client, django_capture_on_commit_callbacks
):
    budget = budget_create(tenant=acme, data={"name": "Acme monthly", "limit_usd": Decimal("1")})
    assert check(ingest_client).json()["budgets"][0]["limit_usd"] == "1"

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            f"/admin/budgets/budget/{budget.pk}/change/",
            budget_form(outsider, limit_usd="2", enforcement="soft"),
        )

    assert response.status_code == 302
    budget.refresh_from_db()
    assert (budget.tenant_id, budget.limit_usd, budget.enforcement) == (
        acme.pk,  # the tenant is read-only once the budget exists
        Decimal("2"),
        "soft",
    )
    assert check(ingest_client).json()["budgets"][0]["limit_usd"] == "2"


def test_deleting_budgets_goes_through_the_service(
    admin_client, acme, outsider, ingest_client, django_capture_on_commit_callbacks
):
    one = budget_create(tenant=acme, data={"name": "One", "limit_usd": Decimal("1")})
    two = budget_create(tenant=acme, data={"name": "Two", "limit_usd": Decimal("1")})
    kept = budget_create(tenant=outsider, data={"name": "Kept", "limit_usd": Decimal("1")})
    assert len(check(ingest_client).json()["budgets"]) == 2

    with django_capture_on_commit_callbacks(execute=True):
        single = admin_client.post(f"/admin/budgets/budget/{one.pk}/delete/", {"post": "yes"})
    assert single.status_code == 302
    assert [b["id"] for b in check(ingest_client).json()["budgets"]] == [two.pk]

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            "/admin/budgets/budget/",
            {"action": "delete_selected", "_selected_action": [two.pk], "post": "yes"},
        )
    assert list(Budget.objects.unscoped().values_list("pk", flat=True)) == [kept.pk]
    assert check(ingest_client).json()["budgets"] == []


# --- rate limits and stop rules ---------------------------------------------------------------


def test_a_rate_limit_saved_in_admin_bumps_its_tenant_after_commit(
    admin_client, acme, outsider, django_capture_on_commit_callbacks
):
    before = versions(acme.pk, outsider.pk, None)

    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_client.post(
            "/admin/budgets/ratelimit/add/",
            {
                "tenant": acme.pk,
                "scope": "end_user",
                "value": "",
                "window_seconds": "60",
                "max_requests": "1",
                "max_tokens": "",
            },
        )
    assert response.status_code == 302
    assert versions(acme.pk, outsider.pk, None) == before  # nothing announced before the commit
    for callback in callbacks:
        callback()

    after = versions(acme.pk, outsider.pk, None)
    assert after[0] != before[0]
    assert after[1:] == before[1:]
    limit = RateLimit.objects.unscoped().get()
    assert (limit.tenant_id, limit.max_requests) == (acme.pk, 1)


@requires_redis
def test_a_rate_limit_added_in_admin_limits_the_next_checks(
    admin_client, acme, ingest_client, django_capture_on_commit_callbacks
):
    assert check(ingest_client, end_user="u1").status_code == 200

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            "/admin/budgets/ratelimit/add/",
            {"tenant": acme.pk, "scope": "end_user", "window_seconds": "60", "max_requests": "1"},
        )

    assert check(ingest_client, end_user="u1").status_code == 200
    refused = check(ingest_client, end_user="u1")
    assert (refused.status_code, refused.json()["reasons"]) == (429, ["rate_limited"])


def test_a_rate_limit_without_any_limit_is_refused(admin_client, acme):
    response = admin_client.post(
        "/admin/budgets/ratelimit/add/",
        {"tenant": acme.pk, "scope": "end_user", "window_seconds": "60"},
    )

    assert response.status_code == 200
    assert form_errors(response) == {"__all__": ["Set a request limit, a token limit, or both."]}


def test_deleting_rate_limits_bumps_each_tenant(
    admin_client, two_tenants, django_capture_on_commit_callbacks
):
    acme, outsider = two_tenants
    ids = list(RateLimit.objects.unscoped().values_list("pk", flat=True))
    before = versions(acme.pk, outsider.pk)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/budgets/ratelimit/",
            {"action": "delete_selected", "_selected_action": ids, "post": "yes"},
        )

    assert response.status_code == 302
    assert RateLimit.objects.unscoped().count() == 0
    after = versions(acme.pk, outsider.pk)
    assert after[0] != before[0] and after[1] != before[1]


def test_a_global_stop_rule_bumps_the_global_version_and_a_moved_rule_both_tenants(
    admin_client, acme, outsider, django_capture_on_commit_callbacks
):
    form = {"tenant": "", "window": "day", "threshold_usd": "100", "duration_minutes": "60"}
    before = versions(None, acme.pk, outsider.pk)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post("/admin/budgets/emergencystoprule/add/", form)
    assert response.status_code == 302
    rule = EmergencyStopRule.objects.unscoped().get()
    assert rule.tenant_id is None
    after = versions(None, acme.pk, outsider.pk)
    assert after[0] != before[0]
    assert after[1:] == before[1:]

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            f"/admin/budgets/emergencystoprule/{rule.pk}/change/",
            {**form, "tenant": acme.pk, "is_active": "on"},
        )
    moved = versions(None, acme.pk, outsider.pk)
    assert moved[0] != after[0] and moved[1] != after[1]
    assert moved[2] == after[2]


# --- the emergency stop -----------------------------------------------------------------------


def test_a_stop_tripped_in_admin_blocks_checks_until_lifted(
    admin_client, admin_user, acme, outsider, ingest_client, outsider_client
):
    response = admin_client.post(
        "/admin/budgets/emergencystop/add/",
        {"tenant": acme.pk, "reason": "runaway agent", "duration_minutes": "30"},
        follow=True,
    )

    assert messages_of(response) == ["Emergency stop tripped for acme until 2026-11-21 12:30 UTC."]
    stop = EmergencyStop.objects.unscoped().get()
    assert (stop.tenant_id, stop.reason, stop.tripped_by_id, stop.expires_at) == (
        acme.pk,
        "runaway agent",
        admin_user.pk,
        NOW + timedelta(minutes=30),
    )
    blocked = check(ingest_client, estimated_cost_usd="0.5").json()
    assert (blocked["allowed"], blocked["reasons"]) == (False, ["emergency_stop"])
    assert check(outsider_client).json()["allowed"] is True

    response = admin_client.post(
        "/admin/budgets/emergencystop/",
        {"action": "lift_stops", "index": 0, "_selected_action": [stop.pk]},
        follow=True,
    )

    assert messages_of(response) == ["Lifted 1 stop: acme."]
    stop.refresh_from_db()
    assert (stop.lifted_at, stop.lifted_by_id, stop.lift_reason) == (
        NOW,
        admin_user.pk,
        "lifted in admin",
    )
    allowed = check(ingest_client, estimated_cost_usd="0.5").json()
    assert (allowed["allowed"], allowed["reasons"]) == (True, [])


def test_a_stop_without_a_tenant_is_global(admin_client, acme, ingest_client, outsider_client):
    response = admin_client.post(
        "/admin/budgets/emergencystop/add/",
        {"tenant": "", "reason": "provider incident", "duration_minutes": "60"},
        follow=True,
    )

    assert messages_of(response) == [
        "Emergency stop tripped for every tenant (global) until 2026-11-21 13:00 UTC."
    ]
    assert EmergencyStop.objects.unscoped().get().tenant_id is None
    for client in (ingest_client, outsider_client):
        assert check(client).json()["reasons"] == ["emergency_stop"]


def test_tripping_while_a_stop_is_active_changes_nothing_and_says_so(admin_client, acme):
    first = emergency_stop_trip(tenant=acme, reason="first")

    response = admin_client.post(
        "/admin/budgets/emergencystop/add/",
        {"tenant": acme.pk, "reason": "second", "duration_minutes": "60"},
        follow=True,
    )

    assert messages_of(response) == [
        "A stop for acme is already active (tripped 2026-11-21 12:00 UTC, until 2026-11-21 "
        "13:00 UTC): nothing changed. Lift it first to trip a new one."
    ]
    assert list(EmergencyStop.objects.unscoped().values_list("pk", "reason")) == [
        (first.pk, "first")
    ]


def test_a_stop_needs_a_reason_and_a_duration_within_a_week(admin_client, acme):
    response = admin_client.post(
        "/admin/budgets/emergencystop/add/",
        {"tenant": acme.pk, "reason": "  ", "duration_minutes": "10081"},
    )

    assert form_errors(response) == {
        "reason": ["This field is required."],
        "duration_minutes": ["Ensure this value is less than or equal to 10080."],
    }
    assert EmergencyStop.objects.unscoped().count() == 0


def test_lifting_reports_stops_already_over(admin_client, two_tenants):
    ids = list(EmergencyStop.objects.unscoped().values_list("pk", flat=True))

    response = admin_client.post(
        "/admin/budgets/emergencystop/",
        {"action": "lift_stops", "index": 0, "_selected_action": ids},
        follow=True,
    )

    assert messages_of(response) == [
        "Lifted 1 stop: acme.",
        "1 stop already over (lifted or expired): nothing to lift.",
    ]
    assert EmergencyStop.objects.unscoped().filter(lifted_at__isnull=True).count() == 0


def test_stops_are_history_never_edited_or_deleted(admin_client, two_tenants):
    stop = EmergencyStop.objects.unscoped().get(tenant=two_tenants[0])
    path = f"/admin/budgets/emergencystop/{stop.pk}/"

    view = admin_client.get(f"{path}change/")
    change = admin_client.post(f"{path}change/", {"reason": "rewritten"})
    delete = admin_client.post(f"{path}delete/", {"post": "yes"})

    assert view.status_code == 200
    assert '<div class="readonly">runaway agent</div>' in view.content.decode()
    assert (change.status_code, delete.status_code) == (403, 403)
    stop.refresh_from_db()
    assert (stop.reason, stop.lifted_at) == ("runaway agent", None)


@requires_redis
def test_another_process_change_reaches_this_one_within_the_recheck_window(acme, settings):
    from costmon.core.cache import cache_set

    settings.COSTMON_SHARED_RECHECK_MS = 60_000
    config.clear_local()
    assert config.for_tenant(acme.pk).budgets == ()
    # Another process adds a budget: the row, then a new shared version (no local clear here).
    Budget.objects.create(tenant=acme, name="month", limit_usd=Decimal(10))
    cache_set(config.version_key(acme.pk), "changed-elsewhere", None)
    assert config.for_tenant(acme.pk).budgets == ()  # trusted for up to a minute
    settings.COSTMON_SHARED_RECHECK_MS = 0
    assert [b.name for b in config.for_tenant(acme.pk).budgets] == ["month"]


# --- fail modes and counter corrections --------------------------------------------------------


def test_a_tenants_default_fail_mode_set_in_admin_reaches_its_budgets(
    admin_client, acme, outsider, ingest_client, django_capture_on_commit_callbacks
):
    budget_create(
        tenant=acme, data={"name": "cap", "limit_usd": Decimal("1"), "enforcement": "hard"}
    )
    assert check(ingest_client).json()["budgets"][0]["fail_mode"] == "closed"
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/budgets/budgetdefaults/add/", {"tenant": str(acme.pk), "fail_mode": "open"}
        )
    assert response.status_code == 302, response.content
    assert check(ingest_client).json()["budgets"][0]["fail_mode"] == "open"
    assert not BudgetDefaults.objects.for_tenant(outsider).exists()


def test_a_budgets_own_fail_mode_is_set_in_its_form(admin_client, acme, ingest_client):
    response = admin_client.post(
        "/admin/budgets/budget/add/", budget_form(acme, enforcement="soft", fail_mode="closed")
    )
    assert response.status_code == 302, form_errors(response)
    assert Budget.objects.for_tenant(acme).get().fail_mode == "closed"
    assert check(ingest_client).json()["budgets"][0]["fail_mode"] == "closed"


def test_counter_corrections_are_listed_with_their_drift_and_never_edited(
    admin_client, two_tenants
):
    page = admin_client.get("/admin/budgets/countercorrection/").content.decode()
    assert '<td class="field-drift">$0.00000507</td>' in page
    assert admin_client.get("/admin/budgets/countercorrection/add/").status_code == 403


def test_a_stop_lifted_through_the_api_names_the_key_in_the_list(admin_client, acme):
    key = api_key_create(tenant=acme, scopes="admin", name="ops").api_key
    emergency_stop_trip(tenant=acme, reason="loop")
    emergency_stop_lift(tenant=acme, api_key_id=key.pk, reason="fixed")
    page = admin_client.get("/admin/budgets/emergencystop/").content.decode()
    assert f'<td class="field-lifted_by_text">API key {key}</td>' in page
