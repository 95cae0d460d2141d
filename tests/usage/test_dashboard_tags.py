"""Tags on the overview: spend stacked by any tag name the tenant uses, read from the tag
rollups (`usage.models.TagHourlyRollup`), which every path that writes usage keeps equal to the
events' tags; an outsider's tags never show."""

from __future__ import annotations

import importlib
import re
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor

from costmon.core import tenancy
from costmon.core.models import Tenant
from tests.conftest import restore_test_partitions
from tests.helpers import event, post_usage
from usage.bulk import usage_bulk_load
from usage.ingest import parse_batch
from usage.maintenance import usage_events_delete, usage_reprice, usage_tenant_reset
from usage.models import ModelPrice, TagHourlyRollup, UsageEvent
from usage.rollups import ROLLUP_SUMS

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
NOW = "2026-11-21T12:00:00Z"
COST = ROLLUP_SUMS.index("cost_nanos")
CALLS = ROLLUP_SUMS.index("calls")


@pytest.fixture(autouse=True)
def _frozen_clock() -> Any:
    with time_machine.travel(NOW, tick=False):
        yield


def tagged(count: int = 24, prefix: str = "e") -> list[dict[str, Any]]:
    """Haiku chats ($0.00135 each) over two hours: a team on two in three, a feature on every
    other one, no tag on the rest."""
    out = []
    for i in range(count):
        tags = {}
        if i % 3:
            tags["team"] = ("search", "ads")[i % 3 - 1]
        if i % 2:
            tags["feature"] = f"f{i % 4}"
        out.append(
            event(
                event_id=f"{prefix}{i}",
                occurred_at=f"2026-11-20T{10 + i % 2:02d}:{i:02d}:00Z",
                operation=("chat", "summarize")[i % 2],
                tags=tags or None,
            )
        )
    return out


def tag_rows(tenant: Tenant) -> dict[tuple[Any, ...], tuple[int, ...]]:
    with tenancy.tenant_context(tenant):
        return {
            (r[0].astimezone(UTC).hour, *r[1:6]): tuple(r[6:])
            for r in TagHourlyRollup.objects.for_tenant(tenant).values_list(
                "hour",
                "provider_id",
                "model_id",
                "operation_id",
                "tag_name",
                "tag_value",
                *ROLLUP_SUMS,
            )
        }


def tags_of_events(tenant: Tenant) -> dict[tuple[Any, ...], tuple[int, ...]]:
    """The tag rollups as they must be: the events' tags summed in Python."""
    sums: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * len(ROLLUP_SUMS))
    with tenancy.tenant_context(tenant):
        events = list(UsageEvent.objects.for_tenant(tenant).select_related("tag_set"))
    for e in events:
        for name, value in (e.tags or {}).items():
            key = (
                e.occurred_at.astimezone(UTC).hour,
                e.provider_id,
                e.model_id,
                e.operation_id,
                name,
                value,
            )
            acc = sums[key]
            acc[CALLS] += 1
            acc[ROLLUP_SUMS.index("errors")] += e.is_error
            acc[ROLLUP_SUMS.index("cache_hits")] += e.cache_hit
            acc[ROLLUP_SUMS.index("unpriced_calls")] += e.cost_source == 2
            for column in (
                "input_tokens",
                "output_tokens",
                "cached_input_tokens",
                "cache_write_tokens",
                "reasoning_tokens",
                "cost_nanos",
            ):
                acc[ROLLUP_SUMS.index(column)] += getattr(e, column)
            if e.latency_ms is not None:
                acc[ROLLUP_SUMS.index("latency_ms_sum")] += e.latency_ms
                acc[ROLLUP_SUMS.index("latency_count")] += 1
    return {k: tuple(v) for k, v in sums.items()}


def test_ingest_adds_each_tag_once_and_a_resent_batch_nothing(
    ingest_client, outsider_client, acme, outsider
):
    assert post_usage(ingest_client, tagged()).status_code == 201
    assert post_usage(ingest_client, tagged()).status_code == 201  # resent: counted once
    assert post_usage(outsider_client, tagged(3, "o")).status_code == 201
    rows = tag_rows(acme)
    assert rows == tags_of_events(acme)
    team = {k[5]: v for k, v in rows.items() if k[4] == "team"}
    by_value: dict[str, int] = defaultdict(int)
    for (_, _, _, _, name, value), sums in rows.items():
        if name == "team":
            by_value[value] += sums[COST]
    # 16 of the 24 calls carry a team, 8 each: 8 x $0.00135.
    assert dict(by_value) == {"search": 10_800_000, "ads": 10_800_000}
    assert team
    assert sum(v[CALLS] for k, v in rows.items() if k[4] == "feature") == 12
    # The outsider's tags are its own; acme's rows hold none of them.
    assert sum(v[CALLS] for v in tag_rows(outsider).values()) == 2 + 1
    assert tag_rows(outsider) == tags_of_events(outsider)


def test_repricing_and_deleting_rebuild_the_tag_rollups(ingest_client, acme, outsider):
    assert post_usage(ingest_client, tagged()).status_code == 201
    with tenancy.unscoped():
        haiku = ModelPrice.objects.unscoped().get(model="claude-haiku-4-5")
        haiku.output_per_mtok = Decimal(4)
        haiku.save()
    report = usage_reprice(
        tenant=acme,
        start=datetime(2026, 11, 20, 10, tzinfo=UTC),
        end=datetime(2026, 11, 20, 11, tzinfo=UTC),
    )
    assert report.changed == 12
    assert tag_rows(acme) == tags_of_events(acme)
    costs = {v[COST] for k, v in tag_rows(acme).items() if k[0] == 10}
    assert costs <= {n * 1_170_000 for n in range(1, 13)}
    with tenancy.unscoped():
        hour_11 = UsageEvent.objects.filter(tenant=acme, occurred_at__hour=11)
        assert usage_events_delete(events=hour_11) == 12
    assert tag_rows(acme) == tags_of_events(acme)
    assert {k[0] for k in tag_rows(acme)} == {10}


def test_a_bulk_load_fills_the_tag_rollups_and_a_reset_empties_them(
    ingest_client, outsider_client, acme, outsider
):
    batch = parse_batch(tagged(40, "b"))
    assert usage_bulk_load(tenant=acme, events=batch, chunk=15).inserted == 40
    assert usage_bulk_load(tenant=acme, events=batch, chunk=15).inserted == 0
    assert tag_rows(acme) == tags_of_events(acme)
    assert post_usage(outsider_client, tagged(3, "o")).status_code == 201
    usage_tenant_reset(tenant=acme)
    assert tag_rows(acme) == {}
    assert tag_rows(outsider) == tags_of_events(outsider) != {}


@pytest.mark.django_db(transaction=True)
def test_the_migration_backfills_the_tag_rollups_from_the_events(
    ingest_client, outsider_client, acme, outsider
):
    """0011's backfill, on 0011's schema (tags as JSON on each event): the events are written
    now, migrated back (0013 puts each event's tags back from its set), summed again."""
    backfill = importlib.import_module("usage.migrations.0011_tag_hourly_rollup").backfill
    assert post_usage(ingest_client, tagged()).status_code == 201
    assert post_usage(outsider_client, tagged(3, "o")).status_code == 201
    expected = (tags_of_events(acme), tags_of_events(outsider))
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate([("usage", "0011_tag_hourly_rollup")])
    try:
        with tenancy.unscoped(), transaction.atomic():
            TagHourlyRollup.objects.unscoped().all().delete()

            class Editor:
                pass

            editor = Editor()
            editor.connection = connection  # type: ignore[attr-defined]
            backfill(None, editor)
    finally:
        MigrationExecutor(connection).migrate(latest)
        restore_test_partitions()
    assert (tag_rows(acme), tag_rows(outsider)) == expected


# --- the overview ----------------------------------------------------------------------------


@pytest.fixture
def member(client: Any, viewer: Any) -> Any:
    client.force_login(viewer)
    return client


def page(client: Any, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.content[:300]
    return response.content.decode()


def traces(html: str, div_id: str = "chart-spend") -> dict[str, list[str]]:
    """Each trace's name and hover figures in one chart of the page."""
    script = html.split(f'Plotly.newPlot(                        "{div_id}"')[1].split("</script>")[
        0
    ]
    found = re.findall(
        r'\{"customdata":\[([^\]]*(?:\][^\]]*)*?)\],"hovertemplate":"[^"]*","marker":\{[^}]*\},"name":"([^"]*)"',
        script,
    )
    return {name: re.findall(r'"(\$[^"]*)"', data) for data, name in found}


def test_the_overview_offers_every_tag_name_in_use_and_stacks_by_one(
    member, ingest_client, outsider_client
):
    plain = event(event_id="plain", occurred_at="2026-11-20T10:59:00Z", cost_usd="0.5")
    batch = [*tagged(), plain]
    assert post_usage(ingest_client, batch).status_code == 201
    theirs = [event(event_id="o1", occurred_at="2026-11-20T10:00:00Z", tags={"secret": "x"})]
    assert post_usage(outsider_client, theirs).status_code == 201
    html = page(member, "/t/acme/?period=7d")
    switch = html.split('class="switch"')[1].split("</div>")[0]
    assert re.findall(r">(tag [^<]*)<", switch) == ["tag feature", "tag team"]
    assert "secret" not in html
    by_team = page(member, "/t/acme/?period=7d&by=tag:team")
    assert "Spend per day by tag team" in by_team
    series = traces(by_team)
    # 20 November: search and ads $0.0108 each; the untagged rest $0.5108 (8 calls and $0.50).
    assert {name: [v for v in values if v != "$0"] for name, values in series.items()} == {
        "(none)": ["$0.511"],
        "ads": ["$0.0108"],
        "search": ["$0.0108"],
    }
    # Filters narrow the tag rollups too: the 12 summarize calls, 4 of each team and 4 none.
    narrowed = traces(page(member, "/t/acme/?period=7d&by=tag:team&operation=summarize"))
    assert {n: [v for v in vs if v != "$0"] for n, vs in narrowed.items()} == {
        "(none)": ["$0.0054"],
        "ads": ["$0.0054"],
        "search": ["$0.0054"],
    }


def test_an_end_user_or_tag_filter_stacks_by_tag_from_the_events(member, ingest_client):
    assert post_usage(ingest_client, tagged()).status_code == 201
    series = traces(page(member, "/t/acme/users/user-1/?period=7d&by=tag:feature"))
    assert {n: [v for v in vs if v != "$0"] for n, vs in series.items()} == {
        "(none)": ["$0.0162"],
        "f1": ["$0.0081"],
        "f3": ["$0.0081"],
    }
    assert "Name the tag to stack by" in page(member, "/t/acme/?by=tag:")


def test_stacking_by_a_tag_adds_its_table_with_exact_figures(member, ingest_client):
    plain = event(event_id="plain", occurred_at="2026-11-20T10:59:00Z", cost_usd="0.5")
    assert post_usage(ingest_client, [*tagged(), plain]).status_code == 201
    response = member.get("/t/acme/?period=7d&by=tag:team&export=tag")
    assert response.status_code == 200
    assert response.content.decode().splitlines() == [
        "name,cost_usd,calls,avg_cost_usd,errors,cache_hits",
        ",0.5108,9,0.056755555,0,0",
        "ads,0.0108,8,0.00135,0,0",
        "search,0.0108,8,0.00135,0,0",
    ]
    html = page(member, "/t/acme/?period=7d&by=tag:team")
    assert 'id="table-tag"' in html and "Spend by tag team" in html
    # Read from the events when an end user is named: every call here is user-1's.
    narrowed = member.get("/t/acme/?period=7d&by=tag:team&end_user=user-1&export=tag")
    assert narrowed.content == response.content
    assert member.get("/t/acme/?period=7d&export=tag").status_code == 400  # no tag stacking
