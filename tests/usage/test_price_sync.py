"""Syncing the catalog from a price list: history kept, a change record staff can read, waiting
events priced, counters and rollups equal to the events, review by tenants that ask for it, and
the price_changed alert."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import time_machine
from django.db.models import Sum

from alerts.models import Alert, AlertRule
from alerts.services import alert_rules_evaluate
from budgets import counters
from budgets import redis as bredis
from costmon.core.tenancy import tenant_context, unscoped
from tests.helpers import event, post_usage, requires_redis
from usage.models import (
    CostSource,
    HourlyRollup,
    ModelPrice,
    PriceChangeHold,
    PriceSync,
    UsageEvent,
)
from usage.prices import PriceList, price_hold_decide, prices_sync

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def price_list(*rows: dict[str, str], version: str = "v1") -> PriceList:
    return PriceList(rows=list(rows), source="test list", format="costmon", version=version)


GPT = {"provider": "openai", "model": "gpt-4o", "input_per_mtok": "2.50", "output_per_mtok": "10"}
MINI = {
    "provider": "openai",
    "model": "gpt-4o-mini",
    "input_per_mtok": "0.15",
    "output_per_mtok": "0.60",
}
NEW = {"provider": "newco", "model": "brainy-1", "input_per_mtok": "2", "output_per_mtok": "10"}


def write(tmp_path: Path, *rows: dict[str, str]) -> str:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"catalog_version": "test-2", "prices": list(rows)}))
    return str(path)


@requires_redis
def test_a_sync_adds_a_model_changes_a_price_and_keeps_everything_equal(
    tmp_path,
    acme,
    outsider,
    ingest_client,
    outsider_client,
    admin_client,
    django_capture_on_commit_callbacks,
):
    from django.core.management import call_command

    with time_machine.travel(datetime(2026, 11, 1, tzinfo=UTC), tick=False):
        prices_sync(price_list=price_list(GPT, MINI))
    with time_machine.travel(NOW, tick=False):
        assert (
            post_usage(
                ingest_client,
                [
                    event(
                        event_id="old",
                        provider="openai",
                        model="gpt-4o",
                        occurred_at="2026-11-20T10:00:00Z",
                    ),
                    event(
                        event_id="wait",
                        provider="newco",
                        model="brainy-1",
                        occurred_at="2026-11-20T11:00:00Z",
                    ),
                ],
            ).status_code
            == 201
        )
        post_usage(
            outsider_client,
            event(
                event_id="g",
                provider="openai",
                model="gpt-4o-mini",
                occurred_at="2026-11-20T10:00:00Z",
            ),
        )
        outsider_before = list(
            UsageEvent.objects.unscoped()
            .filter(tenant=outsider)
            .values_list("cost_nanos", "price_id")
        )
        # The list now says gpt-4o costs $2.00 / $8.00 and names a new model.
        cheaper = {**GPT, "input_per_mtok": "2.00", "output_per_mtok": "8"}
        with django_capture_on_commit_callbacks(execute=True):
            call_command("load_prices", write(tmp_path, cheaper, MINI, NEW), stdout=io.StringIO())
        # History is kept: the old price still prices yesterday, the new one from now on.
        rows = list(
            ModelPrice.objects.unscoped()
            .filter(model="gpt-4o")
            .order_by("effective_from")
            .values_list("effective_from", "input_per_mtok")
        )
        assert rows == [
            (datetime(2020, 1, 1, tzinfo=UTC), Decimal("2.5")),
            (NOW, Decimal("2")),
        ]
        sync = PriceSync.objects.get(catalog_version="test-2")
        assert (sync.status, sync.added, sync.changed, sync.unchanged, sync.missing) == (
            "applied",
            1,
            1,
            1,
            0,
        )
        (change,) = sync.details["changed"]
        assert (
            change["model"],
            change["old"]["input_per_mtok"],
            change["new"]["input_per_mtok"],
        ) == (
            "gpt-4o",
            "2.5",
            "2",
        )
        # Staff read the change record in the admin.
        page = admin_client.get(f"/admin/usage/pricesync/{sync.pk}/change/").content.decode()
        assert "openai/gpt-4o" in page and "input 2.5" in page and "input 2," in page
        assert "newco/brainy-1" in page
        listing = admin_client.get("/admin/usage/pricesync/").content.decode()
        assert "test-2" in listing
        # The waiting event got its price; yesterday's gpt-4o call kept the old one.
        with tenant_context(acme):
            costs = dict(UsageEvent.objects.values_list("event_id", "cost_nanos"))
            assert costs == {"old": 450 * 2500 + 180 * 10000, "wait": 450 * 2000 + 180 * 10000}
            assert UsageEvent.objects.get(event_id="wait").cost_source == CostSource.COMPUTED
            events = UsageEvent.objects.aggregate(c=Sum("cost_nanos"))["c"]
            assert HourlyRollup.objects.aggregate(c=Sum("cost_nanos"))["c"] == events
        # Spend counters follow the re-priced events.
        total = bredis.client().hget(counters.day_key(acme.pk, date(2026, 11, 20)), "t")
        assert int(total) == events
        assert counters.counters_reconcile(tenant=acme).corrected == 0
        # The outsider's events are untouched.
        assert outsider_before == list(
            UsageEvent.objects.unscoped()
            .filter(tenant=outsider)
            .values_list("cost_nanos", "price_id")
        )
        # Loading the same list again changes nothing.
        again = prices_sync(price_list=price_list(cheaper, MINI, NEW))
        assert (again.status, again.added, again.changed, again.unchanged) == ("unchanged", 0, 0, 3)


def test_a_model_the_list_drops_keeps_its_price(acme):
    prices_sync(price_list=price_list(GPT, MINI))
    sync = prices_sync(price_list=price_list(GPT))
    assert (sync.missing, ModelPrice.objects.unscoped().filter(model="gpt-4o-mini").count()) == (
        1,
        1,
    )


def test_a_tenant_that_reviews_changes_keeps_old_prices_until_staff_approve(
    acme, outsider, ingest_client, outsider_client, admin_client
):
    acme.prices_auto_apply = False
    acme.save()
    with time_machine.travel(datetime(2026, 11, 1, tzinfo=UTC), tick=False):
        prices_sync(price_list=price_list(GPT))
    with time_machine.travel(NOW, tick=False):
        sync = prices_sync(price_list=price_list({**GPT, "input_per_mtok": "2"}))
        with unscoped():
            hold = PriceChangeHold.objects.unscoped().get()
        assert (hold.tenant_id, hold.sync_id, hold.status) == (acme.pk, sync.pk, "pending")
        later = event(
            event_id="later", provider="openai", model="gpt-4o", occurred_at="2026-11-21T12:30:00Z"
        )
    with time_machine.travel(datetime(2026, 11, 21, 13, 0, tzinfo=UTC), tick=False):
        assert post_usage(ingest_client, later).json()["events"][0]["cost_usd"] == "0.002925"
        assert post_usage(outsider_client, later).json()["events"][0]["cost_usd"] == "0.0027"
        page = admin_client.get("/admin/usage/pricesync/").content.decode()
        assert "awaiting approval" in page.lower()
        response = admin_client.post(
            "/admin/usage/pricechangehold/",
            {"action": "approve", "_selected_action": [hold.pk]},
            follow=True,
        )
        assert "1 change set approved" in response.content.decode()
        with tenant_context(acme):
            # Approved: acme's calls since the sync are priced again at the new price.
            assert UsageEvent.objects.get().cost_nanos == 450 * 2000 + 180 * 10000
        assert price_hold_decide(hold=hold, approve=False) is False  # decided once


def test_the_names_in_use_page_shows_how_each_name_was_priced(
    acme, outsider, ingest_client, outsider_client, admin_client
):
    prices_sync(price_list=price_list({**GPT, "match_pattern": "gpt-4o-20??-??-??"}))
    with time_machine.travel(NOW, tick=False):
        post_usage(
            ingest_client,
            [
                event(
                    event_id="a",
                    provider="openai",
                    model="gpt-4o",
                    occurred_at="2026-11-21T10:00:00Z",
                ),
                event(
                    event_id="b",
                    provider="azure",
                    model="gpt-4o-2024-08-06",
                    occurred_at="2026-11-21T10:00:00Z",
                ),
                event(
                    event_id="c",
                    provider="openai",
                    model="gpt-9",
                    occurred_at="2026-11-21T10:00:00Z",
                ),
            ],
        )
        post_usage(
            outsider_client,
            event(
                event_id="g",
                provider="openai",
                model="outsider-model",
                occurred_at="2026-11-21T10:00:00Z",
            ),
        )
        page = admin_client.get("/admin/usage/modelprice/resolution/?tenant=acme").content.decode()
    assert "1 name found no price" in page
    for text in ("gpt-4o-2024-08-06", "pattern", "exact", "gpt-9", "unpriced"):
        assert text in page
    assert "outsider-model" not in page


def test_a_price_changed_rule_alerts_once_per_sync_naming_the_models_used(
    acme, outsider, ingest_client
):
    with time_machine.travel(datetime(2026, 11, 1, tzinfo=UTC), tick=False):
        prices_sync(price_list=price_list(GPT, MINI))
        with unscoped():
            rule = AlertRule.objects.create(tenant=acme, name="prices", kind="price_changed")
            other = AlertRule.objects.create(tenant=outsider, name="prices", kind="price_changed")
    with time_machine.travel(NOW, tick=False):
        post_usage(
            ingest_client,
            event(
                event_id="a",
                provider="openai",
                model="gpt-4o-mini",
                occurred_at="2026-11-21T10:00:00Z",
            ),
        )
        prices_sync(
            price_list=price_list(GPT, {**MINI, "output_per_mtok": "0.50"}, NEW, version="v2")
        )
        alert_rules_evaluate(kinds=["price_changed"], now=NOW)
        alert_rules_evaluate(kinds=["price_changed"], now=NOW)
    with unscoped():
        (alert,) = Alert.objects.for_tenant(acme).filter(rule=rule)
        (theirs,) = Alert.objects.for_tenant(outsider).filter(rule=other)
    assert alert.title == "Prices changed: 1 changed, 1 added (1 of them models you use)"
    assert "- openai/gpt-4o-mini: output $0.6 → $0.5 per 1M tokens" in alert.text
    assert alert.text.index("gpt-4o-mini") < alert.text.index("brainy-1")
    assert alert.notify_count == 1
    # The outsider hears of the same catalog change, but nothing of acme's usage.
    assert theirs.title == "Prices changed: 1 changed, 1 added (0 of them models you use)"
