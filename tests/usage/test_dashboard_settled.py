"""The dashboard's kept sums of past days (usage.settled): every figure equals
the one summed from the rollups in one go, and a late event, a re-price, a bulk load and an
outsider's writes all show at once, exactly."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.db.models import Sum
from django.db.models.functions import ExtractHour, ExtractWeekDay

from costmon.core import tenancy
from costmon.core.cache import cache_get
from costmon.core.models import Tenant
from costmon.core.periods import custom_range, recent_range
from costmon.web.dashboard import pages
from costmon.web.dashboard import tag_names as tag_names_module
from costmon.web.dashboard.cards import dashboard_cards
from costmon.web.dashboard.tag_names import tag_names
from tests.helpers import event, post_usage
from usage import settled
from usage.bulk import usage_bulk_load
from usage.ingest import parse_batch
from usage.maintenance import usage_reprice
from usage.models import HourlyRollup, ModelHourlyRollup, ModelPrice
from usage.recommendations import recommendations
from usage.selectors import UsageFilters

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]

# Saturday 21 November 2026, noon UTC (acme keeps UTC).
NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)
USERS = ("ann", "bob", "cy", "dee")
HAIKU = 1_350_000  # 450 input and 180 output tokens of claude-haiku-4-5 at $1 / $5 per million


@pytest.fixture(autouse=True)
def _kept(settings: Any) -> Any:
    """Sums kept on both databases (the embedded default keeps none: no shared cache; the
    tests run in one process, whose own cache is then shared enough)."""
    settings.COSTMON_DASHBOARD_CACHE = True
    with time_machine.travel(NOW, tick=False):
        yield


def calls(prefix: str, days: range, **fields: Any) -> list[dict[str, Any]]:
    """One call a day at 10:15 for each day back in `days` (0 is today), users and teams
    taking turns, at exact caller-reported costs unless `fields` say otherwise."""
    out = []
    for n, back in enumerate(days):
        moment = NOW.replace(hour=10, minute=15) - timedelta(days=back)
        out.append(
            event(
                event_id=f"{prefix}{back}",
                occurred_at=moment.isoformat().replace("+00:00", "Z"),
                end_user=USERS[n % len(USERS)],
                operation=("chat", "summarize")[n % 2],
                tags={"team": ("search", "ads", "")[n % 3]},
                **({"cost_usd": f"0.{back + 1:03d}"} | fields),
            )
        )
    return out


@pytest.fixture
def usage(acme: Tenant, ingest_client: Any, outsider_client: Any) -> None:
    assert post_usage(ingest_client, calls("a", range(40))).status_code == 201
    # The outsider's calls on the same days must count nowhere in acme's figures.
    assert post_usage(outsider_client, calls("o", range(40), cost_usd="7")).status_code == 201


def figures(tenant: Tenant, *, days: int = 30) -> dict[str, Any]:
    """Every figure of the overview's reads for the last `days` days (and the cards)."""
    today = NOW.date()
    tr = (
        recent_range(tenant=tenant, period="30d", now=NOW)
        if days == 30
        else custom_range(tenant=tenant, start=str(today - timedelta(days=days - 1)), end=None)
    )
    f = UsageFilters()
    with tenancy.tenant_context(tenant):
        out: dict[str, Any] = {
            "totals": pages.usage_totals(tenant=tenant, time_range=tr, filters=f),
            "cards": dashboard_cards(tenant=tenant, time_range=tr, filters=f, now=NOW),
            "heatmap": pages.spend_heatmap(tenant=tenant, time_range=tr, filters=f),
            "per bucket": pages.spend_per_bucket(
                tenant=tenant, time_range=tr, filters=f, interval="day"
            ),
            "tags": tag_names(tenant=tenant, time_range=tr),
            "by team": pages.tag_breakdown(tenant=tenant, time_range=tr, filters=f, name="team"),
            # Kept too (the overview shows them for the last 30 days whatever its period).
            "recommendations": recommendations(
                tenant=tenant,
                now=NOW,
                time_range=recent_range(tenant=tenant, period="30d", now=NOW),
            ),
        }
        for by in ("provider", "model", "operation", "end_user", "tag:team"):
            out[f"series {by}"] = pages.spend_series(
                tenant=tenant, time_range=tr, filters=f, group_by=by, families=True
            )
        users = pages.breakdown(tenant=tenant, time_range=tr, filters=f, dimension="end_user")
        out["series end_user top"] = pages.spend_series(
            tenant=tenant,
            time_range=tr,
            filters=f,
            group_by="end_user",
            top=[r["key"] for r in users],
        )
        for dimension in ("provider", "model", "operation", "end_user"):
            out[dimension] = pages.breakdown(
                tenant=tenant, time_range=tr, filters=f, dimension=dimension
            )
    return out


def summed_in_one_go(tenant: Tenant, settings: Any, **kwargs: Any) -> dict[str, Any]:
    settings.COSTMON_DASHBOARD_CACHE = False
    try:
        return figures(tenant, **kwargs)
    finally:
        settings.COSTMON_DASHBOARD_CACHE = True


def generation(tenant: Tenant) -> Any:
    return cache_get(f"costmon:dashboard:generation:v1:{tenant.pk}")


def recent_generation(tenant: Tenant) -> Any:
    return cache_get(f"costmon:dashboard:recent:v1:{tenant.pk}")


def edit_rollups(tenant: Tenant, day: str, cost_nanos: int) -> None:
    """Change a day's rollups behind every signal's back (seen only once summed again)."""
    with tenancy.unscoped():
        for model in (HourlyRollup, ModelHourlyRollup):
            row = model.objects.unscoped().filter(tenant=tenant, hour__date=day).get()
            row.cost_nanos += cost_nanos
            row.save()


@pytest.mark.parametrize("days", [30, 90])
def test_kept_sums_give_the_figures_of_one_sum(acme, outsider, usage, settings, days):
    fresh = summed_in_one_go(acme, settings, days=days)
    assert figures(acme, days=days) == fresh  # summed, and the days before today kept
    assert figures(acme, days=days) == fresh  # from the kept sums
    assert fresh["totals"]["calls"] == min(days, 40)
    assert fresh["totals"]["cost_nanos"] == sum((b + 1) * 10**6 for b in range(min(days, 40)))
    assert figures(outsider, days=days) == summed_in_one_go(outsider, settings, days=days)
    assert figures(outsider, days=days)["totals"]["cost_nanos"] == 7 * 10**9 * min(days, 40)


def test_the_kept_sums_are_read_until_the_generation_moves(acme, usage, settings):
    """The kept sums are really read (a change no signal reports stays unseen), and a new
    generation sums again."""
    before = figures(acme)
    edit_rollups(acme, "2026-11-19", 5)
    assert figures(acme) == before
    settled.bump(acme.pk)
    after = figures(acme)
    assert after["totals"]["cost_nanos"] == before["totals"]["cost_nanos"] + 5
    assert after == summed_in_one_go(acme, settings)


def test_a_late_event_for_yesterday_shows_at_once(acme, outsider, usage, ingest_client, settings):
    before = figures(acme)
    theirs = figures(outsider)
    kept, recent = generation(acme), recent_generation(acme)
    late = event(
        event_id="late",
        occurred_at="2026-11-20T23:59:00Z",
        end_user="zed",
        cost_usd="12.000000001",
    )
    assert post_usage(ingest_client, [late]).status_code == 201
    assert (generation(acme), recent_generation(acme) != recent) == (kept, True)
    after = figures(acme)
    assert after == summed_in_one_go(acme, settings)
    assert after["totals"]["cost_nanos"] == before["totals"]["cost_nanos"] + 12_000_000_001
    assert after["end_user"][0]["key"] == "zed"
    assert after["end_user"][0]["cost_nanos"] == 12_000_000_001
    assert figures(outsider) == theirs  # nothing of acme's reaches the outsider


@pytest.mark.parametrize("days", [30, 90])
def test_a_late_event_for_a_recent_day_sums_only_the_recent_days_again(
    acme, outsider, usage, ingest_client, settings, days
):
    """The recent days (the three before today) are kept apart: a late event for one of them
    forgets only theirs, and the older days' kept sums are still read."""
    before = figures(acme, days=days)
    theirs = figures(outsider, days=days)
    edit_rollups(acme, "2026-11-10", 5)  # an older day, behind every signal's back
    edit_rollups(acme, "2026-11-18", 70)  # the oldest recent day, likewise
    late = event(event_id="late", occurred_at="2026-11-18T00:00:00Z", cost_usd="0.000000300")
    assert post_usage(ingest_client, [late]).status_code == 201
    after = figures(acme, days=days)
    # The late event and the recent day's edit show; the older day's edit does not (yet).
    assert after["totals"]["cost_nanos"] == before["totals"]["cost_nanos"] + 300 + 70
    assert after["heatmap"] != before["heatmap"]
    settled.bump(acme.pk)
    fresh = summed_in_one_go(acme, settings, days=days)
    assert fresh["totals"]["cost_nanos"] == before["totals"]["cost_nanos"] + 300 + 70 + 5
    assert figures(acme, days=days) == fresh
    assert figures(outsider, days=days) == theirs


def test_a_late_event_before_the_recent_days_forgets_every_kept_sum(
    acme, outsider, usage, ingest_client, settings
):
    before = figures(acme)
    theirs = figures(outsider)
    kept = generation(acme)
    edit_rollups(acme, "2026-11-10", 5)  # seen once everything is summed again
    late = event(event_id="late", occurred_at="2026-11-17T23:59:00Z", cost_usd="0.000000300")
    assert post_usage(ingest_client, [late]).status_code == 201
    assert generation(acme) != kept
    after = figures(acme)
    assert after["totals"]["cost_nanos"] == before["totals"]["cost_nanos"] + 300 + 5
    assert after == summed_in_one_go(acme, settings)
    assert figures(outsider) == theirs


def test_an_outsiders_late_event_forgets_none_of_acmes_sums(
    acme, outsider, usage, outsider_client, settings
):
    before = figures(acme)
    kept = (generation(acme), recent_generation(acme))
    edit_rollups(acme, "2026-11-19", 9)  # stays unseen: acme's recent sums are still kept
    for n, moment in enumerate(("2026-11-20T10:00:00Z", "2026-11-01T10:00:00Z")):
        late = event(event_id=f"late{n}", occurred_at=moment, cost_usd="3")
        assert post_usage(outsider_client, [late]).status_code == 201
    assert (generation(acme), recent_generation(acme)) == kept
    assert figures(acme) == before


def test_an_event_for_today_keeps_the_kept_sums_and_shows(acme, usage, ingest_client, settings):
    before = figures(acme)
    kept = generation(acme)
    now = event(event_id="now", occurred_at="2026-11-21T11:59:00Z", cost_usd="0.000000003")
    assert post_usage(ingest_client, [now]).status_code == 201
    assert generation(acme) == kept
    after = figures(acme)
    assert after["totals"]["cost_nanos"] == before["totals"]["cost_nanos"] + 3
    assert after == summed_in_one_go(acme, settings)


def test_a_reprice_shows_at_once(
    acme, outsider, ingest_client, outsider_client, settings, django_capture_on_commit_callbacks
):
    priced = calls("p", range(5))
    for e in priced:
        del e["cost_usd"]
    assert post_usage(ingest_client, priced).status_code == 201
    assert post_usage(outsider_client, priced).status_code == 201
    assert figures(acme)["totals"]["cost_nanos"] == 5 * HAIKU
    theirs = figures(outsider)
    with tenancy.unscoped():
        haiku = ModelPrice.objects.unscoped().get(model="claude-haiku-4-5")
        haiku.output_per_mtok = Decimal(4)
        haiku.save()
    # usage_rewritten is sent once the re-price commits.
    with django_capture_on_commit_callbacks(execute=True):
        report = usage_reprice(tenant=acme, start=NOW - timedelta(days=10), end=NOW)
    assert report.changed == 5
    after = figures(acme)
    assert after["totals"]["cost_nanos"] == 5 * 1_170_000
    assert after == summed_in_one_go(acme, settings)
    assert figures(outsider) == theirs  # not re-priced


def test_a_bulk_load_of_past_days_shows_at_once(acme, usage, settings):
    before = figures(acme)
    old = calls("b", range(3, 6), cost_usd="0.5")
    assert usage_bulk_load(tenant=acme, events=parse_batch(old)).inserted == 3
    after = figures(acme)
    assert after["totals"]["cost_nanos"] == before["totals"]["cost_nanos"] + 1_500_000_000
    assert after == summed_in_one_go(acme, settings)


def test_the_overview_page_shows_a_late_event(client, viewer, acme, usage, ingest_client):
    client.force_login(viewer)

    def card_spend() -> Decimal:
        html = client.get("/t/acme/?period=30d").content.decode()
        found = re.search(
            r'id="card-period">.*?<div class="value[^"]*"(?: title="\$([^"]+)")?>\$?([^<]*)<',
            html,
            re.S,
        )
        assert found, "no period card"
        return Decimal((found.group(1) or found.group(2)).replace(",", ""))

    before = card_spend()
    assert before == sum(Decimal(f"0.{b + 1:03d}") for b in range(30))
    late = event(event_id="late", occurred_at="2026-11-19T08:00:00Z", cost_usd="0.000000007")
    assert post_usage(ingest_client, [late]).status_code == 201
    assert card_spend() == before + Decimal("0.000000007")


@pytest.mark.parametrize("probes", [50, 1])  # by index probes, and in one pass
def test_tag_names_are_those_with_calls_in_the_range(
    acme, ingest_client, outsider_client, monkeypatch, probes
):
    monkeypatch.setattr(tag_names_module, "MAX_TAG_PROBES", probes)
    batch = [
        event(event_id="old", occurred_at="2026-11-19T10:00:00Z", tags={"alpha": "1"}),
        event(event_id="new", occurred_at="2026-11-21T10:00:00Z", tags={"beta": "1", "team": ""}),
        event(event_id="none", occurred_at="2026-11-21T11:00:00Z"),
    ]
    assert post_usage(ingest_client, batch).status_code == 201
    theirs = event(event_id="o", occurred_at="2026-11-21T10:00:00Z", tags={"gamma": "1"})
    assert post_usage(outsider_client, [theirs]).status_code == 201
    with tenancy.tenant_context(acme):
        today = recent_range(tenant=acme, period="today", now=NOW)
        assert tag_names(tenant=acme, time_range=today) == ["beta", "team"]
        month = recent_range(tenant=acme, period="30d", now=NOW)
        assert tag_names(tenant=acme, time_range=month) == ["alpha", "beta", "team"]


def test_the_recommendations_are_kept_and_follow_a_bump(acme, outsider, usage, settings):
    """The recommendations' sums of past days are kept as the figures' are: a change no
    signal reports stays unseen until the generation moves, then they equal a fresh sum."""
    last_30 = recent_range(tenant=acme, period="30d", now=NOW)

    def recs(tenant: Tenant) -> list[Any]:
        with tenancy.tenant_context(tenant):
            return recommendations(tenant=tenant, now=NOW, time_range=last_30)

    before = recs(acme)
    theirs = recs(outsider)
    assert before and before != theirs
    edit_rollups(acme, "2026-11-10", 2_000_000_000)
    assert recs(acme) == before
    settled.bump(acme.pk)
    after = recs(acme)
    assert after != before
    settings.COSTMON_DASHBOARD_CACHE = False
    assert after == recs(acme)
    settings.COSTMON_DASHBOARD_CACHE = True
    assert recs(outsider) == theirs


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "America/New_York", "UTC"])
def test_the_heat_map_places_each_hour_as_the_database_would(acme, outsider, usage, zone):
    """The heat map is summed per UTC hour and placed in the week in Python: the same cells
    as the database's own weekday and hour in the zone (half-hour offsets and DST too)."""
    Tenant.objects.filter(pk=acme.pk).update(timezone=zone)
    acme.refresh_from_db()
    tr = custom_range(tenant=acme, start="2026-10-01", end="2026-11-21")
    with tenancy.tenant_context(acme):
        matrix = pages.spend_heatmap(tenant=acme, time_range=tr, filters=UsageFilters())
        rows = (
            ModelHourlyRollup.objects.for_tenant(acme)
            .filter(hour__gte=tr.start, hour__lt=tr.end)
            .annotate(wd=ExtractWeekDay("hour", tzinfo=tr.tz), h=ExtractHour("hour", tzinfo=tr.tz))
            .values_list("wd", "h")
            .annotate(cost=Sum("cost_nanos"))
            .order_by()
        )
        expected = [[0] * 24 for _ in range(7)]
        for wd, h, cost in rows:
            expected[(wd + 5) % 7][h] += int(cost)
    assert matrix == expected
    assert sum(map(sum, matrix)) == sum((b + 1) * 10**6 for b in range(40))
