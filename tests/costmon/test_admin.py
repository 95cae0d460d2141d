from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from costmon.core.keys import hash_secret
from costmon.core.models import ApiKey
from costmon.core.services import api_key_create
from tests.factories import UserFactory
from tests.helpers import event, post_usage
from usage import catalog
from usage.models import CostSource, HourlyRollup, ModelAlias, ModelPrice, UsageEvent
from usage.services import model_alias_set

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "unscoped")]
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

CHANGELISTS = {
    # admin path: the tenant each listed row belongs to
    "costmon/tenant": lambda row: row.slug,
    "costmon/membership": lambda row: row.tenant.slug,
    "costmon/apikey": lambda row: row.tenant.slug,
    "usage/modelprice": lambda row: row.tenant.slug if row.tenant_id else "global",
    "usage/modelalias": lambda row: row.tenant.slug,
    "usage/usageevent": lambda row: row.tenant.slug,
    "usage/hourlyrollup": lambda row: row.tenant.slug,
    "usage/dimension": lambda row: row.tenant.slug,
}
EXPECTED_OWNERS = {"usage/modelprice": {"global", "globex"}}


@pytest.fixture(autouse=True)
def _frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def two_tenants(acme, outsider, owner, outsider_user, ingest_client, outsider_client):
    """Rows of every kind for both tenants."""
    assert post_usage(ingest_client, event(event_id="acme-1")).status_code == 201
    assert (
        post_usage(
            outsider_client,
            event(
                event_id="globex-1",
                provider="openai",
                model="gpt-4o-mini",
                input_tokens=1500,
                output_tokens=500,
            ),
        ).status_code
        == 201
    )
    ModelPrice.objects.create(
        tenant=outsider,
        provider="openai",
        model="gpt-4o",
        effective_from=datetime(2025, 1, 1, tzinfo=UTC),
        input_per_mtok=Decimal("2"),
        output_per_mtok=Decimal("8"),
    )
    model_alias_set(
        tenant=acme, alias="prod-chat", target_provider="anthropic", target_model="claude-haiku-4-5"
    )
    model_alias_set(
        tenant=outsider, alias="gx-chat", target_provider="openai", target_model="gpt-4o"
    )
    return acme, outsider


def price_form(price: ModelPrice, **changes: str) -> dict[str, str]:
    """The change form of a price row as a browser would post it."""
    data = {
        "tenant": str(price.tenant_id or ""),
        "provider": price.provider,
        "model": price.model,
        "service_tier": price.service_tier,
        "match_pattern": price.match_pattern,
        "mode": price.mode,
        "deprecation_date": "",
        "effective_from_0": f"{price.effective_from:%Y-%m-%d}",
        "effective_from_1": f"{price.effective_from:%H:%M:%S}",
        "source": price.source,
        "source_date": "",
        "long_context_threshold": str(price.long_context_threshold or ""),
    }
    for name in (
        "input_per_mtok",
        "output_per_mtok",
        "cached_input_per_mtok",
        "cache_write_per_mtok",
        "cache_write_1h_per_mtok",
        "input_audio_per_mtok",
        "output_audio_per_mtok",
        "input_image_per_mtok",
        "output_image_per_mtok",
        "per_request",
        "per_output_image",
        "web_search_per_kcalls",
        "long_input_per_mtok",
        "long_output_per_mtok",
        "long_cached_input_per_mtok",
        "long_cache_write_per_mtok",
    ):
        value = getattr(price, name)
        data[name] = "" if value is None else str(value)
    data.update(changes)
    return data


def key_client(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# --- every page, every tenant -----------------------------------------------------------------


@pytest.mark.parametrize("path", CHANGELISTS)
def test_staff_see_every_tenants_rows_in_each_list(admin_client, two_tenants, path):
    response = admin_client.get(f"/admin/{path}/")

    assert response.status_code == 200
    owners = {CHANGELISTS[path](row) for row in response.context["cl"].result_list}
    assert owners == EXPECTED_OWNERS.get(path, {"acme", "globex"})


def test_the_event_list_shows_each_events_exact_cost_and_dimension_names(admin_client, two_tenants):
    response = admin_client.get("/admin/usage/usageevent/")

    rows = {row.event_id: row for row in response.context["cl"].result_list}
    assert set(rows) == {"acme-1", "globex-1"}
    body = response.content.decode()
    assert (
        '<td class="field-provider nowrap">openai</td>'
        '<td class="field-model nowrap">gpt-4o-mini</td>'
        '<td class="field-end_user nowrap">user-1</td><td class="field-tokens">1,500 / 500</td>'
        '<td class="field-cost">0.000525</td><td class="field-cost_source">computed</td>'
        '<td class="field-status">success</td>'
    ) in body
    assert '<td class="field-tokens">450 / 180</td><td class="field-cost">0.00135</td>' in body
    assert "_facets" not in body


def test_the_event_list_costs_the_same_queries_for_two_events_or_twelve(
    admin_client, two_tenants, ingest_client
):
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get("/admin/usage/usageevent/").status_code == 200
    post_usage(
        ingest_client,
        [
            event(event_id=f"more-{i}", end_user=f"user-{i}", model="gpt-4o", provider="openai")
            for i in range(10)
        ],
    )
    with CaptureQueriesContext(connection) as many:
        response = admin_client.get("/admin/usage/usageevent/")

    assert len(response.context["cl"].result_list) == 12
    assert len(many.captured_queries) == len(few.captured_queries)


@pytest.mark.parametrize(
    "path",
    [
        "costmon/tenant",
        "costmon/membership",
        "costmon/apikey",
        "usage/modelprice",
        "usage/modelalias",
    ],
)
def test_each_add_page_opens(admin_client, two_tenants, path):
    response = admin_client.get(f"/admin/{path}/add/")

    assert response.status_code == 200
    # The empty add form of that model, not a redirect or another page.
    assert response.context["title"] == f"Add {response.context['opts'].verbose_name}"
    assert response.context["adminform"].form.instance.pk is None


@pytest.mark.parametrize("path", ["usage/usageevent", "usage/hourlyrollup", "usage/dimension"])
def test_usage_data_cannot_be_added_by_hand(admin_client, two_tenants, path):
    assert admin_client.get(f"/admin/{path}/add/").status_code == 403


def test_an_event_opens_read_only_with_its_cost(admin_client, two_tenants):
    evt = UsageEvent.objects.unscoped().get(event_id="globex-1")

    response = admin_client.get(f"/admin/usage/usageevent/{evt.pk}/change/")

    assert response.status_code == 200
    assert '<div class="readonly">0.000525</div>' in response.content.decode()
    change = admin_client.post(f"/admin/usage/usageevent/{evt.pk}/change/", {"event_id": "x"})
    assert change.status_code == 403
    assert UsageEvent.objects.unscoped().get(pk=evt.pk).event_id == "globex-1"


def test_non_staff_members_are_sent_to_the_login_page(client, owner, two_tenants):
    client.force_login(owner)

    response = client.get("/admin/usage/usageevent/")

    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/admin/usage/usageevent/"


# --- API keys ---------------------------------------------------------------------------------


def test_adding_a_key_goes_through_the_service_and_shows_the_secret_once(admin_client, outsider):
    response = admin_client.post(
        "/admin/costmon/apikey/add/",
        {"tenant": outsider.pk, "name": "ci", "scopes": ["read", "ingest"]},
    )

    assert response.status_code == 200
    secret = response.context["secret"]
    key = ApiKey.objects.unscoped().get()
    assert (key.tenant_id, key.name, key.scopes) == (outsider.pk, "ci", ["ingest", "read"])
    assert key.secret_hash == hash_secret(secret)
    assert secret.startswith(f"{key.prefix}_")
    assert secret in response.content.decode()
    for path in ("/admin/costmon/apikey/", f"/admin/costmon/apikey/{key.pk}/change/"):
        body = admin_client.get(path).content.decode()
        assert secret not in body
        assert key.secret_hash not in body
    # The secret shown is a working key for that tenant.
    assert post_usage(key_client(secret), event(event_id="via-admin-key")).status_code == 201
    assert UsageEvent.objects.unscoped().get(event_id="via-admin-key").tenant_id == outsider.pk


def test_a_key_without_scopes_is_refused_with_a_form_error(admin_client, acme):
    response = admin_client.post("/admin/costmon/apikey/add/", {"tenant": acme.pk, "name": "x"})

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {"scopes": ["This field is required."]}
    assert ApiKey.objects.unscoped().count() == 0


def test_only_a_keys_name_can_be_changed(admin_client, acme, outsider):
    key = api_key_create(tenant=acme, scopes="ingest", name="old").api_key

    response = admin_client.post(
        f"/admin/costmon/apikey/{key.pk}/change/",
        {"name": "new", "tenant": outsider.pk, "prefix": "cm_stolen", "scopes": "admin"},
    )

    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.name, key.tenant_id, key.scopes) == ("new", acme.pk, ["ingest"])
    assert key.revoked_at is None
    assert key.prefix.startswith("cm_") and key.prefix != "cm_stolen"


def test_the_revoke_action_revokes_the_selected_keys_at_once(admin_client, acme, outsider):
    first = api_key_create(tenant=acme, scopes="ingest")
    second = api_key_create(tenant=outsider, scopes="ingest")
    kept = api_key_create(tenant=outsider, scopes="ingest")
    assert post_usage(key_client(first.secret), event()).status_code == 201  # now in the auth cache

    response = admin_client.post(
        "/admin/costmon/apikey/",
        {
            "action": "revoke_keys",
            "index": 0,
            "_selected_action": [first.api_key.pk, second.api_key.pk],
        },
        follow=True,
    )

    assert messages_of(response) == ["Revoked 2 keys."]
    revoked = dict(ApiKey.objects.unscoped().values_list("pk", "revoked_at"))
    assert revoked == {first.api_key.pk: NOW, second.api_key.pk: NOW, kept.api_key.pk: None}
    assert post_usage(key_client(first.secret), event(event_id="after")).status_code == 401


def test_keys_are_revoked_never_deleted(admin_client, acme):
    key = api_key_create(tenant=acme, scopes="ingest").api_key

    assert admin_client.get(f"/admin/costmon/apikey/{key.pk}/delete/").status_code == 403


# --- the price catalog ------------------------------------------------------------------------


def test_editing_a_price_bumps_the_catalog_after_commit_and_ingest_uses_it(
    admin_client, ingest_client, settings, django_capture_on_commit_callbacks
):
    settings.COSTMON_CATALOG_TTL_SECONDS = 3600  # as in production: processes keep a catalog
    before = post_usage(ingest_client, event(event_id="before"))
    assert before.json()["events"][0]["cost_usd"] == "0.00135"
    haiku = ModelPrice.objects.unscoped().get(model="claude-haiku-4-5")
    version = cache.get(catalog.VERSION_KEY)

    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_client.post(
            f"/admin/usage/modelprice/{haiku.pk}/change/", price_form(haiku, input_per_mtok="2")
        )
    assert response.status_code == 302
    assert cache.get(catalog.VERSION_KEY) == version  # nothing announced before the commit
    for callback in callbacks:
        callback()

    assert cache.get(catalog.VERSION_KEY) not in (None, version)
    # 450 input at $2 + 180 output at $5 per million = $0.0018
    response = post_usage(ingest_client, event(event_id="after"))
    assert response.json()["events"][0]["cost_usd"] == "0.0018"
    assert UsageEvent.objects.unscoped().get(event_id="after").cost_usd == Decimal("0.001800000")
    assert UsageEvent.objects.unscoped().get(event_id="before").cost_nanos == 1_350_000


def test_a_bad_price_is_refused_with_form_errors_and_nothing_changes(admin_client):
    haiku = ModelPrice.objects.unscoped().get(model="claude-haiku-4-5")

    response = admin_client.post(
        "/admin/usage/modelprice/add/",
        price_form(
            haiku, model="claude-next", input_per_mtok="-1", long_context_threshold="200000"
        ),
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "input_per_mtok": ["Ensure this value is greater than or equal to 0."],
        "long_input_per_mtok": ["Give the long-context input rate, or clear the threshold."],
    }
    assert cache.get(catalog.VERSION_KEY) is None
    assert ModelPrice.objects.unscoped().count() == 4


def test_a_second_price_from_the_same_moment_is_refused_with_a_form_error(admin_client):
    haiku = ModelPrice.objects.unscoped().get(model="claude-haiku-4-5")

    response = admin_client.post(
        "/admin/usage/modelprice/add/", price_form(haiku, input_per_mtok="3")
    )

    assert response.context["adminform"].form.errors == {
        "effective_from": [
            "The global list already has a standard price for anthropic/claude-haiku-4-5 from this moment; "
            "edit that row, or pick another start."
        ]
    }
    haiku.refresh_from_db()
    assert haiku.input_per_mtok == Decimal("1")


def test_deleting_a_price_bumps_the_catalog(
    admin_client, ingest_client, django_capture_on_commit_callbacks
):
    haiku = ModelPrice.objects.unscoped().get(model="claude-haiku-4-5")

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"/admin/usage/modelprice/{haiku.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert cache.get(catalog.VERSION_KEY) is not None
    assert post_usage(ingest_client, event()).json()["events"][0]["cost_source"] == "unpriced"


def test_an_alias_added_in_admin_prices_the_next_batch(
    admin_client, acme, ingest_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/usage/modelalias/add/",
            {
                "tenant": acme.pk,
                "alias": "prod-chat",
                "provider": "",
                "target_provider": "Anthropic",
                "target_model": "claude-haiku-4-5",
            },
        )

    assert response.status_code == 302
    assert cache.get(catalog.VERSION_KEY) is not None
    assert ModelAlias.objects.unscoped().get().target_provider == "anthropic"
    response = post_usage(ingest_client, event(provider="openai", model="prod-chat"))
    assert response.json()["events"][0]["cost_usd"] == "0.00135"


# --- usage data -------------------------------------------------------------------------------


def test_only_superusers_may_delete_events(client, two_tenants):
    staff = UserFactory(username="dora", is_staff=True)
    staff.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="usage", codename__in=["view_usageevent", "delete_usageevent"]
        )
    )
    client.force_login(staff)
    evt = UsageEvent.objects.unscoped().get(event_id="acme-1")

    assert client.get("/admin/usage/usageevent/").status_code == 200
    delete = client.post(f"/admin/usage/usageevent/{evt.pk}/delete/", {"post": "yes"})
    assert delete.status_code == 403
    assert UsageEvent.objects.unscoped().filter(pk=evt.pk).exists()


def test_deleting_an_event_rebuilds_its_hours_rollup(admin_client, two_tenants, ingest_client):
    acme, outsider = two_tenants
    post_usage(ingest_client, event(event_id="acme-2", occurred_at="2026-11-20T10:45:00Z"))
    gone = UsageEvent.objects.unscoped().get(event_id="acme-1")

    response = admin_client.post(f"/admin/usage/usageevent/{gone.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not UsageEvent.objects.unscoped().filter(event_id="acme-1").exists()
    rollup = HourlyRollup.objects.for_tenant(acme).get()
    assert (rollup.calls, rollup.cost_nanos, rollup.input_tokens) == (1, 1_350_000, 450)
    other = HourlyRollup.objects.for_tenant(outsider).get()
    assert (other.calls, other.cost_nanos) == (1, 525_000)


# --- re-pricing -------------------------------------------------------------------------------


def test_the_reprice_action_asks_for_a_range_first(admin_client, acme):
    response = admin_client.post(
        "/admin/costmon/tenant/",
        {"action": "reprice_usage", "_selected_action": [acme.pk], "index": 0},
    )

    assert response.status_code == 200
    assert response.templates[0].name == "admin/costmon/tenant/reprice.html"
    assert list(response.context["tenants"]) == [acme]


def test_the_reprice_action_prices_unpriced_events_of_the_tenants_days(
    admin_client, acme, outsider, ingest_client, outsider_client
):
    acme.timezone = "America/New_York"
    acme.save()
    opus = {"model": "claude-opus-9", "input_tokens": 1000, "output_tokens": 100}
    # 03:00 UTC on the 21st is still the 20th in New York; 06:00 UTC is the 21st there.
    post_usage(
        ingest_client,
        [
            event(event_id="late-on-20th", occurred_at="2026-11-21T03:00:00Z", **opus),
            event(event_id="early-on-21st", occurred_at="2026-11-21T06:00:00Z", **opus),
        ],
    )
    post_usage(
        outsider_client, event(event_id="globex-opus", occurred_at="2026-11-21T03:00:00Z", **opus)
    )
    ModelPrice.objects.create(
        provider="anthropic",
        model="claude-opus-9",
        effective_from=datetime(2024, 1, 1, tzinfo=UTC),
        input_per_mtok=Decimal("15"),
        output_per_mtok=Decimal("75"),
    )

    response = admin_client.post(
        "/admin/costmon/tenant/",
        {
            "action": "reprice_usage",
            "_selected_action": [acme.pk],
            "start": "2026-11-20",
            "end": "2026-11-20",
            "only_unpriced": "on",
            "apply": "Re-price",
        },
        follow=True,
    )

    assert messages_of(response) == ["acme: 1 event re-priced of 1 examined; 0 still unpriced."]
    costs = dict((e.event_id, (e.cost_usd, e.cost_source)) for e in UsageEvent.objects.unscoped())
    # 1000 input at $15 + 100 output at $75 per million = $0.0225
    assert costs == {
        "late-on-20th": (Decimal("0.022500000"), CostSource.COMPUTED),
        "early-on-21st": (Decimal("0E-9"), CostSource.UNPRICED),
        "globex-opus": (Decimal("0E-9"), CostSource.UNPRICED),
    }
    hours = dict(HourlyRollup.objects.for_tenant(acme).values_list("hour__hour", "cost_nanos"))
    assert hours == {3: 22_500_000, 6: 0}


def test_a_backwards_range_is_refused_and_nothing_is_repriced(admin_client, acme, ingest_client):
    post_usage(ingest_client, event(model="claude-opus-9"))

    response = admin_client.post(
        "/admin/costmon/tenant/",
        {
            "action": "reprice_usage",
            "_selected_action": [acme.pk],
            "start": "2026-11-21",
            "end": "2026-11-20",
            "apply": "Re-price",
        },
    )

    assert response.status_code == 200
    assert response.context["form"].errors == {
        "end": ["The last day must not be before the first day."]
    }
    assert UsageEvent.objects.unscoped().get().cost_source == CostSource.UNPRICED


# --- the icon ----------------------------------------------------------------------------------


FAVICON = '<link rel="icon" href="/static/costmon/favicon.svg" type="image/svg+xml">'


def test_every_admin_page_names_costmons_icon(admin_client, client, acme, outsider):
    from budgets.services import budget_create

    key = api_key_create(tenant=acme, scopes="ingest").api_key
    budget = budget_create(tenant=acme, data={"name": "Monthly", "limit_usd": Decimal("5")})
    pages = [
        "/admin/",
        "/admin/costmon/apikey/",
        f"/admin/costmon/apikey/{key.pk}/change/",
        f"/admin/budgets/budget/{budget.pk}/delete/",
        "/admin/budgets/budget/add/",
        "/admin/auth/user/add/",
        "/admin/django_celery_beat/periodictask/",
        "/admin/password_change/",
    ]
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page
        assert FAVICON in response.content.decode(), page
    assert FAVICON in client.get("/admin/login/").content.decode()
    assert (
        'rel="icon" href="/static/costmon/favicon.ico"'
        in admin_client.get("/admin/").content.decode()
    )
    for page in ("/login/", "/t/acme/"):  # the dashboard's own pages
        assert (
            'rel="icon" href="/static/costmon/favicon.svg"'
            in admin_client.get(page, follow=True).content.decode()
        )


def test_favicon_ico_leads_to_the_icon(client):
    response = client.get("/favicon.ico")

    assert (response.status_code, response["Location"]) == (302, "/static/costmon/favicon.ico")
    icon = client.get(response["Location"])
    assert icon.status_code == 200
    # A real ICO (browsers asking for /favicon.ico may not read SVG): its header says one image.
    assert b"".join(icon.streaming_content if icon.streaming else [icon.content])[:6] == (
        b"\x00\x00\x01\x00\x01\x00"
    )
