"""Tag budgets read their spend from the events, in whichever store keeps them: the check's
database fallback (Redis flushed) and the counters' rebuild, on PostgreSQL, ClickHouse and two
ClickHouse shards, with an outsider whose spend on the same tag counts nowhere in acme's.

Every event is claude-haiku-4-5, 450 in / 180 out: $0.00135 (1,350,000 nano-dollars).
acme (Asia/Kolkata): s1 (team=search, 20 Nov), s2 (team=search env=prod, 21 Nov), o1 (team=ops),
n1 (no tag), late (team=ops, 18:45 UTC on 20 Nov).
globex (the outsider): three team=search events, $0.00405, over acme's $0.003 limit alone.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from budgets import counters
from budgets import redis as bredis
from budgets.services import budget_create
from costmon.core.models import Tenant
from tests.budgets.conftest import check
from tests.helpers import event, post_usage, requires_redis

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices"), requires_redis]
EVENT = 1_350_000
SEARCH = {"tags": {"team": "search"}}


@pytest.fixture
def spent(store, acme, outsider, ingest_client, outsider_client):
    Tenant.objects.filter(pk=acme.pk).update(timezone="Asia/Kolkata")
    acme.refresh_from_db()
    for tenant in (acme, outsider):
        counters.counters_reconcile(tenant=tenant)
    budget_create(
        tenant=acme,
        data={
            "name": "search",
            "scope": "tag",
            "scope_value": "team=search",
            "limit_usd": Decimal("0.003"),
            "enforcement": "hard",
        },
    )
    acme_events = [
        event(event_id="s1", tags={"team": "search"}),
        event(
            event_id="s2",
            occurred_at="2026-11-21T09:00:00Z",
            tags={"team": "search", "env": "prod"},
        ),
        event(event_id="o1", tags={"team": "ops"}),
        event(event_id="n1"),
        # 00:15 on the 21st in Kolkata, but its hour (18:00 UTC) starts on the 20th there.
        event(event_id="late", occurred_at="2026-11-20T18:45:00Z", tags={"team": "ops"}),
    ]
    assert post_usage(ingest_client, acme_events).status_code == 201
    theirs = [event(event_id=f"g{i}", tags={"team": "search"}) for i in range(3)]
    assert post_usage(outsider_client, theirs).status_code == 201


def tag_fields(tenant, day: date) -> dict[str, int]:
    stored = bredis.client().hgetall(counters.day_key(tenant.pk, day))
    return {k.decode(): int(v) for k, v in stored.items() if k.startswith(b"g:")}


def test_a_flushed_redis_reads_the_tag_budgets_spend_from_the_event_store(
    spent, acme, ingest_client
):
    bredis.client().flushdb()  # Redis restarted empty: the check reads the stores meanwhile
    body = check(ingest_client, estimated_cost_usd="0.0005", **SEARCH).json()
    assert (body["source"], body["allowed"]) == ("database", False)
    assert body["budgets"][0]["used_usd"] == "0.0027"  # s1 and s2 only
    again = check(ingest_client, estimated_cost_usd="0.0002", **SEARCH).json()
    assert (again["source"], again["allowed"], again["budgets"][0]["used_usd"]) == (
        "redis",
        True,
        "0.0027",
    )


def test_the_counters_rebuild_sums_each_tag_per_local_day_from_the_event_store(
    spent, acme, outsider
):
    """Per local day of acme's zone (Kolkata, UTC+5:30), each UTC hour on the day it starts
    on, as ingest counts it: so the rebuild finds only the drift made here."""
    r = bredis.client()
    r.hincrby(counters.day_key(acme.pk, date(2026, 11, 20)), "g:team=search", 5_000)  # drift
    r.hset(counters.day_key(acme.pk, date(2026, 11, 21)), "g:team=ghost", 42)
    report = counters.counters_reconcile(tenant=acme)
    assert (report.corrected, report.drift_nanos) == (2, 5_042)
    assert tag_fields(acme, date(2026, 11, 20)) == {
        "g:team=search": EVENT,
        "g:team=ops": 2 * EVENT,
    }
    assert tag_fields(acme, date(2026, 11, 21)) == {"g:team=search": EVENT}
    assert counters.counters_reconcile(tenant=acme).corrected == 0
    # The outsider has no tag budget: its rebuild counts no tag, and acme's never holds its $.
    counters.counters_reconcile(tenant=outsider)
    assert tag_fields(outsider, date(2026, 11, 20)) == {}
    month = r.hgetall(counters.bucket_key(acme.pk, "m:202611"))
    assert int(month[b"g:team=search"]) == 2 * EVENT
