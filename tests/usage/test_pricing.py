"""The pricing rules as pure functions: name matching, price history, exact arithmetic."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from usage.pricing import Alias, Catalog, Price, Rates, candidate_names, cost_nanos, format_usd

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def price(
    provider: str,
    model: str,
    inp: str,
    out: str,
    *,
    pid: int = 1,
    tenant_id: int | None = None,
    when: datetime = T0,
    pattern: str = "",
    cached: str | None = None,
) -> Price:
    rate_in = Decimal(inp)
    return Price(
        id=pid,
        tenant_id=tenant_id,
        provider=provider,
        model=model,
        match_pattern=pattern,
        effective_from=when,
        rates=Rates(rate_in, Decimal(out), Decimal(cached) if cached else rate_in, rate_in),
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("anthropic.claude-3-5-sonnet-20240620-v1:0", "claude-3-5-sonnet"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet"),
        ("models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
        ("mistral-large-2411", "mistral-large"),
        ("mistral-large-latest", "mistral-large"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
    ],
)
def test_snapshot_and_deployment_names_reduce_to_the_catalog_name(name, expected):
    assert expected in candidate_names(name)


def test_the_longest_matching_name_wins_so_mini_is_not_priced_as_4o():
    catalog = Catalog(
        [
            price("openai", "gpt-4o", "2.50", "10", pid=1),
            price("openai", "gpt-4o-mini", "0.15", "0.60", pid=2),
        ]
    )
    assert catalog.price_at("openai", "gpt-4o-mini-2024-07-18", T0).id == 2
    assert catalog.price_at("openai", "gpt-4o-2024-08-06", T0).id == 1
    assert catalog.price_at("openai", "gpt-4o-audio", T0) is None


def test_price_history_picks_the_price_in_force():
    later = datetime(2025, 6, 1, tzinfo=UTC)
    catalog = Catalog(
        [
            price("openai", "o3", "10", "40", pid=1),
            price("openai", "o3", "2", "8", pid=2, when=later),
        ]
    )
    assert catalog.price_at("openai", "o3", datetime(2025, 5, 31, 23, 59, tzinfo=UTC)).id == 1
    assert catalog.price_at("openai", "o3", later).id == 2
    assert catalog.price_at("openai", "o3", datetime(2023, 1, 1, tzinfo=UTC)) is None


def test_a_tenant_override_comes_before_the_list_price_but_only_from_its_start():
    start = datetime(2025, 1, 1, tzinfo=UTC)
    catalog = Catalog(
        [
            price("openai", "gpt-4o", "2.50", "10", pid=1),
            price("openai", "gpt-4o", "2", "8", pid=2, tenant_id=7, when=start),
        ]
    )
    assert catalog.price_at("openai", "gpt-4o", start).id == 2
    assert catalog.price_at("openai", "gpt-4o", datetime(2024, 6, 1, tzinfo=UTC)).id == 1


def test_resellers_and_gateways_find_the_model_by_name():
    catalog = Catalog(
        [
            price("openai", "gpt-4o", "2.50", "10", pid=1),
            price("anthropic", "claude-haiku-4-5", "1", "5", pid=2),
        ]
    )
    assert catalog.price_at("azure", "gpt-4o", T0).id == 1
    assert catalog.price_at("openrouter", "gpt-4o", T0).id == 1
    assert catalog.price_at("bedrock", "anthropic.claude-haiku-4-5-20251001-v1:0", T0).id == 2


def test_an_alias_maps_a_deployment_name_and_a_glob_pattern_matches_other_names():
    catalog = Catalog(
        [
            price("openai", "gpt-4o", "2.50", "10", pid=1),
            price("acme", "house-model", "1", "1", pid=2, pattern="house-*"),
        ],
        [Alias("azure", "prod-chat", "openai", "gpt-4o")],
    )
    assert catalog.price_at("azure", "prod-chat", T0).id == 1
    assert catalog.price_at("openai", "prod-chat", T0) is None
    assert catalog.price_at("acme", "house-v2-large", T0).id == 2


@pytest.mark.parametrize(
    ("rates", "tokens", "expected"),
    [
        (("1", "5"), {"input_tokens": 450, "output_tokens": 180}, "0.00135"),
        (("0.13", "0"), {"input_tokens": 1000, "output_tokens": 0}, "0.00013"),
        (("0.15", "0.60"), {"input_tokens": 1500, "output_tokens": 500}, "0.000525"),
        (
            ("0.0375", "0"),
            {"input_tokens": 1, "output_tokens": 0},
            "0.000000038",
        ),  # 37.5 nano, half up
    ],
)
def test_costs_are_exact(rates, tokens, expected):
    assert format_usd(cost_nanos(price("p", "m", *rates), **tokens)) == expected


def test_costs_of_a_million_calls_add_up_exactly():
    one = cost_nanos(
        price("openai", "gpt-4o-mini", "0.15", "0.60"), input_tokens=1500, output_tokens=500
    )
    assert format_usd(one * 1_000_000) == "525"


def test_per_request_price_is_added_once():
    p = Price(
        id=1,
        tenant_id=None,
        provider="x",
        model="y",
        match_pattern="",
        effective_from=T0,
        rates=Rates(Decimal(1), Decimal(1), Decimal(1), Decimal(1)),
        per_request=Decimal("0.005"),
    )
    assert format_usd(cost_nanos(p, input_tokens=1000, output_tokens=0)) == "0.006"


def test_the_shipped_catalog_has_the_documented_prices():
    data = json.loads(
        (Path(__file__).resolve().parents[2] / "usage" / "data" / "prices.json").read_text()
    )
    rows = {(r["provider"], r["model"]): r for r in data["prices"]}
    haiku = rows[("anthropic", "claude-haiku-4-5")]
    assert (Decimal(haiku["input_per_mtok"]), Decimal(haiku["output_per_mtok"])) == (1, 5)
    assert Decimal(rows[("openai", "text-embedding-3-large")]["input_per_mtok"]) == Decimal("0.13")
    mini = rows[("openai", "gpt-4o-mini")]
    assert (Decimal(mini["input_per_mtok"]), Decimal(mini["output_per_mtok"])) == (
        Decimal("0.15"),
        Decimal("0.60"),
    )
    assert all(r["source"].startswith("https://") and r["source_date"] for r in data["prices"])
    assert {r["provider"] for r in data["prices"]} == {"openai", "anthropic", "google", "mistral"}
