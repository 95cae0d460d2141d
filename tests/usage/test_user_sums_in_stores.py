"""Every question about end users and API keys gives the same exact figures with each event
store: PostgreSQL (its hourly rollups), ClickHouse and two ClickHouse shards (which keep the
sums by end user themselves, `EventStore.keeps_user_rollups`, PostgreSQL's `HourlyRollup` and
`EndUserDailyRollup` left empty).

acme's events go to the store under test; its twin, "twin", gets the same events through
PostgreSQL: each figure of acme is compared with the twin's, and the key ones with their values.
Both are in Asia/Kolkata (UTC+5:30), where a UTC hour starting at :30 local belongs, as a rollup
row, to the local day it starts on. The clock: Saturday 21 November 2026, 12:00 UTC.

    u1 20 Nov 10:15Z  haiku        ann  chat       $0.00135
    u2 21 Nov 09:00Z  gpt-4o-mini  ann  chat       $0.00045
    u3 19 Nov 10:00Z  haiku        bob  summarize  $0.00135
    u4 20 Nov 18:45Z  haiku        ann  chat       $0.00135  (00:15 on the 21st in Kolkata; its
                                                              hour starts at 23:30 on the 20th)
    u5 21 Nov 11:20Z  haiku        cy   chat       $0.00135  (an error)
    u6 14 Nov 11:40Z  haiku        ann  chat       $0.00135  (a week before the spike hour)
    u7 21 Nov 11:05Z  haiku        ann  chat       $0.00135
globex (the outsider): five costly calls by ann and bob on the 21st, $0.0055 each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine

from alerts.models import AlertRule
from alerts.rules import evaluate_budgets, evaluate_spike
from budgets import config as tenant_config
from budgets import counters
from budgets import redis as bredis
from budgets.counters import expected_counters
from budgets.models import Budget
from budgets.periods import budget_window
from budgets.selectors import _top_end_user
from budgets.services import budget_create
from budgets.standing import spent_from_database
from costmon.core.models import ApiKey, Tenant
from costmon.core.periods import period_range, recent_range, tenant_zone
from costmon.core.services import api_key_create, tenant_create
from costmon.core.tenancy import tenant_context
from costmon.web.dashboard.pages import (
    breakdown,
    spend_heatmap,
    spend_per_bucket,
    spend_series,
    usage_totals,
)
from tests.alerts.conftest import make_rule
from tests.budgets.conftest import check
from tests.conftest import _client
from tests.helpers import event, post_usage, requires_redis
from usage.anomalies import hourly_totals
from usage.eventstore import current
from usage.models import EndUserDailyRollup, HourlyRollup, ModelHourlyRollup
from usage.selectors import UsageFilters, usage_metrics
from usage.statements import Subject, statement_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
EVENT = 1_350_000
NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)
ANN = UsageFilters(end_user="ann")


@pytest.fixture(autouse=True)
def _frozen_clock() -> Any:
    with time_machine.travel(NOW, tick=False):
        yield


def _events() -> list[dict[str, Any]]:
    return [
        event(event_id="u1", occurred_at="2026-11-20T10:15:00Z", end_user="ann"),
        event(
            event_id="u2",
            occurred_at="2026-11-21T09:00:00Z",
            end_user="ann",
            provider="openai",
            model="gpt-4o-mini",
            input_tokens=1000,
            output_tokens=500,
        ),
        event(
            event_id="u3", occurred_at="2026-11-19T10:00:00Z", end_user="bob", operation="summarize"
        ),
        event(event_id="u4", occurred_at="2026-11-20T18:45:00Z", end_user="ann"),
        event(event_id="u5", occurred_at="2026-11-21T11:20:00Z", end_user="cy", status="error"),
        event(event_id="u6", occurred_at="2026-11-14T11:40:00Z", end_user="ann"),
        event(event_id="u7", occurred_at="2026-11-21T11:05:00Z", end_user="ann"),
    ]


@contextlib.contextmanager
def postgresql_store(settings: Any) -> Iterator[None]:
    """The PostgreSQL store for the block (the twin's side), then the store under test again."""
    kept = (settings.COSTMON_EVENT_STORE_URL, getattr(settings, "COSTMON_CLICKHOUSE_SHARDS", ""))
    settings.COSTMON_EVENT_STORE_URL = ""
    current.forget()
    try:
        yield
    finally:
        settings.COSTMON_EVENT_STORE_URL, settings.COSTMON_CLICKHOUSE_SHARDS = kept
        current.forget()


@pytest.fixture
def twins(store, settings, acme, outsider, ingest_client, outsider_client):
    """(acme, its twin): the same events, acme's in the store under test, the twin's in
    PostgreSQL; the outsider's in the store under test."""
    twin = tenant_create(slug="twin", name="Twin (PostgreSQL)")
    Tenant.objects.filter(pk__in=[acme.pk, twin.pk]).update(timezone="Asia/Kolkata")
    acme.refresh_from_db()
    twin.refresh_from_db()
    assert post_usage(ingest_client, _events()).status_code == 201
    theirs = [
        event(
            event_id=f"g{i}",
            occurred_at="2026-11-21T11:10:00Z",
            end_user="ann" if i % 2 else "bob",
            input_tokens=500,
            output_tokens=1000,
        )
        for i in range(5)
    ]
    assert post_usage(outsider_client, theirs).status_code == 201
    with postgresql_store(settings):
        client = _client(api_key_create(tenant=twin, scopes="ingest").secret)
        assert post_usage(client, _events()).status_code == 201
    return acme, twin


def same_on_both(settings: Any, twins: tuple[Tenant, Tenant], figures: Any) -> Any:
    """`figures(tenant)` of acme (the store under test) and of its twin (PostgreSQL): equal."""
    acme, twin = twins
    with tenant_context(acme):
        ours = figures(acme)
    with postgresql_store(settings), tenant_context(twin):
        theirs = figures(twin)
    assert ours == theirs
    return ours


def _plain(value: Any) -> Any:
    """Figures as plain data: Decimal sums as ints, datetimes as UTC."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return int(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return value


def test_the_store_keeps_the_sums_by_end_user_and_postgresql_keeps_none(store, twins, unscoped):
    acme, _ = twins
    keeps = store.name != "postgres"
    assert store.keeps_user_rollups is keeps
    rows = HourlyRollup.objects.filter(tenant=acme).count()
    days = EndUserDailyRollup.objects.filter(tenant=acme).count()
    assert (rows == 0, days == 0) == (keeps, keeps)
    # The by-model rollups are still PostgreSQL's, with either store.
    assert ModelHourlyRollup.objects.filter(tenant=acme).count() == 6  # u5 and u7 share one


def metrics_figures(tenant: Tenant) -> Any:
    out = []
    for period, group_by, filters, interval in [
        ("month", "end_user", UsageFilters(), "day"),
        ("day", "end_user", UsageFilters(), "hour"),
        ("week", "model", ANN, "day"),
        ("day", None, ANN, "hour"),
        ("month", "end_user", UsageFilters(model="claude-haiku-4-5"), "day"),
    ]:
        tr = period_range(tenant=tenant, period=period)
        for keep in (False, True):
            m = usage_metrics(
                tenant=tenant,
                time_range=tr,
                filters=filters,
                group_by=group_by,
                interval=interval,
                keep=keep,
            )
            out.append(_plain([m.totals, m.breakdown, m.series]))
    return out


def overview_figures(tenant: Tenant) -> Any:
    out = []
    for period in ("today", "7d", "48h", "month"):
        tr = recent_range(tenant=tenant, period=period)
        rows = breakdown(tenant=tenant, time_range=tr, filters=UsageFilters(), dimension="end_user")
        top = [r["key"] for r in rows]
        out.append(_plain(rows))
        for group_by in ("end_user", "model"):
            out.append(
                _plain(
                    spend_series(
                        tenant=tenant,
                        time_range=tr,
                        filters=UsageFilters(),
                        group_by=group_by,
                        top=top if group_by == "end_user" else None,
                        families=True,
                    )
                )
            )
        out.append(_plain(usage_totals(tenant=tenant, time_range=tr, filters=ANN)))
        out.append(
            _plain(
                breakdown(
                    tenant=tenant, time_range=tr, filters=ANN, dimension="model", families=True
                )
            )
        )
        for interval in ("hour", "day"):
            out.append(
                _plain(
                    spend_per_bucket(tenant=tenant, time_range=tr, filters=ANN, interval=interval)
                )
            )
        out.append(spend_heatmap(tenant=tenant, time_range=tr, filters=ANN))
    return out


def test_the_metrics_by_end_user_and_for_one_end_user(settings, twins):
    found = same_on_both(settings, twins, metrics_figures)
    month_by_user = found[0][1]
    assert [(r["key"], r["cost_nanos"], r["calls"]) for r in month_by_user] == [
        ("ann", 4 * EVENT + 450_000, 5),
        ("bob", EVENT, 1),
        ("cy", EVENT, 1),
    ]
    # Today in Kolkata starts at 18:30 UTC on the 20th: u4's hour (18:00) is yesterday's.
    day_by_user = found[2][1]
    assert [(r["key"], r["cost_nanos"]) for r in day_by_user] == [
        ("ann", EVENT + 450_000),
        ("cy", EVENT),
    ]
    anns_day = found[6][0]
    assert (anns_day["calls"], anns_day["cost_nanos"]) == (2, EVENT + 450_000)


def test_the_metrics_api_for_an_end_user(settings, twins, read_client):
    body = read_client.get("/api/v1/metrics/?period=week&end_user=ann&group_by=end_user").json()
    assert (body["total"]["cost_usd"], body["total"]["calls"]) == ("0.0045", 4)
    assert [(r["key"], r["cost_usd"]) for r in body["breakdown"]] == [("ann", "0.0045")]


def test_the_overview_end_users_table_top_users_and_one_users_charts(settings, twins):
    found = same_on_both(settings, twins, overview_figures)
    seven_days = found[8]
    assert [(r["key"], r["cost_nanos"], r["calls"]) for r in seven_days] == [
        ("ann", 3 * EVENT + 450_000, 4),
        ("bob", EVENT, 1),
        ("cy", EVENT, 1),
    ]
    _, cells, interval = found[9]
    assert interval == "day"
    anns = {c["bucket"]: c["cost_nanos"] for c in cells if c["key"] == "ann"}
    # Local days of Kolkata: u1 and u4 (whose hour starts on the 20th) on the 20th, u2 and u7
    # on the 21st.
    assert anns == {
        datetime(2026, 11, 19, 18, 30, tzinfo=UTC): 2 * EVENT,
        datetime(2026, 11, 20, 18, 30, tzinfo=UTC): EVENT + 450_000,
    }


def test_an_end_users_statement(settings, twins):
    def figures(tenant: Tenant) -> Any:
        statement = statement_for(
            tenant=tenant, subject=Subject("end_user", "ann"), month=date(2026, 11, 1)
        )
        return [vars(line) for line in statement.lines]

    lines = same_on_both(settings, twins, figures)
    assert [(x["model"], x["calls"], x["cost_nanos"]) for x in lines] == [
        ("claude-haiku-4-5", 4, 4 * EVENT),
        ("gpt-4o-mini", 1, 450_000),
    ]


def test_anomalies_and_the_top_end_user(settings, twins):
    def figures(tenant: Tenant) -> Any:
        start = NOW - timedelta(days=8)
        return [
            _plain(hourly_totals(tenant=tenant, start=start, end=NOW, filters=ANN)),
            _plain(
                hourly_totals(tenant=tenant, start=start, end=NOW, filters=ANN, metric="tokens")
            ),
            _top_end_user(tenant, start),
            _top_end_user(tenant, NOW - timedelta(hours=2)),
            _top_end_user(tenant, NOW),
        ]

    hourly, _, top, recent, none = same_on_both(settings, twins, figures)
    assert hourly[datetime(2026, 11, 20, 18, tzinfo=UTC)] == EVENT
    assert sum(hourly.values()) == 4 * EVENT + 450_000
    # Since 10:00 UTC ann (u7) and cy (u5) spent the same: the first name stored wins.
    assert (top, recent, none) == ("ann", "ann", "")


def _budgets(tenant: Tenant) -> list[Budget]:
    made = [
        budget_create(
            tenant=tenant,
            data={"name": "each", "scope": "every_end_user", "limit_usd": Decimal("0.002")},
        ),
        budget_create(
            tenant=tenant,
            data={
                "name": "ann",
                "scope": "end_user",
                "scope_value": "ann",
                "limit_usd": Decimal("0.01"),
            },
        ),
    ]
    key = ApiKey.objects.filter(tenant=tenant).order_by("pk").first()  # the one that sent all
    assert key is not None
    made.append(
        budget_create(
            tenant=tenant,
            data={"name": "key", "scope": "api_key", "api_key": key, "limit_usd": Decimal(1)},
        )
    )
    return made


def test_budget_spend_from_the_database_counters_and_alert_rules(settings, twins):
    def figures(tenant: Tenant) -> Any:
        budgets = _budgets(tenant)
        tz = tenant_zone(tenant)
        specs = {b.name: tenant_config.spec_of(b) for b in budgets}
        out: list[Any] = []
        for name, end_user in [("each", "ann"), ("each", "bob"), ("ann", ""), ("key", "")]:
            spec = specs[name]
            window = budget_window(period=spec.period, rolling_days=None, now=NOW, tz=tz)
            out.append(
                spent_from_database(tenant=tenant, spec=spec, window=window, end_user=end_user)
            )
        counters = expected_counters(tenant=tenant, since=date(2026, 11, 1), tag_names=[])
        out.append(
            {
                ":".join(bucket.split(":")[-2:]): {
                    ("k" if f.startswith("k:") else f): v
                    for f, v in fields.items()
                    if f[:2] in ("u:", "k:")
                }
                for bucket, fields in counters.items()
            }
        )
        rule = make_rule(tenant, [], kind="budget")
        conditions = evaluate_budgets(rule, tenant, NOW)
        out.append(sorted((c.scope.rsplit(":", 1)[-1], c.figure, c.severity) for c in conditions))
        spike = make_rule(
            tenant,
            [],
            kind=AlertRule.Kind.SPIKE,
            multiplier=Decimal(1),
            trailing_days=7,
            min_volume=Decimal("0.001"),
            end_user="ann",
        )
        out.append([(c.scope, c.figure) for c in evaluate_spike(spike, tenant, NOW)])
        return out

    found = same_on_both(settings, twins, figures)
    month = 4 * EVENT + 450_000  # ann's in November (u6 on the 14th included)
    assert found[:4] == [month, EVENT, month, month + 2 * EVENT]
    counted = found[4]
    # u4 (00:15 on the 21st in Kolkata) on the 20th, the day its hour starts on, as ingest counts.
    assert counted["d:20261120"] == {"u:ann": 2 * EVENT, "k": 2 * EVENT}
    assert counted["d:20261121"] == {
        "u:ann": EVENT + 450_000,
        "u:cy": EVENT,
        "k": 2 * EVENT + 450_000,
    }
    assert counted["m:202611"] == {
        "u:ann": month,
        "u:bob": EVENT,
        "u:cy": EVENT,
        "k": month + 2 * EVENT,
    }
    assert found[5:] == [[("ann", "$0.00585", "critical")], [("|||ann|", "$0.00135")]]


@requires_redis
def test_a_per_user_budget_check_after_a_rebuild_and_with_redis_flushed(
    store, twins, ingest_client, outsider
):
    acme, _ = twins
    budget_create(
        tenant=acme,
        data={
            "name": "each",
            "scope": "every_end_user",
            "limit_usd": Decimal("0.006"),
            "enforcement": "hard",
        },
    )
    for tenant in (acme, outsider):
        counters.counters_reconcile(tenant=tenant)
    assert counters.counters_reconcile(tenant=acme).corrected == 0  # nothing left to correct
    body = check(ingest_client, end_user="ann", estimated_cost_usd="0.0001").json()
    assert (body["source"], body["allowed"], body["budgets"][0]["used_usd"]) == (
        "redis",
        True,
        "0.00585",
    )
    bredis.client().flushdb()  # Redis restarted empty: the check reads the stores meanwhile
    body = check(ingest_client, end_user="ann", estimated_cost_usd="0.0002").json()
    assert (body["source"], body["allowed"], body["budgets"][0]["used_usd"]) == (
        "database",
        False,
        "0.00585",
    )
    bob = check(ingest_client, end_user="bob", estimated_cost_usd="0.0002").json()
    assert (bob["allowed"], bob["budgets"][0]["used_usd"]) == (True, "0.00135")


@pytest.mark.parametrize("zone", ["America/New_York", "UTC"])
def test_zones_of_whole_hours_across_a_dst_change(settings, twins, zone):
    """Where every offset is whole hours the store's own local hours and days are the rollups'
    buckets (New York left summer time on 1 November 2026)."""
    Tenant.objects.filter(pk__in=[t.pk for t in twins]).update(timezone=zone)
    for tenant in twins:
        tenant.refresh_from_db()
    same_on_both(settings, twins, metrics_figures)
    found = same_on_both(settings, twins, overview_figures)
    assert found[24][0]["cost_nanos"] == 4 * EVENT + 450_000  # ann's month
