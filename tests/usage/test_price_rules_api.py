"""Every pricing rule through the API: tiers, cache lifetimes, long context, modalities, per-unit
prices, and the cost explanation that lets an auditor recompute each event by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db.models import Sum

from costmon.core.tenancy import tenant_context
from tests.helpers import event, post_usage
from usage.models import HourlyRollup, ModelPrice, UsageEvent

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("unscoped")]
SINCE = datetime(2024, 1, 1, tzinfo=UTC)


def row(provider: str, model: str, inp: str, out: str, **fields: object) -> ModelPrice:
    """A global price row; rates given as strings become Decimals."""
    for name, value in fields.items():
        if name.endswith(("_mtok", "_kcalls", "_image")):
            fields[name] = Decimal(str(value))
    return ModelPrice.objects.create(
        provider=provider,
        model=model,
        effective_from=SINCE,
        input_per_mtok=Decimal(inp),
        output_per_mtok=Decimal(out),
        **fields,
    )


@pytest.fixture
def catalog(db: None) -> dict[str, ModelPrice]:
    return {
        "sonnet": row(
            "anthropic",
            "claude-sonnet-4-5",
            "3",
            "15",
            cached_input_per_mtok="0.30",
            cache_write_per_mtok="3.75",
            cache_write_1h_per_mtok="6",
            web_search_per_kcalls="10",
        ),
        "gemini": row(
            "google",
            "gemini-2.5-pro",
            "1.25",
            "10",
            cached_input_per_mtok="0.125",
            long_context_threshold=200_000,
            long_input_per_mtok="2.50",
            long_output_per_mtok="15",
        ),
        "mini": row("openai", "gpt-4o-mini", "0.15", "0.60", cached_input_per_mtok="0.075"),
        "mini_batch": row("openai", "gpt-4o-mini", "0.075", "0.30", service_tier="batch"),
        "audio": row(
            "openai",
            "gpt-realtime",
            "4",
            "16",
            input_audio_per_mtok="32",
            output_audio_per_mtok="64",
        ),
        "image": row("openai", "gpt-image-1", "5", "40", per_output_image="0.04"),
    }


def costs(client, *events) -> list[str]:
    response = post_usage(client, list(events))
    assert response.status_code == 201, response.json()
    return [e["cost_usd"] for e in response.json()["events"]]


def test_each_pricing_rule_gives_the_exact_cost(ingest_client, catalog):
    assert costs(
        ingest_client,
        # 5,000 input: 3,000 cache reads, 1,000 five-minute writes; 500 output: $0.01515
        event(
            event_id="sonnet",
            model="claude-sonnet-4-5",
            input_tokens=5000,
            cached_input_tokens=3000,
            cache_write_tokens=1000,
            output_tokens=500,
        ),
        # The same with the writes kept an hour: 1,000 x (6 - 3.75) more = $0.01740
        event(
            event_id="sonnet-1h",
            model="claude-sonnet-4-5",
            input_tokens=5000,
            cached_input_tokens=3000,
            cache_write_tokens=1000,
            cache_write_1h_tokens=1000,
            output_tokens=500,
        ),
        # Two web searches at $10 per 1,000: 1,000 x 3 + 100 x 15 + $0.02
        event(
            event_id="search",
            model="claude-sonnet-4-5",
            input_tokens=1000,
            output_tokens=100,
            web_search_calls=2,
        ),
        # Above 200k input tokens the whole call takes the long rates: $0.64
        event(
            event_id="long",
            provider="google",
            model="gemini-2.5-pro",
            input_tokens=250_000,
            output_tokens=1000,
        ),
        event(
            event_id="batch",
            provider="openai",
            model="gpt-4o-mini",
            input_tokens=1000,
            output_tokens=1000,
            service_tier="batch",
        ),
        # No flex row: the standard price, and the explanation says so.
        event(
            event_id="flex",
            provider="openai",
            model="gpt-4o-mini",
            input_tokens=1000,
            output_tokens=1000,
            service_tier="flex",
        ),
        # 1,000 input of which 600 audio; 1,000 output of which 800 audio.
        event(
            event_id="audio",
            provider="openai",
            model="gpt-realtime",
            input_tokens=1000,
            input_audio_tokens=600,
            output_tokens=1000,
            output_audio_tokens=800,
        ),
        event(
            event_id="image",
            provider="openai",
            model="gpt-image-1",
            input_tokens=100,
            output_tokens=0,
            output_images=3,
        ),
    ) == [
        "0.01515",
        "0.0174",
        "0.0245",
        "0.64",
        "0.000375",
        "0.00075",
        "0.0752",  # 400x4 + 600x32 + 200x16 + 800x64 = 75,200 per 1M
        "0.1205",  # 100 x 5 per 1M + 3 x $0.04
    ]


def test_the_explanation_recomputes_the_stored_cost_line_by_line(
    ingest_client, read_client, outsider_client, catalog
):
    post_usage(
        ingest_client,
        event(
            event_id="sonnet/1",
            model="claude-sonnet-4-5",
            input_tokens=5000,
            cached_input_tokens=3000,
            cache_write_tokens=1000,
            output_tokens=500,
        ),
    )
    body = read_client.get("/api/v1/usage/sonnet/1/").json()
    assert body["event_id"] == "sonnet/1" and body["cost_usd"] == "0.01515"
    cost = body["cost"]
    assert cost["price"] == {
        "id": catalog["sonnet"].pk,
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "service_tier": "standard",
        "effective_from": "2024-01-01T00:00:00Z",
        "owner": "global",
        "source": "",
        "source_date": None,
    }
    assert cost["lines"] == [
        {
            "kind": "input",
            "quantity": 1000,
            "unit": "1M tokens",
            "unit_price_usd": "3",
            "cost_usd": "0.003",
        },
        {
            "kind": "cached_input",
            "quantity": 3000,
            "unit": "1M tokens",
            "unit_price_usd": "0.3",
            "cost_usd": "0.0009",
        },
        {
            "kind": "cache_write_5m",
            "quantity": 1000,
            "unit": "1M tokens",
            "unit_price_usd": "3.75",
            "cost_usd": "0.00375",
        },
        {
            "kind": "output",
            "quantity": 500,
            "unit": "1M tokens",
            "unit_price_usd": "15",
            "cost_usd": "0.0075",
        },
    ]
    assert (cost["rates"], cost["tier_fallback"], cost["matches_stored_cost"]) == (
        "standard",
        False,
        True,
    )
    assert cost["resolution"] == {
        "rule": "exact",
        "catalog_name": "claude-sonnet-4-5",
        "price_id_today": catalog["sonnet"].pk,
    }
    # Another tenant cannot read it, not even by its id.
    assert outsider_client.get("/api/v1/usage/sonnet/1/").status_code == 404
    assert read_client.get("/api/v1/usage/nope/").status_code == 404


def test_the_explanation_names_a_tier_fallback_long_rates_and_unpriced_events(
    ingest_client, read_client, catalog
):
    post_usage(
        ingest_client,
        [
            event(
                event_id="flex",
                provider="openai",
                model="gpt-4o-mini",
                input_tokens=10,
                output_tokens=10,
                service_tier="flex",
            ),
            event(
                event_id="long",
                provider="google",
                model="gemini-2.5-pro",
                input_tokens=250_000,
                output_tokens=1000,
            ),
            event(event_id="dated", provider="openai", model="gpt-4o-mini-2024-07-18"),
        ],
    )
    flex = read_client.get("/api/v1/usage/flex/").json()
    assert (flex["service_tier"], flex["cost"]["tier_fallback"]) == ("flex", True)
    assert flex["cost"]["price"]["service_tier"] == "standard"
    long = read_client.get("/api/v1/usage/long/").json()["cost"]
    assert (long["rates"], long["long_context_threshold"]) == ("long_context", 200_000)
    assert [line["unit_price_usd"] for line in long["lines"]] == ["2.5", "15"]
    dated = read_client.get("/api/v1/usage/dated/").json()
    assert dated["cost_source"] == "unpriced"
    assert dated["cost"]["resolution"]["rule"] == "unpriced"
    assert "No price in the catalog" in dated["cost"]["note"]


def test_parts_larger_than_their_total_are_refused_with_the_field_named(ingest_client, catalog):
    response = post_usage(
        ingest_client,
        [
            event(event_id="a", input_tokens=100, input_audio_tokens=101),
            event(event_id="b", output_tokens=10, output_image_tokens=11),
            event(event_id="c", cache_write_tokens=10, cache_write_1h_tokens=11),
            event(event_id="d", service_tier="turbo"),
            event(event_id="e", web_search_calls=-1),
        ],
    )
    assert response.status_code == 400
    assert [(e["index"], e["field"]) for e in response.json()["errors"]] == [
        (0, "input_audio_tokens"),
        (1, "output_image_tokens"),
        (2, "cache_write_1h_tokens"),
        (3, "service_tier"),
        (4, "web_search_calls"),
    ]
    assert "exceed input_tokens" in response.json()["errors"][0]["message"]


def test_new_fields_are_stored_listed_and_summed_into_rollups_per_tenant(
    ingest_client, read_client, outsider_client, acme, outsider, catalog
):
    post_usage(
        ingest_client,
        event(
            event_id="a",
            provider="openai",
            model="gpt-realtime",
            input_tokens=1000,
            input_audio_tokens=600,
            output_tokens=1000,
            output_audio_tokens=800,
            service_tier="priority",
        ),
    )
    post_usage(outsider_client, event(event_id="g", provider="openai", model="gpt-4o-mini"))
    (listed,) = read_client.get("/api/v1/usage/").json()["results"]
    assert (listed["input_audio_tokens"], listed["output_audio_tokens"]) == (600, 800)
    assert (listed["service_tier"], listed["cost_usd"]) == ("priority", "0.0752")
    with tenant_context(acme):
        stored = UsageEvent.objects.get()
        assert stored.price_id == catalog["audio"].pk
        assert stored.web_search_calls is None  # nothing sent, nothing stored
        assert HourlyRollup.objects.aggregate(c=Sum("cost_nanos"))["c"] == 75_200_000
    with tenant_context(outsider):
        assert UsageEvent.objects.get().event_id == "g"
