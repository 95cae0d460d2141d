from __future__ import annotations

import io
from decimal import Decimal

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db.models import Sum

from costmon.core.tenancy import tenant_context, unscoped
from tests.helpers import event, post_usage
from usage.models import CostSource, HourlyRollup, ModelPrice, PriceSync, UsageEvent

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_the_shipped_catalog_loads_idempotently_and_prices_the_documented_examples(ingest_client):
    first = run("load_prices")
    assert ", 0 changed, 0 unchanged" in first
    count = ModelPrice.objects.unscoped().count()
    assert count >= 60
    assert f"0 added, 0 changed, {count} unchanged" in run("load_prices")
    assert PriceSync.objects.count() == 2  # every load leaves its record
    response = post_usage(
        ingest_client,
        [
            event(event_id="a", model="claude-haiku-4-5"),
            event(
                event_id="b",
                provider="openai",
                model="text-embedding-3-large",
                input_tokens=1000,
                output_tokens=0,
            ),
            event(
                event_id="c",
                provider="openai",
                model="gpt-4o-mini",
                input_tokens=1500,
                output_tokens=500,
            ),
        ],
    )
    assert [e["cost_usd"] for e in response.json()["events"]] == ["0.00135", "0.00013", "0.000525"]


def test_a_csv_catalog_with_dates_writes_its_rows_and_a_tenant_override(tmp_path, acme):
    path = tmp_path / "prices.csv"
    path.write_text(
        "provider,model,effective_from,input_per_mtok,output_per_mtok,source\n"
        "openai,gpt-4o,2024-10-01,2.50,10,https://openai.com/api/pricing/\n"
    )
    assert "1 added" in run("load_prices", str(path))
    # A row that names its start replaces the row with that start (a curated correction).
    path.write_text(path.read_text().replace("2.50,10", "2.40,10"))
    assert "1 changed" in run("load_prices", str(path))
    assert ModelPrice.objects.unscoped().get(model="gpt-4o").input_per_mtok == Decimal("2.40")
    assert "tenant acme: 1 added" in run("load_prices", str(path), "--tenant", "acme")
    with unscoped():
        assert ModelPrice.objects.for_tenant(acme).count() == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"prices": [{"provider": "openai", "model": "m", "input_per_mtok": "abc"}]}',
            r"Price 1 \(openai/m\): input_per_mtok 'abc' is not a decimal",
        ),
        (
            '{"prices": [{"provider": "openai", "model": "ok", "input_per_mtok": "1"}, '
            '{"provider": "openai", "model": "m", "input_per_mtok": "-1"}]}',
            r"Price 2 \(openai/m\): input_per_mtok must be a non-negative number",
        ),
        (
            '{"prices": [{"provider": "openai", "model": "m", "input_per_mtok": "1", '
            '"inptu_per_mtok": "2"}]}',
            "unknown field",
        ),
        (
            '{"prices": [{"provider": "openai", "model": "m", "input_per_mtok": "1", '
            '"service_tier": "turbo"}]}',
            "service_tier must be one of standard, batch, flex, priority",
        ),
        ('{"prices": [{"provider": "", "model": "m"}]}', "provider is required"),
        ('{"prices": {"provider": "openai"}}', "must hold a list of prices"),
        ('"prices"', "must hold a list of prices"),
        ("[1, 2]", r"Price 1 \(int\): must be an object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_a_bad_catalog_file_is_refused_whole(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CommandError, match=message):
        run("load_prices", str(path))
    assert ModelPrice.objects.unscoped().count() == 0
    failed = PriceSync.objects.get()
    assert failed.status == "failed" and failed.error


def test_json_numbers_in_a_catalog_are_read_exactly(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(
        '[{"provider": "openai", "model": "m", "effective_from": "2024-01-01", '
        '"input_per_mtok": 0.1, "output_per_mtok": 0.3}]'
    )
    run("load_prices", str(path))
    price = ModelPrice.objects.unscoped().get(model="m")
    assert (price.input_per_mtok, price.output_per_mtok) == (Decimal("0.1"), Decimal("0.3"))


def test_repricing_a_range_after_a_correction_keeps_rollups_equal_to_events(
    ingest_client, acme, prices
):
    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        batch = [
            event(
                event_id=f"e{i}",
                occurred_at=f"2026-11-{10 + i % 5:02d}T{i % 24:02d}:00:00Z",
                end_user=f"u{i % 3}",
            )
            for i in range(50)
        ]
        batch.append(event(event_id="caller", occurred_at="2026-11-12T01:00:00Z", cost_usd="1"))
        assert post_usage(ingest_client, batch).status_code == 201
        with unscoped():
            haiku = ModelPrice.objects.unscoped().get(model="claude-haiku-4-5")
            haiku.output_per_mtok = Decimal(4)  # the list price was wrong: $4 per 1M output
            haiku.save()
        out = run(
            "reprice_usage", "--tenant", "acme", "--start", "2026-11-11", "--end", "2026-11-13"
        )
    assert "20 re-priced" in out  # days 11 and 12 hold 10 events each; the caller's cost is kept
    with tenant_context(acme):
        events = UsageEvent.objects.aggregate(c=Sum("cost_nanos"))["c"]
        rollups = HourlyRollup.objects.aggregate(c=Sum("cost_nanos"))["c"]
        assert UsageEvent.objects.get(event_id="caller").cost_nanos == 1_000_000_000
        assert (
            UsageEvent.objects.get(event_id="e1").cost_nanos == 450_000 + 720_000
        )  # 450*1 + 180*4
        assert (
            UsageEvent.objects.get(event_id="e0").cost_nanos == 1_350_000
        )  # the 10th: out of range
    assert events == rollups == 30 * 1_350_000 + 20 * 1_170_000 + 1_000_000_000


def test_reprice_needs_a_range_or_unpriced(acme):
    with pytest.raises(CommandError, match="--unpriced, or --start"):
        run("reprice_usage")


def test_loading_a_missing_price_prices_waiting_events_through_the_task(
    tmp_path, ingest_client, acme, outsider, outsider_client, django_capture_on_commit_callbacks
):
    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        post_usage(ingest_client, event(event_id="a", provider="newco", model="brainy-1"))
        post_usage(ingest_client, event(event_id="b", provider="newco", model="brainy-1-20261101"))
        post_usage(outsider_client, event(event_id="g", provider="newco", model="brainy-1"))
    path = tmp_path / "newco.json"
    path.write_text(
        '[{"provider": "newco", "model": "brainy-1", "input_per_mtok": "2", "output_per_mtok": "10"}]'
    )
    with django_capture_on_commit_callbacks(execute=True):
        run("load_prices", str(path))
    for tenant in (acme, outsider):
        with tenant_context(tenant):
            priced = UsageEvent.objects.get(model__value="brainy-1")
            assert (priced.cost_nanos, priced.get_cost_source_display()) == (2_700_000, "computed")
    with tenant_context(acme):
        # A dated name is not priced as its family unless the catalog says so.
        assert UsageEvent.objects.get(event_id="b").cost_source == CostSource.UNPRICED
        assert HourlyRollup.objects.aggregate(c=Sum("cost_nanos"))["c"] == 2_700_000
