"""Staff's admin for alerts: every tenant's rows, channels saved through the transport's checks,
secrets never on a page, and actions that do what they say."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils.html import escape

from alerts.models import Alert, AlertRule, Channel, Notification
from alerts.services import channel_disable, channel_save
from tests.alerts.conftest import make_rule
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("unscoped")]

SECRET = "s3cret-s3cret-s3cret"  # the `webhook` fixture's
SEEN = datetime(2026, 11, 21, 11, 0, tzinfo=UTC)
LISTS = ["alerts/channel", "alerts/alertrule", "alerts/alert", "alerts/notification"]


def add_alert(rule: AlertRule, scope: str = "tenant", **fields) -> Alert:
    fields.setdefault("title", f"{rule.name} fired")
    return Alert.objects.create(
        tenant=rule.tenant,
        rule=rule,
        scope=scope,
        period="20261121",
        level="above",
        severity=rule.severity,
        text="Something crossed its threshold.",
        first_seen_at=SEEN,
        last_seen_at=SEEN,
        **fields,
    )


@pytest.fixture
def rows(acme, outsider, webhook):
    """Channels, rules, alerts and notifications of both tenants."""
    slack = channel_save(
        channel=Channel(
            tenant=outsider,
            name="globex slack",
            kind="slack",
            config={"url": "https://hooks.example.test/services/PLACEHOLDER/globex"},
        )
    )
    spend = make_rule(acme, [webhook], kind="spend", threshold_usd=Decimal("10"))
    spike = make_rule(acme, [], kind="spike", multiplier=Decimal("2"), trailing_days=7)
    cache = make_rule(outsider, [slack], kind="cache_hit_rate")
    acme_alert = add_alert(spend, title="Spend today is above $10", notify_count=1)
    globex_alert = add_alert(cache, title="Cache hit rate today is 41.0%, below 70.0%")
    Notification.objects.create(
        tenant=acme,
        alert=acme_alert,
        channel=webhook,
        status="sent",
        attempts=1,
        response_code=200,
        duration_ms=42,
    )
    Notification.objects.create(
        tenant=outsider,
        alert=globex_alert,
        channel=slack,
        status="failed",
        attempts=5,
        response_code=503,
        error="hooks.slack.com answered 503: " + "x" * 200,
        duration_ms=7000,
    )
    return SimpleNamespace(
        webhook=webhook,
        slack=slack,
        spend=spend,
        spike=spike,
        cache=cache,
        acme_alert=acme_alert,
        globex_alert=globex_alert,
    )


def more_rows(rows, n: int) -> None:
    """Another `n` rows of every kind for each tenant, for counting queries per page."""
    for channel in (rows.webhook, rows.slack):
        tenant = channel.tenant
        for i in range(n):
            extra = Channel.objects.create(
                tenant=tenant, name=f"extra {i}", kind="email", config={"to": ["a@example.com"]}
            )
            rule = make_rule(tenant, [channel, extra], kind="error_rate", name=f"errors {i}")
            alert = add_alert(rule, scope=f"extra-{i}")
            Notification.objects.create(tenant=tenant, alert=alert, channel=extra)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def form_errors(response) -> dict[str, list[str]]:
    return response.context["adminform"].form.errors


def act(client, path: str, action: str, *objects):
    return client.post(
        f"/admin/{path}/",
        {"action": action, "_selected_action": [str(o.pk) for o in objects]},
        follow=True,
    )


def channel_form(tenant, **changes) -> dict[str, str]:
    data = {
        "tenant": str(tenant.pk),
        "name": "ops slack",
        "kind": "slack",
        "is_enabled": "on",
        "config": json.dumps({"url": "https://hooks.example.test/services/PLACEHOLDER/acme"}),
    }
    data.update(changes)
    return data


def rule_form(tenant, **changes) -> dict[str, object]:
    """The add form of a rule as a browser would post it."""
    data: dict[str, object] = {
        "tenant": str(tenant.pk),
        "name": "Daily spend",
        "kind": "spend",
        "severity": "warning",
        "is_active": "on",
        "channels": [],
        "period": "day",
        "threshold_usd": "10",
        "threshold_percent": "",
        "metric": "cost",
        "multiplier": "2",
        "trailing_days": "7",
        "min_volume": "1",
        "provider": "",
        "model": "",
        "operation": "",
        "end_user": "",
        "tag": "",
        "cooldown_minutes": "60",
    }
    data.update(changes)
    return data


# --- every page, every tenant -----------------------------------------------------------------


@pytest.mark.parametrize("path", LISTS)
def test_staff_see_every_tenants_rows_in_each_list(admin_client, rows, path):
    response = admin_client.get(f"/admin/{path}/")

    assert response.status_code == 200
    assert {row.tenant.slug for row in response.context["cl"].result_list} == {"acme", "globex"}


@pytest.mark.parametrize("path", ["alerts/channel", "alerts/alertrule"])
def test_each_add_page_opens(admin_client, rows, path):
    response = admin_client.get(f"/admin/{path}/add/")

    assert response.status_code == 200
    # The empty add form of that model, not a redirect or another page.
    assert response.context["title"] == f"Add {response.context['opts'].verbose_name}"
    assert response.context["adminform"].form.instance.pk is None


@pytest.mark.parametrize("path", ["alerts/alert", "alerts/notification"])
def test_alerts_and_notifications_cannot_be_added_or_deleted(admin_client, rows, path):
    row = (Alert if path == "alerts/alert" else Notification).objects.unscoped().first()

    assert admin_client.get(f"/admin/{path}/add/").status_code == 403
    assert admin_client.post(f"/admin/{path}/{row.pk}/delete/", {"post": "yes"}).status_code == 403


@pytest.mark.parametrize("model", [Channel, AlertRule, Alert, Notification])
def test_every_row_opens(admin_client, rows, model):
    rows = list(model.objects.unscoped())
    assert rows  # the fixture made some: an empty loop would prove nothing
    for row in rows:
        path = f"/admin/alerts/{model._meta.model_name}/{row.pk}/change/"
        response = admin_client.get(path)
        assert response.status_code == 200, path
        # The page shows that row, by the name staff know it by.
        assert response.context["original"].pk == row.pk, path
        assert escape(str(row)) in response.content.decode(), path


@pytest.mark.parametrize("path", LISTS)
def test_a_longer_list_costs_no_more_queries(admin_client, rows, path):
    admin_client.get(f"/admin/{path}/")  # sessions and caches warmed up
    with CaptureQueriesContext(connection) as few:
        admin_client.get(f"/admin/{path}/")
    more_rows(rows, 3)
    with CaptureQueriesContext(connection) as many:
        response = admin_client.get(f"/admin/{path}/")

    assert response.context["cl"].result_count > 4
    assert len(many) == len(few)


@pytest.mark.parametrize("path", LISTS)
def test_non_staff_members_are_sent_to_the_login_page(client, owner, rows, path):
    client.force_login(owner)

    response = client.get(f"/admin/{path}/")

    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next=/admin/{path}/"


# --- channels ---------------------------------------------------------------------------------


def test_the_channel_list_says_how_each_channel_is_doing(admin_client, rows):
    Channel.objects.unscoped().filter(pk=rows.slack.pk).update(
        last_error="hooks.slack.com answered 503: " + "y" * 200, last_error_at=SEEN
    )

    page = admin_client.get("/admin/alerts/channel/").content.decode()

    assert '<td class="field-last_error_short"><span title="hooks.slack.com answered 503: y' in page
    assert "answered 503: " + "y" * 50 + "…</span>" not in page  # cut at 80 characters
    assert "answered 503: " + "y" * 49 + "…</span>" in page
    assert (
        "https://hooks.example.test/services/PLACEHOLDER/globex" not in page
    )  # config is not listed


def test_a_webhooks_secret_is_on_no_page(admin_client, rows):
    webhook = rows.webhook

    listed = admin_client.get("/admin/alerts/channel/").content.decode()
    page = admin_client.get(f"/admin/alerts/channel/{webhook.pk}/change/").content.decode()

    assert SECRET not in listed
    assert SECRET not in page
    assert "s3cr…" in page
    assert escape(json.dumps({"url": webhook.config["url"]})) in page


def test_a_view_only_staff_member_sees_the_config_without_the_secret(client, rows):
    user = UserFactory(username="dana", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="alerts", codename="view_channel")
    )
    client.force_login(user)

    page = client.get(f"/admin/alerts/channel/{rows.webhook.pk}/change/")

    assert page.status_code == 200
    assert SECRET not in page.content.decode()
    assert "s3cr…" in page.content.decode()


def test_saving_a_webhook_without_its_secret_keeps_the_secret(admin_client, rows, receiver):
    webhook = rows.webhook

    response = admin_client.post(
        f"/admin/alerts/channel/{webhook.pk}/change/",
        {
            "name": "ops hook v2",
            "kind": "webhook",
            "is_enabled": "on",
            "config": json.dumps({"url": f" {receiver.url}?v=2 "}),
        },
    )

    assert response.status_code == 302
    webhook.refresh_from_db()
    assert webhook.name == "ops hook v2"
    assert webhook.config == {"url": f"{receiver.url}?v=2", "secret": SECRET}


def test_switching_a_channel_off_in_its_form_says_who_did(admin_client, rows, receiver):
    form = {
        "name": "ops hook",
        "kind": "webhook",
        "config": json.dumps({"url": receiver.url}),
    }
    admin_client.post(f"/admin/alerts/channel/{rows.webhook.pk}/change/", form)
    off = Channel.objects.unscoped().get(pk=rows.webhook.pk)

    admin_client.post(
        f"/admin/alerts/channel/{rows.webhook.pk}/change/", {**form, "is_enabled": "on"}
    )
    on = Channel.objects.unscoped().get(pk=rows.webhook.pk)

    assert (off.is_enabled, off.disabled_reason) == (False, "disabled in admin by admin")
    assert (on.is_enabled, on.disabled_reason) == (True, "")
    assert on.config["secret"] == SECRET


def test_a_channel_added_in_admin_goes_through_the_transports_checks(admin_client, acme):
    response = admin_client.post(
        "/admin/alerts/channel/add/",
        channel_form(
            acme,
            config=json.dumps({"url": " https://hooks.example.test/services/PLACEHOLDER/acme "}),
        ),
    )

    assert response.status_code == 302
    channel = Channel.objects.unscoped().get()
    assert (channel.tenant_id, channel.kind, channel.is_enabled) == (acme.pk, "slack", True)
    assert channel.config == {"url": "https://hooks.example.test/services/PLACEHOLDER/acme"}


def test_a_webhook_added_without_a_secret_gets_one_that_is_not_shown(admin_client, acme, receiver):
    response = admin_client.post(
        "/admin/alerts/channel/add/",
        channel_form(acme, kind="webhook", config=json.dumps({"url": receiver.url})),
        follow=True,
    )

    channel = Channel.objects.unscoped().get()
    assert len(channel.config["secret"]) >= 16
    assert channel.config["secret"] not in response.content.decode()
    assert any("signing secret was generated" in m for m in messages_of(response))


def test_a_slack_channel_with_a_plain_http_url_is_refused(admin_client, acme, settings):
    settings.COSTMON_ALLOW_PRIVATE_WEBHOOKS = False

    response = admin_client.post(
        "/admin/alerts/channel/add/",
        channel_form(
            acme, config=json.dumps({"url": "http://hooks.example.test/services/PLACEHOLDER/x"})
        ),
    )

    assert response.status_code == 200
    assert form_errors(response) == {
        "config": ["url: Use an https:// URL: plain http would send alerts unencrypted."]
    }
    assert not Channel.objects.unscoped().exists()


@pytest.mark.parametrize(
    ("kind", "config", "error"),
    [
        ("webhook", {"url": "https://example.com/hook", "secret": "short"}, "secret: The secret"),
        ("email", {"to": ["not an address"]}, "to: 'not an address' is not a valid email"),
        ("slack", ["https://hooks.slack.com/x"], "Enter a JSON object"),
    ],
)
def test_each_transports_complaint_shows_on_the_config_field(
    admin_client, acme, kind, config, error
):
    response = admin_client.post(
        "/admin/alerts/channel/add/", channel_form(acme, kind=kind, config=json.dumps(config))
    )

    assert response.status_code == 200
    [message] = form_errors(response)["config"]
    assert message.startswith(error)
    assert not Channel.objects.unscoped().exists()


def test_the_test_action_sends_one_test_notification(admin_client, rows, receiver):
    response = act(admin_client, "alerts/channel", "send_test", rows.webhook)

    assert len(receiver.requests) == 1
    assert receiver.requests[0].json["type"] == "costmon.test"
    [message] = messages_of(response)
    assert message.startswith("Test notification sent to acme: ops hook (HTTP 200, ")
    test = Notification.objects.unscoped().get(kind="test")
    assert (test.channel_id, test.status, test.response_code) == (rows.webhook.pk, "sent", 200)


def test_a_gone_endpoint_fails_the_test_and_disables_the_channel(admin_client, rows, receiver):
    receiver.status = 410

    response = act(admin_client, "alerts/channel", "send_test", rows.webhook)

    [message] = messages_of(response)
    assert message.startswith("Test notification to acme: ops hook failed: the endpoint is gone")
    assert "(410)" in message
    assert message.endswith("The channel is now disabled.")
    webhook = Channel.objects.unscoped().get(pk=rows.webhook.pk)
    assert webhook.is_enabled is False
    assert "410" in webhook.disabled_reason
    listed = admin_client.get("/admin/alerts/channel/").content.decode()
    assert f'<td class="field-disabled_reason">{escape(webhook.disabled_reason)}</td>' in listed


def test_a_disabled_channel_is_not_tested(admin_client, rows, receiver):
    channel_disable(channel=rows.webhook, reason="endpoint moved")

    response = act(admin_client, "alerts/channel", "send_test", rows.webhook)

    assert messages_of(response) == [
        "acme: ops hook: not sent. The channel is disabled (endpoint moved); enable it first."
    ]
    assert receiver.requests == []


def test_channels_are_disabled_and_enabled_by_the_actions(admin_client, rows):
    channel_disable(channel=rows.slack, reason="endpoint is gone (410)")

    disabled = act(admin_client, "alerts/channel", "disable_channels", rows.webhook, rows.slack)

    assert messages_of(disabled) == ["Disabled 1 channel. 1 channel already disabled."]
    reasons = dict(Channel.objects.unscoped().values_list("name", "disabled_reason"))
    assert reasons == {
        "ops hook": "disabled in admin by admin",
        "globex slack": "endpoint is gone (410)",  # the first reason is kept
    }

    enabled = act(admin_client, "alerts/channel", "enable_channels", rows.webhook, rows.slack)

    assert messages_of(enabled) == ["Enabled 2 channels."]
    assert list(Channel.objects.unscoped().values_list("is_enabled", "disabled_reason")) == [
        (True, ""),
        (True, ""),
    ]


# --- rules ------------------------------------------------------------------------------------


def test_the_rule_list_says_what_each_rule_fires_on(admin_client, rows):
    make_rule(
        rows.slack.tenant,
        [],
        kind="projected",
        name="projection",
        threshold_usd=Decimal("500.50"),
        model="gpt-4o",
    )

    page = admin_client.get("/admin/alerts/alertrule/").content.decode()

    assert '<td class="field-condition">above $10 per day</td>' in page
    assert '<td class="field-condition">2x over 7 days</td>' in page
    assert '<td class="field-condition">below 70%</td>' in page
    assert (
        '<td class="field-condition">month-end projection above $500.5 for model gpt-4o</td>'
        in (page)
    )
    counts = {
        rule.name: rule.n_channels
        for rule in admin_client.get("/admin/alerts/alertrule/").context["cl"].result_list
    }
    assert counts == {"spend rule": 1, "spike rule": 0, "cache_hit_rate rule": 1, "projection": 0}


def test_a_rule_is_added_with_its_tenants_channels(admin_client, rows):
    response = admin_client.post(
        "/admin/alerts/alertrule/add/",
        rule_form(rows.webhook.tenant, channels=[str(rows.webhook.pk)], tag="team=ml"),
    )

    assert response.status_code == 302
    rule = AlertRule.objects.unscoped().get(name="Daily spend")
    assert (rule.tenant_id, rule.threshold_usd, rule.tag) == (
        rows.webhook.tenant_id,
        Decimal("10"),
        "team=ml",
    )
    assert list(rule.channels.all()) == [rows.webhook]


def test_a_rule_with_another_tenants_channel_is_refused(admin_client, rows):
    acme = rows.webhook.tenant

    response = admin_client.post(
        "/admin/alerts/alertrule/add/",
        rule_form(acme, channels=[str(rows.webhook.pk), str(rows.slack.pk)]),
    )

    assert response.status_code == 200
    assert form_errors(response) == {
        "channels": [
            "Choose channels of acme only; globex slack (globex) belong to another tenant."
        ]
    }
    assert not AlertRule.objects.unscoped().filter(name="Daily spend").exists()


def test_a_saved_rule_offers_only_its_tenants_channels(admin_client, rows):
    response = admin_client.get(f"/admin/alerts/alertrule/{rows.spend.pk}/change/")

    offered = response.context["adminform"].form.fields["channels"].queryset
    assert list(offered) == [rows.webhook]


@pytest.mark.parametrize(
    ("changes", "errors"),
    [
        (
            {"threshold_usd": ""},
            {"threshold_usd": ["A spend above a threshold rule needs a spend threshold in USD."]},
        ),
        (
            {"kind": "projected", "threshold_usd": ""},
            {
                "threshold_usd": [
                    "A projected month-end spend above a threshold rule needs a projected "
                    "month-end threshold in USD."
                ]
            },
        ),
        ({"tag": "team"}, {"tag": ["Write the tag filter as name=value, e.g. team=search."]}),
    ],
)
def test_a_rule_missing_what_its_kind_needs_is_refused(admin_client, acme, changes, errors):
    response = admin_client.post("/admin/alerts/alertrule/add/", rule_form(acme, **changes))

    assert response.status_code == 200
    assert form_errors(response) == errors
    assert not AlertRule.objects.unscoped().exists()


# --- alerts and notifications -----------------------------------------------------------------


def test_acknowledging_records_when_and_who(admin_client, admin_user, rows):
    response = act(admin_client, "alerts/alert", "acknowledge", rows.acme_alert, rows.globex_alert)

    assert messages_of(response) == ["Acknowledged 2 alerts."]
    for alert in Alert.objects.unscoped():
        assert alert.acknowledged_at is not None
        assert alert.acknowledged_by == admin_user
    again = act(admin_client, "alerts/alert", "acknowledge", rows.acme_alert)
    assert messages_of(again) == ["Acknowledged 0 alerts. 1 alert already acknowledged."]


def test_alerts_filter_by_acknowledged_and_rule_kind(admin_client, admin_user, rows):
    act(admin_client, "alerts/alert", "acknowledge", rows.acme_alert)

    def titles(query: str) -> set[str]:
        response = admin_client.get(f"/admin/alerts/alert/?{query}")
        return {alert.title for alert in response.context["cl"].result_list}

    assert titles("acknowledged=yes") == {rows.acme_alert.title}
    assert titles("acknowledged=no") == {rows.globex_alert.title}
    assert titles("rule_kind=cache_hit_rate") == {rows.globex_alert.title}


def test_an_alert_shows_its_deliveries(admin_client, rows):
    page = admin_client.get(f"/admin/alerts/alert/{rows.acme_alert.pk}/change/").content.decode()

    assert "ops hook (Webhook (signed JSON))" in page
    assert "42 ms" in page
    assert re.search(r'<td class="field-response_code">\s*<p>200</p>\s*</td>', page)
    assert "globex slack" not in page


def test_the_notification_list_shows_each_delivery(admin_client, rows):
    page = admin_client.get("/admin/alerts/notification/").content.decode()

    assert '<td class="field-duration">7,000 ms</td>' in page
    assert '<td class="field-response_code">503</td>' in page
    assert '<span title="hooks.slack.com answered 503: xxx' in page
