"""Rewriting stored events (re-pricing, deleting chosen events) on each event store: PostgreSQL,
ClickHouse as one node and as two shards (the `store` fixture's three params).

Every way in works on each: the service, the command, the hourly task, approving a price change
in admin. Afterwards the events have exact figures, the rollups (all three tables) equal the
events exactly, and the outsider's events and rollups are untouched. On ClickHouse a rewrite
stopped between its writes to ClickHouse and its PostgreSQL commit is finished by the next run
(`usage.storerewrites`).
"""

from __future__ import annotations

import io
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from unittest import mock

import pytest
import time_machine
from django.core.management import call_command
from django.db import transaction
from django.db.models import Sum

from costmon.core.periods import EARLIEST, LATEST
from costmon.core.tenancy import unscoped
from tests.clickhouse import assert_store_rollups_exact
from tests.helpers import event, post_usage, stored_events
from tests.usage.test_price_sync import GPT, price_list
from usage.eventstore.base import RewriteUnavailable
from usage.eventstore.current import event_store
from usage.maintenance import usage_events_delete, usage_reprice, usage_reprice_unpriced
from usage.models import (
    CostSource,
    EndUserDailyRollup,
    EventRewrite,
    HourlyRollup,
    ModelHourlyRollup,
    ModelPrice,
    PriceChangeHold,
    TagHourlyRollup,
    UsageEvent,
)
from usage.prices import price_hold_decide, prices_sync
from usage.repricing import reprice_unpriced_usage
from usage.user_sums import user_sums

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
HAIKU = 1_350_000  # 450 in x $1 + 180 out x $5 per million tokens
NEWCO = 450 * 2_000 + 180 * 3_000  # at $2 in / $3 out once newco/x-1 has a price
NOVEMBER = datetime(2026, 11, 1, tzinfo=UTC)
AT = datetime(2026, 11, 20, 10, 15, tzinfo=UTC)  # the time of every event here
UNCHANGED = {"p": (HAIKU, "computed"), "u": (0, "unpriced")}
REPRICED = {"p": (HAIKU, "computed"), "u": (NEWCO, "computed")}
THEIRS = {"u": (0, "unpriced")}
NEWCO_EVENT = {"provider": "newco", "model": "x-1", "tags": {"team": "ml"}}


@pytest.fixture(autouse=True)
def _frozen_clock():
    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        yield


@pytest.fixture
def unpriced(store, acme, outsider, ingest_client, outsider_client):
    """acme: a priced haiku call and an unpriced newco/x-1 call; globex: an unpriced one (same
    id and time). Then newco/x-1 gets a price."""
    ours = [event(event_id="p"), event(event_id="u", **NEWCO_EVENT)]
    assert post_usage(ingest_client, ours).status_code == 201
    assert post_usage(outsider_client, [event(event_id="u", **NEWCO_EVENT)]).status_code == 201
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


def assert_rollups_equal_events(tenant) -> None:
    """Each rollup table sums exactly what the tenant's events sum (calls, unpriced calls, cost,
    tokens), the tag rollups once per tag; and so do the ClickHouse store's own, key by key."""
    assert_store_rollups_exact(tenant)
    events = stored_events(tenant)
    expected = Counter()
    tagged = Counter()
    for e in events:
        row = Counter(
            calls=1,
            unpriced_calls=int(e.cost_source == CostSource.UNPRICED),
            cost_nanos=e.cost_nanos,
            input_tokens=e.input_tokens,
        )
        expected.update(row)
        for _ in (e.tag_set.tags if e.tag_set else {}).items():
            tagged.update(row)
    # A store that keeps the sums by end user (ClickHouse) leaves PostgreSQL's two tables empty.
    users = Counter() if event_store().keeps_user_rollups else expected
    with unscoped():
        for model, want in (
            (HourlyRollup, users),
            (ModelHourlyRollup, expected),
            (EndUserDailyRollup, users),
            (TagHourlyRollup, tagged),
        ):
            got = model.objects.for_tenant(tenant).aggregate(
                **{k: Sum(k) for k in ("calls", "unpriced_calls", "cost_nanos", "input_tokens")}
            )
            assert {k: int(v or 0) for k, v in got.items()} == {
                k: want[k] for k in ("calls", "unpriced_calls", "cost_nanos", "input_tokens")
            }, model.__name__
        # The sums by end user and key, wherever they are kept, sum the events too.
        found = Counter()
        for g in user_sums(tenant, EARLIEST, LATEST, by=("end_user", "api_key")):
            found.update({k: g.sums[k] for k in expected})
        assert found == expected


def test_repricing_prices_the_unpriced_events_and_their_rollups(
    unpriced, acme, outsider, read_client
):
    with unscoped():
        report = usage_reprice_unpriced(tenant=acme)
    assert (report.examined, report.changed, report.still_unpriced) == (1, 1, 0)
    assert costs(acme) == REPRICED
    found = read_client.get("/api/v1/usage/u/")
    assert found.status_code == 200
    assert (found.json()["cost_usd"], found.json()["cost_source"]) == ("0.00144", "computed")
    listed = read_client.get("/api/v1/usage/?cost_source=unpriced")
    assert listed.status_code == 200 and listed.json()["results"] == []
    assert rollup_cost(acme) == HAIKU + NEWCO
    assert_rollups_equal_events(acme)
    assert costs(outsider) == THEIRS
    assert rollup_cost(outsider) == 0
    assert_rollups_equal_events(outsider)
    # Once more: nothing left to change, the figures stay.
    with unscoped():
        assert usage_reprice(tenant=acme, start=NOVEMBER, end=AT + timedelta(hours=1)).changed == 0
    assert (costs(acme), rollup_cost(acme)) == (REPRICED, HAIKU + NEWCO)


def test_the_command_and_the_hourly_task_reprice(unpriced, acme, outsider):
    out = io.StringIO()
    call_command("reprice_usage", "--unpriced", "--tenant", acme.slug, stdout=out)
    assert f"{acme.slug}: 1 examined, 1 re-priced, 0 still unpriced" in out.getvalue()
    assert (costs(acme), rollup_cost(acme)) == (REPRICED, HAIKU + NEWCO)
    assert costs(outsider) == THEIRS
    assert reprice_unpriced_usage() == 1  # the outsider's, now that newco/x-1 has a price
    assert (costs(outsider), rollup_cost(outsider)) == ({"u": (NEWCO, "computed")}, NEWCO)
    assert_rollups_equal_events(acme)
    assert_rollups_equal_events(outsider)


def test_deleting_chosen_events_leaves_exact_rollups_and_a_resend_counts_again(
    unpriced, acme, outsider, ingest_client, read_client
):
    with unscoped():
        assert usage_events_delete(tenant=acme, keys=[("u", AT), ("nope", AT)]) == 1
    assert costs(acme) == {"p": (HAIKU, "computed")}
    assert read_client.get("/api/v1/usage/u/").status_code == 404
    assert rollup_cost(acme) == HAIKU
    assert_rollups_equal_events(acme)
    # The outsider's event of the same id and time stays, and so do its rollups.
    assert costs(outsider) == THEIRS
    assert_rollups_equal_events(outsider)
    # Deleted, the event is new again when it is sent again (as PostgreSQL has it).
    assert post_usage(ingest_client, [event(event_id="u", **NEWCO_EVENT)]).status_code == 201
    assert set(costs(acme)) == {"p", "u"}
    assert_rollups_equal_events(acme)
    # A resend of it now is a duplicate.
    assert post_usage(ingest_client, [event(event_id="u", **NEWCO_EVENT)]).status_code == 201
    assert_rollups_equal_events(acme)
    with unscoped():
        assert usage_events_delete(tenant=acme, keys=[("p", AT), ("u", AT)]) == 2
    assert (costs(acme), rollup_cost(acme)) == ({}, 0)
    assert_rollups_equal_events(acme)


def test_metrics_show_the_reprice(unpriced, acme, read_client, django_capture_on_commit_callbacks):
    def spend() -> Decimal:
        reply = read_client.get("/api/v1/metrics/?start=2026-11-01&end=2026-11-21")
        assert reply.status_code == 200
        return Decimal(reply.json()["total"]["cost_usd"])

    assert spend() == Decimal("0.00135")
    with django_capture_on_commit_callbacks(execute=True), unscoped():
        usage_reprice_unpriced(tenant=acme)
    assert spend() == Decimal("0.00135") + Decimal("0.00144")


@pytest.mark.clickhouse
@pytest.mark.parametrize("store", ["ch", "ch2"], indirect=True)
def test_a_rewrite_stopped_before_its_commit_is_finished_by_the_next_run(unpriced, acme, outsider):
    """Stopped after ClickHouse took the new rows, before PostgreSQL committed: the events have
    the new figures, the rollups the old ones, the rewrite is pending; the next run (here the
    command's --resume, then a later delete) finishes it and the rollups equal the events."""
    with (
        unscoped(),
        mock.patch("usage.storerewrites.store_rollups_rebuild", side_effect=KeyboardInterrupt),
        pytest.raises(KeyboardInterrupt),
    ):
        usage_reprice_unpriced(tenant=acme)
    assert costs(acme) == REPRICED
    assert rollup_cost(acme) == HAIKU  # not rebuilt yet
    with unscoped():
        assert EventRewrite.objects.unscoped().filter(done_at=None).count() == 1
    out = io.StringIO()
    call_command("reprice_usage", "--resume", stdout=out)
    assert "1 pending rewrites finished." in out.getvalue()
    assert (costs(acme), rollup_cost(acme)) == (REPRICED, HAIKU + NEWCO)
    assert_rollups_equal_events(acme)
    # A delete stopped the same way is finished by the next rewrite of the tenant.
    with (
        unscoped(),
        mock.patch("usage.storerewrites.store_rollups_rebuild", side_effect=KeyboardInterrupt),
        pytest.raises(KeyboardInterrupt),
    ):
        usage_events_delete(tenant=acme, keys=[("u", AT)])
    assert costs(acme) == {"p": (HAIKU, "computed")}
    assert rollup_cost(acme) == HAIKU + NEWCO
    with unscoped():
        assert usage_reprice(tenant=acme, start=NOVEMBER, end=AT).changed == 0
        assert not EventRewrite.objects.unscoped().filter(done_at=None).exists()
    assert rollup_cost(acme) == HAIKU
    assert_rollups_equal_events(acme)
    assert (costs(outsider), rollup_cost(outsider)) == (THEIRS, 0)


def test_staff_see_the_rewrites_in_admin(unpriced, acme, admin_client):
    with unscoped():
        usage_reprice_unpriced(tenant=acme)
    page = admin_client.get("/admin/usage/eventrewrite/")
    assert page.status_code == 200
    # PostgreSQL rewrites in one transaction of its own database: no outbox row.
    with unscoped():
        jobs = list(EventRewrite.objects.unscoped().values_list("kind", "changed", "tenant_id"))
    assert jobs == ([("reprice", 1, acme.pk)] if unpriced.name == "clickhouse" else [])
    assert ('<td class="field-kind">Reprice</td>' in page.content.decode()) == bool(jobs)


@pytest.mark.clickhouse
@pytest.mark.parametrize("store", ["ch", "ch2"], indirect=True)
def test_clickhouse_events_are_not_deleted_from_postgresqls_table(unpriced, acme, admin_client):
    """PostgreSQL's table is empty with ClickHouse: admin's usual list sends staff to the
    store's list (`tests/usage/test_admin_store_events.py`), and a queryset of the table is
    refused (events are deleted by key)."""
    with pytest.raises(RewriteUnavailable, match="by key"):
        usage_events_delete(events=UsageEvent.objects.unscoped().all())
    assert costs(acme) == UNCHANGED
    page = admin_client.get("/admin/usage/usageevent/")
    assert (page.status_code, page["Location"]) == (302, "/admin/usage/usageevent/store/")


def test_approving_a_price_change_reprices(store, acme, admin_client):
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
    assert "not available" not in response.content.decode()
    with unscoped():
        assert {h.status for h in PriceChangeHold.objects.unscoped().all()} == {"approved"}


@pytest.mark.clickhouse
@pytest.mark.parametrize("store", ["ch"], indirect=True)
def test_the_hourly_task_finishes_a_stopped_rewrite(unpriced, acme, outsider, ingest_client):
    with (
        unscoped(),
        mock.patch("usage.storerewrites.store_rollups_rebuild", side_effect=KeyboardInterrupt),
        pytest.raises(KeyboardInterrupt),
    ):
        usage_reprice_unpriced(tenant=acme)
    assert (costs(acme), rollup_cost(acme)) == (REPRICED, HAIKU)
    # Usage keeps arriving meanwhile, in the same hour: ingest adds it to the rollups.
    assert post_usage(ingest_client, [event(event_id="q")]).status_code == 201
    assert rollup_cost(acme) == 2 * HAIKU
    assert reprice_unpriced_usage() == 1  # finishes acme's, then prices the outsider's
    with unscoped():
        assert not EventRewrite.objects.unscoped().filter(done_at=None).exists()
    assert costs(acme) == {**REPRICED, "q": (HAIKU, "computed")}
    assert rollup_cost(acme) == 2 * HAIKU + NEWCO
    assert (costs(outsider), rollup_cost(outsider)) == ({"u": (NEWCO, "computed")}, NEWCO)
    assert_rollups_equal_events(acme)
    assert_rollups_equal_events(outsider)


@pytest.mark.clickhouse
@pytest.mark.parametrize("store", ["ch"], indirect=True)
def test_a_rewrite_inside_the_callers_transaction_is_refused_and_writes_nothing(
    unpriced, acme, outsider
):
    """Its outbox row could not commit before ClickHouse is written: a programming error."""
    acme.prices_auto_apply = False
    acme.save()
    with time_machine.travel(datetime(2026, 11, 1, tzinfo=UTC), tick=False):
        prices_sync(price_list=price_list(GPT))
    prices_sync(price_list=price_list({**GPT, "input_per_mtok": "2"}))
    with unscoped():
        hold = PriceChangeHold.objects.unscoped().filter(tenant=acme).first()
    calls = [
        ("usage_reprice", lambda: usage_reprice(tenant=acme, start=NOVEMBER, end=AT)),
        ("usage_reprice", lambda: usage_reprice_unpriced(tenant=acme)),
        ("usage_events_delete", lambda: usage_events_delete(tenant=acme, keys=[("p", AT)])),
        ("price_hold_decide", lambda: price_hold_decide(hold=hold, approve=True)),
    ]
    for name, call in calls:
        with (
            unscoped(),
            transaction.atomic(),
            pytest.raises(RuntimeError, match=rf"^{name} must be called outside transaction"),
        ):
            call()
    with unscoped():
        assert not EventRewrite.objects.unscoped().exists()
        assert {h.status for h in PriceChangeHold.objects.unscoped().all()} == {"pending"}
    assert (costs(acme), rollup_cost(acme)) == (UNCHANGED, HAIKU)
    assert (costs(outsider), rollup_cost(outsider)) == (THEIRS, 0)
    # Outside a transaction the same calls work.
    with unscoped():
        assert usage_reprice_unpriced(tenant=acme).changed == 1
    assert (costs(acme), rollup_cost(acme)) == (REPRICED, HAIKU + NEWCO)
    assert (costs(outsider), rollup_cost(outsider)) == (THEIRS, 0)


def test_the_tenant_admins_reprice_action_works_on_every_store(
    unpriced, acme, outsider, admin_client
):
    """Admin actions run outside a transaction (`changelist_view` is not atomic)."""
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
    assert [str(m) for m in response.context["messages"]] == [
        "acme: 1 event re-priced of 1 examined; 0 still unpriced."
    ]
    assert (costs(acme), rollup_cost(acme)) == (REPRICED, HAIKU + NEWCO)
    assert (costs(outsider), rollup_cost(outsider)) == (THEIRS, 0)
    assert_rollups_equal_events(acme)
