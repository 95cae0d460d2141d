"""Rewriting stored events (re-pricing, deleting chosen events) on each event store.

PostgreSQL re-prices and rebuilds the rollups of the hours touched (tests/usage/test_rollups.py
has the figures). The ClickHouse store cannot rewrite its rows yet: every way in refuses, says
why, and changes nothing: the service (409), the command, the hourly task (a warning in the
log), approving a price change in admin (the hold stays pending), and deleting events in admin
(not offered). The outsider's events and rollups are never touched either way.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db.models import Sum

from costmon.core.tenancy import unscoped
from tests.helpers import event, post_usage, stored_events
from tests.usage.test_price_sync import GPT, price_list
from usage.eventstore.base import RewriteUnavailable
from usage.maintenance import usage_events_delete, usage_reprice, usage_reprice_unpriced
from usage.models import ModelHourlyRollup, ModelPrice, PriceChangeHold, UsageEvent
from usage.prices import prices_sync
from usage.repricing import reprice_unpriced_usage

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
HAIKU = 1_350_000  # 450 in x $1 + 180 out x $5 per million tokens
NEWCO = 450 * 2_000 + 180 * 3_000  # at $2 in / $3 out once newco/x-1 has a price
NOVEMBER = datetime(2026, 11, 1, tzinfo=UTC)
REFUSED = "Re-pricing stored events is not available with the ClickHouse event store yet"


@pytest.fixture(autouse=True)
def _frozen_clock():
    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        yield


@pytest.fixture
def unpriced(store, acme, outsider, ingest_client, outsider_client):
    """acme: a priced haiku call and an unpriced newco/x-1 call; globex: an unpriced one. Then
    newco/x-1 gets a price."""
    newco = {"provider": "newco", "model": "x-1"}
    ours = [event(event_id="p"), event(event_id="u", **newco)]
    assert post_usage(ingest_client, ours).status_code == 201
    assert post_usage(outsider_client, [event(event_id="u", **newco)]).status_code == 201
    with unscoped():
        ModelPrice.objects.create(
            provider="newco",
            model="x-1",
            input_per_mtok=Decimal(2),
            output_per_mtok=Decimal(3),
            effective_from="2026-01-01T00:00:00Z",
        )
    return store


def costs(tenant) -> dict[str, tuple[int, str]]:
    with unscoped():
        return {
            e.event_id: (e.cost_nanos, e.get_cost_source_display()) for e in stored_events(tenant)
        }


def rollup_cost(tenant) -> int:
    with unscoped():
        rows = ModelHourlyRollup.objects.for_tenant(tenant)
        return int(rows.aggregate(c=Sum("cost_nanos"))["c"] or 0)


UNCHANGED = {"p": (HAIKU, "computed"), "u": (0, "unpriced")}


@pytest.mark.parametrize("store", ["pg"], indirect=True)
def test_postgresql_prices_the_unpriced_events_and_their_rollups(unpriced, acme, outsider):
    with unscoped():
        report = usage_reprice_unpriced(tenant=acme)
    assert (report.examined, report.changed, report.still_unpriced) == (1, 1, 0)
    assert costs(acme) == {"p": (HAIKU, "computed"), "u": (NEWCO, "computed")}
    assert rollup_cost(acme) == HAIKU + NEWCO
    assert costs(outsider) == {"u": (0, "unpriced")}
    assert rollup_cost(outsider) == 0


@pytest.mark.clickhouse
@pytest.mark.parametrize("store", ["ch", "ch2"], indirect=True)
def test_clickhouse_refuses_to_reprice_and_changes_nothing(unpriced, acme, outsider):
    with unscoped(), pytest.raises(RewriteUnavailable) as refused:
        usage_reprice_unpriced(tenant=acme)
    assert refused.value.message.startswith(REFUSED)
    assert refused.value.status_code == 409
    with unscoped(), pytest.raises(RewriteUnavailable):
        usage_reprice(tenant=acme, start=NOVEMBER, end=NOVEMBER + timedelta(days=30))
    with pytest.raises(CommandError, match=REFUSED):
        call_command("reprice_usage", "--unpriced", stdout=io.StringIO())
    # The hourly task (and the one queued after a price load) logs why and changes nothing.
    assert reprice_unpriced_usage() == 0
    assert reprice_unpriced_usage(acme.pk) == 0
    assert costs(acme) == UNCHANGED
    assert (rollup_cost(acme), rollup_cost(outsider)) == (HAIKU, 0)
    assert costs(outsider) == {"u": (0, "unpriced")}


@pytest.mark.clickhouse
@pytest.mark.parametrize("store", ["ch", "ch2"], indirect=True)
def test_clickhouse_refuses_to_delete_chosen_events(unpriced, acme, admin_client):
    with pytest.raises(RewriteUnavailable, match="Deleting chosen events is not available"):
        usage_events_delete(events=UsageEvent.objects.unscoped().all())
    assert costs(acme) == UNCHANGED
    assert rollup_cost(acme) == HAIKU
    # Admin does not offer the delete.
    page = admin_client.get("/admin/usage/usageevent/")
    assert page.status_code == 200
    assert 'value="delete_selected"' not in page.content.decode()


@pytest.mark.clickhouse
@pytest.mark.parametrize("store", ["ch", "ch2"], indirect=True)
def test_clickhouse_refuses_to_approve_a_price_change_and_the_hold_stays_pending(
    store, acme, admin_client
):
    acme.prices_auto_apply = False
    acme.save()
    with time_machine.travel(datetime(2026, 11, 1, tzinfo=UTC), tick=False):
        prices_sync(price_list=price_list(GPT))
    prices_sync(price_list=price_list({**GPT, "input_per_mtok": "2"}))
    with unscoped():
        holds = list(PriceChangeHold.objects.unscoped().filter(tenant=acme))
    assert holds and {h.status for h in holds} == {"pending"}
    response = admin_client.post(
        "/admin/usage/pricechangehold/",
        {"action": "approve", "_selected_action": [h.pk for h in holds]},
        follow=True,
    )
    assert (
        "Approving a price change (it re-prices events) is not available with the ClickHouse "
        "event store yet"
    ) in response.content.decode()
    with unscoped():
        assert {h.status for h in PriceChangeHold.objects.unscoped().all()} == {"pending"}
