"""Tenancy fails closed: tenant B's key or user never reads or changes tenant A's data, and on
PostgreSQL the database itself refuses rows of another tenant (row-level security)."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.db.utils import DatabaseError

from costmon.core.models import ApiKey, Membership, Tenant
from costmon.core.services import api_key_create
from costmon.core.tenancy import no_tenant, tenant_context, unscoped
from tests.helpers import event, post_usage
from usage.models import (
    Dimension,
    EndUserDailyRollup,
    HourlyRollup,
    ModelHourlyRollup,
    UsageEvent,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row-level security is PostgreSQL's"
)


@pytest.fixture
def two_tenants_with_usage(ingest_client, outsider_client, acme, outsider):
    assert (
        post_usage(
            ingest_client, [event(event_id="a1"), event(event_id="a2", end_user="acme-user")]
        ).status_code
        == 201
    )
    assert (
        post_usage(outsider_client, event(event_id="g1", end_user="globex-ceo")).status_code == 201
    )
    return acme, outsider


def test_scoped_managers_return_nothing_outside_a_tenant_context(two_tenants_with_usage):
    with no_tenant():
        assert list(UsageEvent.objects.all()) == []
        assert HourlyRollup.objects.count() == 0
        assert ModelHourlyRollup.objects.count() == 0
        assert ApiKey.objects.count() == 0


def test_scoped_managers_return_only_the_tenant_in_context(two_tenants_with_usage):
    acme, outsider = two_tenants_with_usage
    with tenant_context(acme):
        assert sorted(UsageEvent.objects.values_list("event_id", flat=True)) == ["a1", "a2"]
    with tenant_context(outsider):
        assert list(UsageEvent.objects.values_list("event_id", flat=True)) == ["g1"]


@postgres_only
def test_an_orm_query_with_no_tenant_filter_returns_only_the_context_tenants_rows(
    two_tenants_with_usage,
):
    """The second wall: `unscoped()` skips the queryset filter, RLS still applies."""
    acme, _ = two_tenants_with_usage
    with tenant_context(acme):
        assert sorted(UsageEvent.objects.unscoped().values_list("event_id", flat=True)) == [
            "a1",
            "a2",
        ]
        assert set(HourlyRollup.objects.unscoped().values_list("tenant_id", flat=True)) == {acme.pk}
        assert set(ModelHourlyRollup.objects.unscoped().values_list("tenant_id", flat=True)) == {
            acme.pk
        }
        assert set(EndUserDailyRollup.objects.unscoped().values_list("tenant_id", flat=True)) == {
            acme.pk
        }
        assert "globex-ceo" not in set(Dimension.objects.unscoped().values_list("value", flat=True))
        assert set(ApiKey.objects.unscoped().values_list("tenant_id", flat=True)) == {acme.pk}
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM usage_usageevent")
            assert cursor.fetchone() == (2,)
    with no_tenant():
        assert UsageEvent.objects.unscoped().count() == 0
    with unscoped():
        assert UsageEvent.objects.unscoped().count() == 3


@postgres_only
def test_a_server_side_cursor_reads_only_the_context_tenants_rows(two_tenants_with_usage):
    """`iterator()` reads by a named cursor (as the admin's choice lists do): the RLS
    settings go by a cursor of their own before it, as for any query."""
    acme, outsider = two_tenants_with_usage
    for tenant, ids in ((acme, ["a1", "a2"]), (outsider, ["g1"]), (acme, ["a1", "a2"])):
        with tenant_context(tenant):
            rows = UsageEvent.objects.unscoped().values_list("event_id", flat=True)
            assert sorted(rows.iterator(chunk_size=1)) == ids
    with no_tenant():
        assert list(UsageEvent.objects.unscoped().iterator()) == []


@postgres_only
def test_the_database_refuses_to_write_another_tenants_rows(two_tenants_with_usage):
    acme, outsider = two_tenants_with_usage
    with tenant_context(acme):
        dim = Dimension.objects.unscoped().first()
        with pytest.raises(DatabaseError, match="row-level security"), transaction.atomic():
            Dimension.objects.create(tenant=outsider, kind=Dimension.Kind.END_USER, value="planted")
        # Updating or deleting another tenant's rows matches nothing.
        assert UsageEvent.objects.unscoped().filter(tenant=outsider).update(cost_nanos=0) == 0
        assert UsageEvent.objects.unscoped().filter(tenant=outsider).delete()[0] == 0
    assert dim is not None
    with unscoped():
        assert UsageEvent.objects.for_tenant(outsider).get().cost_nanos == 1_350_000


@postgres_only
def test_the_app_does_not_act_as_a_superuser_so_rls_is_in_force():
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert cursor.fetchone() == (False,)
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relrowsecurity AND relforcerowsecurity ORDER BY 1"
        )
        protected = {row[0] for row in cursor.fetchall()}
    assert {
        "usage_usageevent",
        "usage_hourlyrollup",
        "usage_enduserdailyrollup",
        "usage_dimension",
        "usage_modelprice",
        "usage_modelalias",
        "costmon_apikey",
        "costmon_membership",
    } <= protected


def test_an_outsiders_key_reads_none_of_acmes_usage(two_tenants_with_usage, outsider_client):
    events = outsider_client.get("/api/v1/usage/").json()["results"]
    assert [e["event_id"] for e in events] == ["g1"]
    metrics = outsider_client.get(
        "/api/v1/metrics/?start=2026-11-01&end=2026-11-30&group_by=end_user"
    ).json()
    assert metrics["total"]["calls"] == 1
    assert [row["key"] for row in metrics["breakdown"]] == ["globex-ceo"]


def test_an_outsiders_key_cannot_change_acmes_usage(two_tenants_with_usage, outsider_client, acme):
    # Re-sending acme's event ids under the outsider's key creates the outsider's own events.
    response = post_usage(outsider_client, event(event_id="a1", input_tokens=1, output_tokens=0))
    assert response.json()["events"][0]["duplicate"] is False
    with tenant_context(acme):
        assert UsageEvent.objects.get(event_id="a1").input_tokens == 450


def test_a_member_of_another_tenant_gets_404_for_acme(
    client, two_tenants_with_usage, outsider_user
):
    client.force_login(outsider_user)
    assert client.get("/api/v1/metrics/?tenant=acme").status_code == 404
    mine = client.get("/api/v1/metrics/?tenant=globex&start=2026-11-01&end=2026-11-30").json()
    assert mine["total"]["calls"] == 1


def test_a_member_reads_their_tenant_and_a_viewer_cannot_ingest(
    client, two_tenants_with_usage, viewer
):
    client.force_login(viewer)
    metrics = client.get("/api/v1/metrics/?start=2026-11-01&end=2026-11-30").json()
    assert metrics["total"]["calls"] == 2
    assert metrics["total"]["cost_usd"] == "0.0027"
    # Viewers read; they do not report usage (and session posts need CSRF anyway).
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_login(viewer)
    assert api.post("/api/v1/usage/", event(event_id="v"), format="json").status_code == 403


def test_a_user_with_no_membership_sees_no_tenant(client, two_tenants_with_usage, db):
    from tests.factories import UserFactory

    client.force_login(UserFactory(username="nobody"))
    assert client.get("/api/v1/metrics/").status_code == 404


def test_an_anonymous_request_is_refused(client, two_tenants_with_usage):
    assert client.get("/api/v1/metrics/").status_code in (401, 403)


def test_memberships_and_keys_are_tenant_scoped(acme, outsider, owner, outsider_user):
    api_key_create(tenant=outsider, scopes="read")
    with tenant_context(acme):
        assert [m.user.username for m in Membership.objects.all()] == ["alice"]
        assert ApiKey.objects.count() == 0


def test_deleting_a_tenant_deletes_its_usage_and_nothing_of_anyone_else(two_tenants_with_usage):
    acme, outsider = two_tenants_with_usage
    with unscoped():
        Tenant.objects.filter(pk=acme.pk).delete()
        for model in (
            UsageEvent,
            HourlyRollup,
            ModelHourlyRollup,
            EndUserDailyRollup,
            Dimension,
            ApiKey,
        ):
            assert not model.objects.unscoped().filter(tenant_id=acme.pk).exists()
        assert list(UsageEvent.objects.unscoped().values_list("event_id", flat=True)) == ["g1"]
        assert ModelHourlyRollup.objects.unscoped().filter(tenant=outsider).count() == 1
        assert EndUserDailyRollup.objects.unscoped().filter(tenant=outsider).count() == 1


@postgres_only
def test_rule_channel_links_are_behind_row_level_security(acme, outsider):
    from alerts.models import AlertRule, Channel

    def rule_with_channel(tenant: Tenant) -> tuple[AlertRule, Channel]:
        with unscoped():
            channel = Channel.objects.create(tenant=tenant, name="ops", kind="email", config={})
            rule = AlertRule.objects.create(tenant=tenant, name="spend", kind="spend")
            rule.channels.add(channel)
        return rule, channel

    acme_rule, acme_channel = rule_with_channel(acme)
    their_rule, their_channel = rule_with_channel(outsider)
    links = AlertRule.channels.through

    def visible() -> set[tuple[int, int]]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT alertrule_id, channel_id FROM alerts_alertrule_channels")
            return set(cursor.fetchall())

    with tenant_context(acme):
        assert visible() == {(acme_rule.pk, acme_channel.pk)}
        # A link from acme's rule to another tenant's channel is refused by the database.
        with pytest.raises(DatabaseError, match="row-level security"), transaction.atomic():
            links.objects.create(alertrule_id=acme_rule.pk, channel_id=their_channel.pk)
        # Another tenant's links can be neither changed nor deleted.
        assert links.objects.filter(alertrule_id=their_rule.pk).delete()[0] == 0
        assert (
            links.objects.filter(channel_id=their_channel.pk).update(channel_id=acme_channel.pk)
            == 0
        )
    with tenant_context(outsider):
        assert visible() == {(their_rule.pk, their_channel.pk)}
    with no_tenant():
        assert visible() == set()
    with unscoped():
        assert len(visible()) == 2
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class "
            "WHERE relname = 'alerts_alertrule_channels'"
        )
        assert cursor.fetchone() == (True,)


class Abort(Exception):
    pass


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_transaction_leaves_the_next_query_in_its_tenant(acme):
    # Tenant settings made inside a transaction are undone by its rollback; the next query in
    # that tenant's context (a task retrying, say) must set them again, not run with none.
    with pytest.raises(Abort), tenant_context(acme), transaction.atomic():
        assert not Dimension.objects.exists()  # acme's settings, made inside the transaction
        raise Abort
    with tenant_context(acme):
        Dimension.objects.create(tenant=acme, kind=Dimension.Kind.END_USER, value="after")
        assert list(Dimension.objects.values_list("value", flat=True)) == ["after"]
