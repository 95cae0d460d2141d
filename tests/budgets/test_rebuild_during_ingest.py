"""A counter rebuild may run between a batch's commit and its counter update: ingest's lock ends
with its transaction (no round trip to release it). The rebuild's one script applies the
update it finds pending and marks it, so the batch's own update changes no counter afterwards
(it still settles its reservations); the counters then equal PostgreSQL, nothing counted twice,
nothing taken for drift."""

from __future__ import annotations

import threading
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from budgets import counters, reservations, updates
from budgets import redis as bredis
from budgets.models import CounterCorrection, ReservationHold
from budgets.services import budget_create
from costmon.core.tenancy import unscoped
from tests.budgets.conftest import NOW, check
from tests.helpers import event, post_usage, requires_postgresql, requires_redis
from usage.ingest import parse_batch
from usage.models import UsageEvent
from usage.services import usage_record_batch

pytestmark = [
    requires_redis,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("prices"),
]
HAIKU = 1_350_000  # nano-USD of the default test event


# The suite's clock, stopped at noon (`tests.budgets.conftest`): the events are of the day the
# counters and the day budget read, whenever the test runs (not two days around midnight).
AT = datetime.fromisoformat(NOW)


def now_iso() -> str:
    assert timezone.now() == AT  # the clock stands still: every event is of AT's day
    return AT.isoformat()


def day_total(tenant: Any) -> int:
    return int(bredis.client().hget(counters.day_key(tenant.pk, AT.date()), "t") or 0)


def global_day_total() -> int:
    return int(bredis.client().hget(counters.global_day_key(AT.date()), "t") or 0)


def stored_total(tenant: Any) -> int:
    with unscoped():
        return sum(UsageEvent.objects.for_tenant(tenant).values_list("cost_nanos", flat=True))


def test_a_rebuild_between_a_commit_and_its_update_counts_the_batch_once(
    acme, outsider, ingest_client, outsider_client, monkeypatch
):
    counters.counters_reconcile(tenant=acme)
    counters.counters_reconcile(tenant=outsider)
    budget_create(
        tenant=acme,
        data={"name": "cap", "period": "day", "limit_usd": Decimal("1"), "enforcement": "hard"},
    )
    post_usage(ingest_client, event(event_id="before", occurred_at=now_iso()))
    post_usage(outsider_client, event(event_id="theirs", occurred_at=now_iso()))
    held = check(ingest_client, estimated_cost_usd="0.5", reserve=True).json()
    apply_update, results = updates.apply_update, []

    def rebuild_first(r: Any, tenant_id: int, update: Any, update_id: Any) -> Any:
        # The batch committed; before its update, a rebuild (the lock is free already).
        if tenant_id == acme.pk and not results:
            results.append(counters.counters_reconcile(tenant=acme))
        applied = apply_update(r, tenant_id, update, update_id)
        results.append(applied)
        return applied

    monkeypatch.setattr(updates, "apply_update", rebuild_first)
    batch = [event(event_id="late", occurred_at=now_iso(), reservation_id=held["reservation_id"])]
    assert post_usage(ingest_client, batch).status_code == 201
    monkeypatch.undo()

    rebuilt, applied = results
    assert rebuilt.corrected == 0  # the pending update was applied, not corrected as drift
    assert (applied.applied, applied.settled) == (False, 1)  # counted by the rebuild; settled
    assert day_total(acme) == stored_total(acme) == 2 * HAIKU
    assert global_day_total() == 3 * HAIKU  # acme's two and the outsider's one, once each
    state = check(ingest_client).json()["budgets"][0]
    assert (state["used_usd"], state["reserved_usd"]) == ("0.0027", "0")
    assert counters.counters_reconcile(tenant=acme).corrected == 0
    assert day_total(outsider) == stored_total(outsider) == HAIKU
    with unscoped():
        assert not CounterCorrection.objects.exists()


@requires_postgresql  # sessions of their own, as a rebuild's worker and ingest's threads are
def test_counters_equal_postgresql_after_ingest_concurrent_with_rebuilds(acme, outsider):
    counters.counters_reconcile(tenant=acme)
    counters.counters_reconcile(tenant=outsider)
    usage_record_batch(tenant=outsider, events=parse_batch([event(occurred_at=now_iso())]))
    done, errors = threading.Event(), []

    def ingest(name: str) -> None:
        try:
            for i in range(12):
                batch = [event(event_id=f"{name}-{i}-{j}", occurred_at=now_iso()) for j in (0, 1)]
                usage_record_batch(tenant=acme, events=parse_batch(batch))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    def rebuild() -> None:
        try:
            while not done.is_set():
                counters.counters_reconcile(tenant=acme)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    writers = [threading.Thread(target=ingest, args=(name,)) for name in ("a", "b")]
    rebuilder = threading.Thread(target=rebuild)
    rebuilder.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join(60)
    done.set()
    rebuilder.join(60)
    assert not errors, errors
    assert stored_total(acme) == 48 * HAIKU
    assert day_total(acme) == 48 * HAIKU
    assert global_day_total() == 49 * HAIKU
    assert counters.counters_reconcile(tenant=acme).corrected == 0
    assert day_total(outsider) == stored_total(outsider) == HAIKU
    with unscoped():
        assert not CounterCorrection.objects.exists()  # no batch taken for drift


def test_holds_a_rebuild_moves_into_redis_before_their_delete_are_settled_there(
    acme, outsider, ingest_client, outsider_client, monkeypatch
):
    # Counters not trusted (not rebuilt yet): a check holds its reservation in PostgreSQL.
    for tenant in (acme, outsider):
        budget_create(
            tenant=tenant,
            data={"name": "cap", "period": "day", "limit_usd": Decimal("1"), "enforcement": "hard"},
        )
        counters.mark_stale(tenant.pk)  # as after Redis restarted: no rebuild yet
        bredis.client().set(f"cm:{{{tenant.pk}}}:reconciling", 1, ex=60)  # one is asked for
    held = check(ingest_client, estimated_cost_usd="0.5", reserve=True).json()
    theirs = check(outsider_client, estimated_cost_usd="0.25", reserve=True).json()
    with unscoped():
        assert ReservationHold.objects.for_tenant(acme).count() == 1
    settle, rebuilt = reservations.holds_settle, []

    def rebuild_first(**kwargs: Any) -> int:
        # Between the batch's counter update (not trusted) and its holds' delete: a rebuild
        # moves the hold into Redis and trusts the counters.
        if not rebuilt:
            rebuilt.append(counters.counters_reconcile(tenant=acme))
        return settle(**kwargs)

    monkeypatch.setattr(reservations, "holds_settle", rebuild_first)
    batch = [event(event_id="e1", occurred_at=now_iso(), reservation_id=held["reservation_id"])]
    assert post_usage(ingest_client, batch).status_code == 201
    monkeypatch.undo()

    assert rebuilt
    state = check(ingest_client).json()["budgets"][0]
    assert (state["used_usd"], state["reserved_usd"]) == ("0.00135", "0")  # settled in Redis
    with unscoped():
        assert not ReservationHold.objects.for_tenant(acme).exists()
        assert ReservationHold.objects.for_tenant(outsider).count() == 1  # theirs, untouched
    assert theirs["reservation_id"]
    assert check(outsider_client).json()["budgets"][0]["reserved_usd"] == "0.25"
