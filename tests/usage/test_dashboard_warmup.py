"""The background warm-up of the overview's kept sums (costmon.web.dashboard.warmup): after a
tenant's sums are forgotten it computes exactly the sums the views read, once per generation,
for that tenant alone, and a view after it sums no past day again."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from costmon.core import tenancy
from costmon.core.cache import cache_delete
from costmon.core.models import Tenant
from costmon.schedule import SCHEDULE
from costmon.web.dashboard import warmup
from costmon.web.dashboard.query import GROUPS
from costmon.web.dashboard.reads import chart_reads, table_reads
from tests.helpers import event, post_usage
from usage import settled

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]

# Saturday 21 November 2026, noon UTC (acme keeps UTC).
NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)
TODAY = "2026-11-21"
USERS = ("ann", "bob", "cy", "dee")
ROLLUP_TABLES = (
    "usage_hourlyrollup",
    "usage_modelhourlyrollup",
    "usage_taghourlyrollup",
    "usage_enduserdailyrollup",
)
# The tables of rows by end user (hourly, and whole days).
END_USER_TABLES = ("usage_hourlyrollup", "usage_enduserdailyrollup")
# A rollup read's bounds, as PostgreSQL and SQLite print them: "hour" >= '2026-11-20 00:00:00...
BOUND = re.compile(r"\"(?:hour|day)\"\s*(>=|<)\s*'(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2})")


@pytest.fixture(autouse=True)
def _warming(settings: Any) -> Any:
    """Sums kept (in this process's cache on SQLite, shared enough here) and warmed."""
    settings.COSTMON_DASHBOARD_CACHE = True
    settings.COSTMON_DASHBOARD_WARMUP = True
    with time_machine.travel(NOW, tick=False):
        yield


def calls(prefix: str, days: range, **fields: Any) -> list[dict[str, Any]]:
    """One call a day at 10:15 for each day back in `days` (0 is today), users, operations
    and teams taking turns, at exact caller-reported costs unless `fields` say otherwise."""
    out = []
    for n, back in enumerate(days):
        moment = NOW.replace(hour=10, minute=15) - timedelta(days=back)
        out.append(
            event(
                event_id=f"{prefix}{back}",
                occurred_at=moment.isoformat().replace("+00:00", "Z"),
                end_user=USERS[n % len(USERS)],
                operation=("chat", "summarize")[n % 2],
                tags={"team": ("search", "ads", "")[n % 3], "feature": ("a", "b")[n % 2]},
                **({"cost_usd": f"0.{back + 1:03d}"} | fields),
            )
        )
    return out


@pytest.fixture
def usage(acme: Tenant, outsider: Tenant, ingest_client: Any, outsider_client: Any) -> None:
    assert post_usage(ingest_client, calls("a", range(100))).status_code == 201
    # The outsider's calls on the same days must count nowhere in acme's figures.
    assert post_usage(outsider_client, calls("o", range(100), cost_usd="7")).status_code == 201


def views(tenant: Tenant, periods: tuple[str, ...] = ()) -> dict[Any, Any]:
    """What the page reads for each standard view (the warm-up's list, tag stackings too),
    or those of `periods`."""
    out: dict[Any, Any] = {}
    with tenancy.tenant_context(tenant):
        for q in warmup.standard_queries(tenant, NOW):
            if periods and q.period not in periods:
                continue
            for group in (*GROUPS, "tag:team", "tag:feature"):
                q.group_by = group
                tables = table_reads(tenant=tenant, q=q)
                out[(q.period, group)] = (tables, chart_reads(tenant=tenant, q=q, tables=tables))
    return out


def summed_in_one_go(tenant: Tenant, settings: Any, *periods: str) -> dict[Any, Any]:
    settings.COSTMON_DASHBOARD_CACHE = False
    try:
        return views(tenant, periods)
    finally:
        settings.COSTMON_DASHBOARD_CACHE = True


def past_day_scans(queries: CaptureQueriesContext, today: str = TODAY) -> list[str]:
    """The captured rollup reads of whole days before today: what is kept. (A view still
    reads today, and a comparison's stretch of a day up to this time of day, each time.)"""
    out = []
    for q in queries.captured_queries:
        if not any(t in q["sql"] for t in ROLLUP_TABLES) or q["sql"].endswith("LIMIT 1"):
            continue  # not a rollup read, or a probe of one row (has_usage)
        bounds = {op: (day, time) for op, day, time in BOUND.findall(q["sql"])}
        start, end = bounds.get(">="), bounds.get("<")
        if start is None or (start[0] < today and (end is None or end[1] == "00:00")):
            out.append(q["sql"])
    return out


def forget(tenant: Tenant, capture: Any) -> None:
    """Forget the sums of a tenant someone is looking at as a re-price does; the warm-up runs
    once it commits."""
    warmup.overview_viewed(tenant.pk)
    with capture(execute=True):
        settled.bump(tenant.pk)


def test_the_warm_up_computes_exactly_the_sums_the_views_read(
    acme, outsider, usage, settings, django_capture_on_commit_callbacks
):
    fresh = summed_in_one_go(acme, settings)
    forget(acme, django_capture_on_commit_callbacks)
    with CaptureQueriesContext(connection) as queries:
        warmed = views(acme)
    assert warmed == fresh
    assert past_day_scans(queries) == []  # every past day's sum was the warm-up's
    totals = warmed[("custom", "provider")][1].cards
    assert (totals.calls, totals.period_nanos) == (90, sum((b + 1) * 10**6 for b in range(90)))
    # The outsider's sums were not computed: its first views sum its past days, its own.
    with CaptureQueriesContext(connection) as queries:
        theirs = views(outsider, ("30d",))
    assert past_day_scans(queries)
    assert theirs == summed_in_one_go(outsider, settings, "30d")
    assert theirs[("30d", "provider")][1].cards.period_nanos == 30 * 7 * 10**9


def test_a_page_after_the_warm_up_sums_no_past_day(
    client, viewer, acme, usage, django_capture_on_commit_callbacks
):
    """The first view after the warm-up reads no past day's rollups (the savings
    recommendations' sums too were warmed), as no view of kept sums does."""
    client.force_login(viewer)

    def scans(url: str) -> list[str]:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url).status_code == 200
        return past_day_scans(queries)

    forget(acme, django_capture_on_commit_callbacks)
    start = "2026-08-24"  # the last 90 days
    for query in ("period=30d", f"period=custom&start={start}&end={TODAY}", "period=7d"):
        for by in (*GROUPS, "tag:team"):
            url = f"/t/acme/?{query}&by={by}"
            assert scans(url) == [], url
    settled.bump(acme.pk)  # no warm-up this time (no commit): the page sums again
    url = "/t/acme/?period=30d&by=end_user"
    cold = scans(url)
    assert len(cold) > len(scans(url))
    assert any(t in sql for sql in cold for t in END_USER_TABLES)


def test_queued_twice_it_runs_once_per_generation(acme, usage):
    settled.bump(acme.pk)  # no commit here: nothing queued
    assert warmup.warm_overview.delay(acme.pk).get() == warmup.WARMED
    with CaptureQueriesContext(connection) as queries:
        assert warmup.warm_overview.delay(acme.pk).get() == warmup.ALREADY
    assert len(queries.captured_queries) <= 1  # the tenant, and no sum
    with CaptureQueriesContext(connection) as queries:
        views(acme, ("30d",))
    assert past_day_scans(queries) == []
    settled.bump_recent(acme.pk)  # a new generation is warmed again
    assert warmup.warm_overview.delay(acme.pk).get() == warmup.WARMED


def test_bumps_in_a_burst_queue_one_warm_up_each_tenant(
    acme, outsider, usage, monkeypatch, django_capture_on_commit_callbacks
):
    sent: list[Any] = []
    monkeypatch.setattr(  # the broker's door: what would be queued, and when
        warmup.warm_overview, "apply_async", lambda args, countdown: sent.append((args, countdown))
    )
    warmup.overview_viewed(acme.pk)
    warmup.overview_viewed(outsider.pk)
    with django_capture_on_commit_callbacks(execute=True) as queued:
        settled.bump(acme.pk)
        settled.bump_recent(acme.pk)
        settled.bump(outsider.pk)
    assert len(queued) == 3
    delay = warmup.WARM_DELAY_SECONDS
    assert sent == [((acme.pk,), delay), ((outsider.pk,), delay)]
    assert warmup.warm_overview(acme.pk) == warmup.WARMED  # as a worker runs it, later
    with CaptureQueriesContext(connection) as queries:
        views(acme, ("custom",))
    assert past_day_scans(queries) == []  # the latest generations were warmed
    with django_capture_on_commit_callbacks(execute=True):
        settled.bump(acme.pk)  # acme's queued warm-up ran: a new bump queues another
        settled.bump(outsider.pk)  # the outsider's has not run yet
    assert sent[2:] == [((acme.pk,), delay)]


def test_a_tenants_warm_up_reads_and_keeps_only_its_own_sums(
    acme, outsider, usage, settings, django_capture_on_commit_callbacks
):
    settled.bump(acme.pk)
    with CaptureQueriesContext(connection) as queries:
        forget(outsider, django_capture_on_commit_callbacks)
    scans = past_day_scans(queries)
    assert scans
    tenant_ids = {int(n) for sql in scans for n in re.findall(r'"tenant_id"\s*=\s*(\d+)', sql)}
    assert tenant_ids == {outsider.pk}
    with CaptureQueriesContext(connection) as queries:
        assert views(acme, ("30d",)) == summed_in_one_go(acme, settings, "30d")
    assert past_day_scans(queries)  # acme's sums were not computed by the outsider's warm-up


def test_a_warm_up_stops_when_the_sums_are_forgotten_again(acme, usage, monkeypatch):
    """A warm-up whose generation moves while it runs stops: the new bump's warm-up does it."""
    real = warmup.stacked_series
    seen: list[str] = []

    def bumped_midway(**kwargs: Any) -> Any:
        seen.append(kwargs["q"].group_by)
        if len(seen) == 2:
            settled.bump(acme.pk)
        return real(**kwargs)

    monkeypatch.setattr(warmup, "stacked_series", bumped_midway)
    settled.bump(acme.pk)
    assert warmup.dashboard_sums_warm(tenant_id=acme.pk) == warmup.SUPERSEDED
    assert seen == ["model", "operation"]  # after the whole page stacked by provider
    assert warmup.dashboard_sums_warm(tenant_id=acme.pk) == warmup.WARMED


def test_a_late_event_is_warmed_and_shows(
    client, viewer, acme, outsider, usage, ingest_client, django_capture_on_commit_callbacks
):
    client.force_login(viewer)

    def card_spend() -> Decimal:
        with CaptureQueriesContext(connection) as queries:
            html = client.get("/t/acme/?period=30d&by=end_user").content.decode()
        # Only the recommendations' reads, which are not kept sums: no end user's row.
        scans = past_day_scans(queries)
        assert all(t not in sql for sql in scans for t in END_USER_TABLES)
        found = re.search(
            r'id="card-period">.*?<div class="value[^"]*"(?: title="\$([^"]+)")?>\$?([^<]*)<',
            html,
            re.S,
        )
        assert found, "no period card"
        return Decimal((found.group(1) or found.group(2)).replace(",", ""))

    forget(acme, django_capture_on_commit_callbacks)
    before = card_spend()
    assert before == sum(Decimal(f"0.{b + 1:03d}") for b in range(30))
    late = event(event_id="late", occurred_at="2026-11-19T08:00:00Z", cost_usd="0.000000007")
    with (
        CaptureQueriesContext(connection) as queries,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert post_usage(ingest_client, [late]).status_code == 201
    assert past_day_scans(queries)  # the warm-up summed the recent days again
    assert card_spend() == before + Decimal("0.000000007")


def test_a_bump_warms_only_a_tenant_someone_looked_at(
    acme, outsider, usage, monkeypatch, django_capture_on_commit_callbacks
):
    """A tenant nobody viewed in the last hours costs the workers nothing when its sums are
    forgotten (a thousand tenants' loads would queue a thousand warm-ups before their rule
    rounds); once someone opens its overview, its next bump is warmed."""
    sent: list[Any] = []
    monkeypatch.setattr(
        warmup.warm_overview, "apply_async", lambda args, countdown: sent.append(args)
    )
    with django_capture_on_commit_callbacks(execute=True):
        settled.bump(acme.pk)
        settled.bump(outsider.pk)
    assert sent == []
    warmup.overview_viewed(acme.pk)
    with django_capture_on_commit_callbacks(execute=True):
        settled.bump(acme.pk)
        settled.bump(outsider.pk)
    assert sent == [(acme.pk,)]


def test_a_view_in_another_process_is_seen_within_the_recheck_time(
    acme, outsider, usage, monkeypatch, django_capture_on_commit_callbacks
):
    """A process remembers for `VIEWED_RECHECK_SECONDS` that nobody viewed a tenant (its late
    events then cost no Redis read a batch); a view another process noted is seen once that
    time has passed, and the outsider, never viewed, is never warmed."""
    sent: list[Any] = []
    monkeypatch.setattr(
        warmup.warm_overview, "apply_async", lambda args, countdown: sent.append(args)
    )
    clock = [1000.0]
    monkeypatch.setattr(warmup, "_clock", lambda: clock[0])
    warmup.forget_viewed_local()  # what the fixtures' own ingest left, on the real clock
    with django_capture_on_commit_callbacks(execute=True):
        settled.bump(acme.pk)
        settled.bump(outsider.pk)
    assert sent == []
    # Another process's view: only the shared mark, this process's memory untouched.
    cache.set(warmup._VIEWED.format(acme.pk), "1", warmup.VIEWED_SECONDS)
    clock[0] += warmup.VIEWED_RECHECK_SECONDS - 1
    with django_capture_on_commit_callbacks(execute=True):
        settled.bump(acme.pk)
    assert sent == []  # still trusted: nobody viewed it
    clock[0] += 2
    with django_capture_on_commit_callbacks(execute=True):
        settled.bump(acme.pk)
        settled.bump(outsider.pk)
    assert sent == [(acme.pk,)]


def test_no_warm_up_without_the_setting(acme, usage, settings, django_capture_on_commit_callbacks):
    settings.COSTMON_DASHBOARD_WARMUP = False
    with django_capture_on_commit_callbacks() as queued:
        settled.bump(acme.pk)
    assert queued == []


def test_beat_keeps_only_the_viewed_tenants_sums_warm(
    client, viewer, acme, outsider, usage, settings, monkeypatch
):
    """A tenant someone viewed is refreshed by beat: its sums are summed again once the last
    warm-up is `REFRESH_AFTER_SECONDS` old (before they expire) and after its midnight, and a
    view then sums no past day. A tenant nobody viewed is not touched."""
    queued: list[Any] = []
    real_delay = warmup.warm_overview.delay
    monkeypatch.setattr(
        warmup.warm_overview,
        "delay",
        lambda *args, **kwargs: queued.append((args, kwargs)) or real_delay(*args, **kwargs),
    )
    assert warmup.refresh_viewed_overviews() == 0  # nobody looked: nothing queued
    client.force_login(viewer)
    assert client.get("/t/acme/").status_code == 200
    assert warmup.refresh_viewed_overviews() == 1
    assert queued == [((acme.pk,), {"refresh": True})]

    # Just refreshed: the next run finds the sums fresh and reads none.
    with CaptureQueriesContext(connection) as queries:
        assert warmup.dashboard_sums_warm(tenant_id=acme.pk, refresh=True) == warmup.ALREADY
    assert len(queries.captured_queries) <= 1  # the tenant, and no sum
    # Its mark gone (Redis drops it after REFRESH_AFTER_SECONDS): everything is summed again,
    # not read from what is kept, and the figures stay exactly those summed in one go.
    kept_under = settled.generations(acme.pk)
    assert kept_under is not None
    cache_delete(warmup._FRESH.format(acme.pk, *kept_under, TODAY))
    with CaptureQueriesContext(connection) as queries:
        assert warmup.dashboard_sums_warm(tenant_id=acme.pk, refresh=True) == warmup.WARMED
    assert any(t in sql for sql in past_day_scans(queries) for t in END_USER_TABLES)
    expected = summed_in_one_go(acme, settings, "30d", "custom")
    with CaptureQueriesContext(connection) as queries:
        assert views(acme, ("30d", "custom")) == expected
    assert past_day_scans(queries) == []

    # After acme's midnight every kept part has new bounds: the next run warms them at once.
    midnight = NOW.replace(hour=0, minute=5) + timedelta(days=1)
    with time_machine.travel(midnight - timedelta(minutes=10), tick=False):
        warmup.overview_viewed(acme.pk)  # still looked at in the evening
    with time_machine.travel(midnight, tick=False):
        assert warmup.refresh_viewed_overviews() == 1
        with CaptureQueriesContext(connection) as queries, tenancy.tenant_context(acme):
            for q in warmup.standard_queries(acme, midnight):
                tables = table_reads(tenant=acme, q=q)
                chart_reads(tenant=acme, q=q, tables=tables)
        assert past_day_scans(queries, today="2026-11-22") == []

    # The outsider, never viewed, had nothing computed: its first view sums its past days.
    assert {args for args, _ in queued} == {(acme.pk,)}
    with CaptureQueriesContext(connection) as queries:
        views(outsider, ("30d",))
    assert past_day_scans(queries)


def test_the_refresh_runs_before_kept_sums_expire():
    """Two beat runs fit between a refresh becoming due and its sums expiring."""
    every = int(warmup.REFRESH_EVERY.total_seconds())
    assert warmup.REFRESH_AFTER_SECONDS + 2 * every <= settled.KEEP_SECONDS
    entry = next(e for e in SCHEDULE if e.task.endswith(".refresh_viewed_overviews"))
    assert entry.every == warmup.REFRESH_EVERY
    assert warmup.refresh_viewed_overviews.name == entry.task


def test_no_refresh_without_the_setting(client, viewer, acme, usage, settings):
    client.force_login(viewer)
    settings.COSTMON_DASHBOARD_WARMUP = False
    assert client.get("/t/acme/").status_code == 200
    settings.COSTMON_DASHBOARD_WARMUP = True
    assert warmup.refresh_viewed_overviews() == 0  # the view was not noted
