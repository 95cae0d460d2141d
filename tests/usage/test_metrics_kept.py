"""The metrics API keeps the sums of the days before today (usage.kept_metrics, through
usage.settled as the dashboard does): every answer equals the one summed from the rollups in one
go, and a late event (recent or older), a re-price and an outsider's writes show exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.db.models import Sum

from costmon.core import tenancy
from costmon.core.models import Tenant
from costmon.core.periods import custom_range
from tests.helpers import event, post_usage
from usage.api import metrics_json
from usage.kept_metrics import int_rows
from usage.maintenance import usage_reprice
from usage.models import HourlyRollup, ModelHourlyRollup, ModelPrice
from usage.selectors import UsageFilters, usage_metrics

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]

NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)  # acme keeps UTC
USERS = ("ann", "bob", "cy", "dee")
QUERIES = [
    f"start={start}&end=2026-11-21&group_by={by}{more}"
    for start in ("2026-10-23", "2026-08-24")  # 30 and 90 days
    for by in ("end_user", "provider", "model", "operation", "tag:team")
    for more in ("", "&operation=chat", "&interval=hour")
    if not (more == "&interval=hour" and start == "2026-08-24")
]


@pytest.fixture(autouse=True)
def _kept(settings: Any) -> Any:
    settings.COSTMON_DASHBOARD_CACHE = True  # on both databases (tests run in one process)
    with time_machine.travel(NOW, tick=False):
        yield


def calls(prefix: str, days: range, **fields: Any) -> list[dict[str, Any]]:
    return [
        event(
            event_id=f"{prefix}{back}",
            occurred_at=(NOW.replace(hour=10) - timedelta(days=back)).isoformat(),
            end_user=USERS[back % len(USERS)],
            operation=("chat", "summarize")[back % 2],
            tags={"team": ("search", "ads", "")[back % 3]},
            **({"cost_usd": f"0.{back + 1:03d}"} | fields),
        )
        for back in days
    ]


@pytest.fixture
def usage(ingest_client: Any, outsider_client: Any) -> None:
    assert post_usage(ingest_client, calls("a", range(40))).status_code == 201
    assert post_usage(outsider_client, calls("o", range(40), cost_usd="7")).status_code == 201


def answers(client: Any) -> dict[str, Any]:
    out = {}
    for query in QUERIES:
        response = client.get(f"/api/v1/metrics/?{query}")
        assert response.status_code == 200, response.content
        out[query] = response.json()
    return out


def summed_in_one_go(tenant: Tenant) -> dict[str, Any]:
    """The same answers from `usage_metrics` without kept sums."""
    out = {}
    with tenancy.tenant_context(tenant):
        for query in QUERIES:
            params = dict(p.split("=") for p in query.split("&"))
            tr = custom_range(tenant=tenant, start=params["start"], end=params["end"])
            m = usage_metrics(
                tenant=tenant,
                time_range=tr,
                filters=UsageFilters(operation=params.get("operation")),
                group_by=params["group_by"],
                interval=params.get("interval"),
            )
            out[query] = metrics_json(m)
    return out


def spend(body: dict[str, Any], query: str) -> Decimal:
    return Decimal(body[query]["total"]["cost_usd"])


def test_kept_answers_equal_one_sum(read_client, acme, outsider, outsider_client, usage):
    fresh = summed_in_one_go(acme)
    assert answers(read_client) == fresh  # summed, the days before today kept
    assert answers(read_client) == fresh  # from the kept sums
    first = QUERIES[0]
    assert spend(fresh, first) == sum(Decimal(f"0.{b + 1:03d}") for b in range(30))
    assert fresh[first]["total"]["calls"] == 30
    theirs = answers(outsider_client)
    assert theirs == summed_in_one_go(outsider)
    assert spend(theirs, first) == 7 * 30


@pytest.mark.parametrize("moment", ["2026-11-20T23:59:00Z", "2026-11-02T08:00:00Z"])
def test_a_late_event_shows_at_once(
    read_client, acme, outsider_client, usage, ingest_client, moment
):
    """For yesterday (a recent day: only the recent days summed again) and 19 days back."""
    before = answers(read_client)
    theirs = answers(outsider_client)
    late = event(event_id="late", occurred_at=moment, end_user="zed", cost_usd="12.000000001")
    assert post_usage(ingest_client, [late]).status_code == 201
    after = answers(read_client)
    assert after == summed_in_one_go(acme)
    for query in QUERIES:
        if "operation=chat" not in query:
            assert spend(after, query) == spend(before, query) + Decimal("12.000000001")
    top = after["start=2026-10-23&end=2026-11-21&group_by=end_user"]["breakdown"][0]
    assert (top["key"], top["cost_usd"]) == ("zed", "12.000000001")
    assert answers(outsider_client) == theirs


def test_the_kept_sums_are_read(read_client, acme, usage):
    """A change no signal reports stays unseen: the answers come from the kept sums."""
    before = answers(read_client)
    with tenancy.unscoped():
        for model in (HourlyRollup, ModelHourlyRollup):
            row = model.objects.unscoped().filter(tenant=acme, hour__date="2026-11-10").get()
            row.cost_nanos += 5
            row.save()
    assert answers(read_client) == before
    assert summed_in_one_go(acme) != before


def test_a_reprice_shows_at_once(
    store, read_client, acme, outsider_client, ingest_client, django_capture_on_commit_callbacks
):
    """On every event store (`store`): ClickHouse's rewrites bump the kept sums too."""
    priced = calls("p", range(5))
    for e in priced:
        del e["cost_usd"]
    assert post_usage(ingest_client, priced).status_code == 201
    assert post_usage(outsider_client, priced).status_code == 201
    first = QUERIES[0]
    assert spend(answers(read_client), first) == Decimal("0.00675")  # 5 x $0.00135
    theirs = answers(outsider_client)
    with tenancy.unscoped():
        haiku = ModelPrice.objects.unscoped().get(model="claude-haiku-4-5")
        haiku.output_per_mtok = Decimal(4)
        haiku.save()
    with django_capture_on_commit_callbacks(execute=True):
        assert usage_reprice(tenant=acme, start=NOW - timedelta(days=10), end=NOW).changed == 5
    after = answers(read_client)
    assert spend(after, first) == Decimal("0.00585")  # 5 x $0.00117
    assert after == summed_in_one_go(acme)
    assert answers(outsider_client) == theirs


def test_int_rows_read_what_django_reads(acme, usage):
    with tenancy.tenant_context(acme):
        rows = (
            HourlyRollup.objects.for_tenant(acme)
            .values_list("end_user_id")
            .annotate(cost=Sum("cost_nanos"), calls=Sum("calls"))
            .order_by()
        )
        assert sorted(int_rows(rows)) == sorted(rows)
        assert len(int_rows(rows)) == len(USERS)  # acme's own users, not the outsider's
        assert int_rows(rows.filter(end_user_id__in=[])) == []
