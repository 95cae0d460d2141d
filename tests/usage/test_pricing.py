"""The pricing rules as pure functions: name matching, price history, exact arithmetic."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmon.core.money import format_usd
from usage.ingest import MAX_TOKENS
from usage.price_lookup import Alias, Catalog
from usage.pricing import (
    Price,
    Rates,
    Usage,
    breakdown,
    candidate_names,
    cost_nanos,
    cost_nanos_of,
    deployment_names,
)

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
    tier: str = "standard",
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
        service_tier=tier,
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
def test_family_names_group_snapshots_for_budgets_and_charts(name, expected):
    assert expected in candidate_names(name)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5-20250929"),
        ("anthropic.claude-3-5-sonnet-20240620-v1:0", "claude-3-5-sonnet-20240620"),
        ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet-20240620"),
        ("claude-opus-4-6@default", "claude-opus-4-6"),
        ("models/gemini-2.5-flash", "gemini-2.5-flash"),
    ],
)
def test_deployment_names_reduce_to_the_model_they_deploy_but_keep_the_snapshot(name, expected):
    names = deployment_names(name)
    assert expected in names
    undated = expected.rsplit("-2024", 1)[0].rsplit("-2025", 1)[0]
    assert undated == expected or undated not in names


def test_a_dated_snapshot_with_its_own_price_never_takes_its_familys():
    catalog = Catalog(
        [
            price("openai", "gpt-4o", "2.50", "10", pid=1),
            price("openai", "gpt-4o-2024-05-13", "5", "15", pid=2),
            price("openai", "gpt-4o-mini", "0.15", "0.60", pid=3),
        ]
    )
    assert catalog.price_at("openai", "gpt-4o-2024-05-13", T0).id == 2
    assert catalog.price_at("openai", "gpt-4o", T0).id == 1
    # Without the catalog saying the family's price applies, a snapshot is unpriced.
    assert catalog.price_at("openai", "gpt-4o-2024-08-06", T0) is None
    assert catalog.price_at("openai", "gpt-4o-mini-2024-07-18", T0) is None
    assert catalog.price_at("openai", "gpt-4o-audio", T0) is None


def test_a_family_pattern_prices_unlisted_snapshots_and_the_longest_pattern_wins():
    catalog = Catalog(
        [
            price("openai", "gpt-4o", "2.50", "10", pid=1, pattern="gpt-4o-20??-??-??"),
            price("openai", "gpt-4o-mini", "0.15", "0.60", pid=2, pattern="gpt-4o-mini-20??-??-??"),
            price("openai", "gpt-4o-2024-05-13", "5", "15", pid=3),
        ]
    )
    assert catalog.price_at("openai", "gpt-4o-mini-2024-07-18", T0).id == 2
    assert catalog.price_at("openai", "gpt-4o-2024-08-06", T0).id == 1
    assert catalog.price_at("openai", "gpt-4o-2024-05-13", T0).id == 3  # its own row first
    found = catalog.resolve("openai", "gpt-4o-2024-08-06", T0)
    assert (found.rule, found.name) == ("pattern", "gpt-4o")


def test_a_latest_name_follows_the_catalog_alias_to_the_dated_model():
    catalog = Catalog(
        [
            price("mistral", "mistral-large-2411", "2", "6", pid=1),
            price("mistral", "mistral-large-2512", "0.5", "1.5", pid=2),
        ],
        catalog_aliases=[Alias("mistral", "mistral-large-latest", "mistral", "mistral-large-2512")],
    )
    found = catalog.resolve("mistral", "mistral-large-latest", T0)
    assert (found.price.id, found.rule, found.name) == (2, "catalog_alias", "mistral-large-2512")


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


def test_resellers_take_their_own_price_first_then_the_first_party_price():
    catalog = Catalog(
        [
            price("openai", "gpt-4o", "2.50", "10", pid=1),
            price("azure", "gpt-4o", "2.75", "11", pid=3),
            price("openai", "gpt-4.1", "2", "8", pid=4),
            price("anthropic", "claude-haiku-4-5-20251001", "1", "5", pid=2),
        ]
    )
    assert catalog.price_at("azure", "gpt-4o", T0).id == 3
    assert catalog.price_at("azure_openai", "gpt-4.1", T0).id == 4
    assert catalog.price_at("openrouter", "gpt-4.1", T0).id == 4  # one first-party seller
    assert catalog.price_at("bedrock", "anthropic.claude-haiku-4-5-20251001-v1:0", T0).id == 2
    assert catalog.resolve("bedrock", "anthropic.claude-haiku-4-5-20251001-v1:0", T0).rule == (
        "deployment_name"
    )
    assert catalog.price_at("vertex_ai", "claude-haiku-4-5@20251001", T0).id == 2


def test_an_alias_maps_a_deployment_name_and_a_glob_pattern_matches_other_names():
    catalog = Catalog(
        [
            price("openai", "gpt-4o", "2.50", "10", pid=1),
            price("acme", "house-model", "1", "1", pid=2, pattern="house-*"),
        ],
        [Alias("azure", "prod-chat", "openai", "gpt-4o")],
    )
    assert catalog.price_at("azure", "prod-chat", T0).id == 1
    assert catalog.resolve("azure", "prod-chat", T0).rule == "tenant_alias"
    assert catalog.price_at("openai", "prod-chat", T0) is None
    assert catalog.price_at("acme", "house-v2-large", T0).id == 2


def test_a_tier_without_its_own_row_is_charged_at_standard_and_says_so():
    catalog = Catalog(
        [
            price("openai", "gpt-4o-mini", "0.15", "0.60", pid=1),
            price("openai", "gpt-4o-mini", "0.075", "0.30", pid=2, tier="batch"),
        ]
    )
    batch = catalog.resolve("openai", "gpt-4o-mini", T0, "batch")
    assert (batch.price.id, batch.tier_fallback) == (2, False)
    flex = catalog.resolve("openai", "gpt-4o-mini", T0, "flex")
    assert (flex.price.id, flex.tier_fallback) == (1, True)
    assert catalog.price_at("openai", "gpt-4o-mini", T0).id == 1


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
    rows = {(r["provider"], r["model"]): r for r in data["prices"] if "service_tier" not in r}
    haiku = rows[("anthropic", "claude-haiku-4-5")]
    assert (Decimal(haiku["input_per_mtok"]), Decimal(haiku["output_per_mtok"])) == (1, 5)
    assert Decimal(rows[("openai", "text-embedding-3-large")]["input_per_mtok"]) == Decimal("0.13")
    mini = rows[("openai", "gpt-4o-mini")]
    assert (Decimal(mini["input_per_mtok"]), Decimal(mini["output_per_mtok"])) == (
        Decimal("0.15"),
        Decimal("0.60"),
    )
    assert all(r.get("source", "https://").startswith("https://") for r in data["prices"])
    assert {r["provider"] for r in data["prices"]} == {
        *("openai", "anthropic", "google", "vertex", "mistral", "xai", "deepseek"),
        *("cohere", "groq", "azure", "bedrock"),
    }


def _full(**overrides: object) -> Price:
    fields: dict[str, object] = {
        "id": 1,
        "tenant_id": None,
        "provider": "p",
        "model": "m",
        "match_pattern": "",
        "effective_from": T0,
        "rates": Rates(
            input=Decimal(3),
            output=Decimal(15),
            cached_input=Decimal("0.30"),
            cache_write=Decimal("3.75"),
            cache_write_1h=Decimal(6),
        ),
    }
    fields.update(overrides)
    return Price(**fields)  # type: ignore[arg-type]


def test_cache_reads_and_writes_by_lifetime_are_priced_apart():
    # 5,000 input: 3,000 cache reads, 1,000 five-minute writes, 500 one-hour writes, 500 plain.
    usage = Usage(
        input_tokens=5000,
        output_tokens=500,
        cached_input_tokens=3000,
        cache_write_tokens=1500,
        cache_write_1h_tokens=500,
    )
    lines = {line.kind: (line.quantity, line.nanos) for line in breakdown(_full(), usage).lines}
    assert lines == {
        "input": (500, Decimal(1_500_000)),
        "cached_input": (3000, Decimal(900_000)),
        "cache_write_5m": (1000, Decimal(3_750_000)),
        "cache_write_1h": (500, Decimal(3_000_000)),
        "output": (500, Decimal(7_500_000)),
    }
    assert breakdown(_full(), usage).nanos == 16_650_000


def test_long_context_rates_apply_to_the_whole_call_above_the_threshold():
    gemini = _full(
        rates=Rates(Decimal("1.25"), Decimal(10), Decimal("0.125")),
        long_context_threshold=200_000,
        long_rates=Rates(Decimal("2.50"), Decimal(15), Decimal("0.25")),
    )
    below = breakdown(gemini, Usage(input_tokens=200_000, output_tokens=1000))
    above = breakdown(gemini, Usage(input_tokens=250_000, output_tokens=1000))
    assert (below.long_context, below.nanos) == (False, 250_000_000 + 10_000_000)
    assert (above.long_context, above.nanos) == (True, 640_000_000)  # $0.64


def test_audio_and_image_tokens_are_parts_priced_at_their_own_rates():
    realtime = _full(
        rates=Rates(
            Decimal(4),
            Decimal(16),
            Decimal("0.4"),
            input_audio=Decimal(32),
            output_audio=Decimal(64),
            input_image=Decimal(5),
        )
    )
    usage = Usage(
        input_tokens=1000,
        output_tokens=1000,
        input_audio_tokens=600,
        input_image_tokens=100,
        output_audio_tokens=800,
    )
    lines = {line.kind: line.nanos for line in breakdown(realtime, usage).lines}
    assert lines == {
        "input": Decimal(300 * 4000),
        "input_audio": Decimal(600 * 32000),
        "input_image": Decimal(100 * 5000),
        "output": Decimal(200 * 16000),
        "output_audio": Decimal(800 * 64000),
    }
    # Without their own rates, image output is charged as text output.
    text_only = breakdown(_full(), Usage(output_tokens=100, output_image_tokens=100))
    assert [(line.kind, line.unit_price) for line in text_only.lines] == [
        ("output_image", Decimal(15))
    ]


def test_web_searches_images_and_requests_are_per_unit_prices():
    p = _full(
        web_search_per_kcalls=Decimal(10),
        per_output_image=Decimal("0.04"),
        per_request=Decimal("0.005"),
    )
    usage = Usage(input_tokens=1000, output_tokens=0, web_search_calls=3, output_images=2)
    lines = {
        line.kind: (line.quantity, line.unit, line.nanos) for line in breakdown(p, usage).lines
    }
    assert lines["web_search"] == (3, "1K calls", Decimal(30_000_000))
    assert lines["images"] == (2, "image", Decimal(80_000_000))
    assert lines["request"] == (1, "request", Decimal(5_000_000))
    assert breakdown(p, usage).nanos == 3_000_000 + 30_000_000 + 80_000_000 + 5_000_000


def test_reasoning_tokens_are_billed_as_output():
    o4_mini = _full(rates=Rates(Decimal("1.10"), Decimal("4.40"), Decimal("0.275")))
    usage = Usage(input_tokens=1000, output_tokens=3000, reasoning_tokens=2500)
    assert format_usd(breakdown(o4_mini, usage).nanos) == "0.0143"


_RATE = st.one_of(
    st.none(),
    st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False),
)
_COUNT = st.integers(min_value=0, max_value=MAX_TOKENS)


@st.composite
def _priced_usage(draw: st.DrawFn) -> tuple[Price, Usage]:
    def rates() -> Rates:
        return Rates(
            input=draw(_RATE) or Decimal(0),
            output=draw(_RATE) or Decimal(0),
            **{
                name: draw(_RATE)
                for name in Rates.__dataclass_fields__
                if name not in ("input", "output")
            },
        )

    price = _full(
        rates=rates(),
        long_context_threshold=draw(st.none() | st.integers(0, 300_000)),
        long_rates=draw(st.none() | st.builds(rates)),
        per_request=draw(_RATE) or Decimal(0),
        per_output_image=draw(_RATE) or Decimal(0),
        web_search_per_kcalls=draw(_RATE) or Decimal(0),
    )
    # Parts within their totals, as validation leaves them.
    cached, writes, audio, image = (draw(_COUNT) // 4 for _ in range(4))
    out_audio, out_image = (draw(_COUNT) // 2 for _ in range(2))
    usage = Usage(
        input_tokens=cached + writes + audio + image + draw(_COUNT),
        output_tokens=out_audio + out_image + draw(_COUNT) // 2,
        cached_input_tokens=cached,
        cache_write_tokens=writes,
        cache_write_1h_tokens=draw(st.integers(0, writes)),
        input_audio_tokens=audio,
        input_image_tokens=image,
        output_audio_tokens=out_audio,
        output_image_tokens=out_image,
        reasoning_tokens=draw(_COUNT),
        web_search_calls=draw(st.integers(0, 1000)),
        output_images=draw(st.integers(0, 1000)),
    )
    return price, usage


@settings(max_examples=500, deadline=None)
@given(_priced_usage())
def test_whole_number_costs_equal_the_lines_summed_exactly(case: tuple[Price, Usage]) -> None:
    # Ingest prices with cost_nanos_of; explanations show breakdown's lines: the same figure.
    price, usage = case
    assert cost_nanos_of(price, usage) == breakdown(price, usage).nanos


def test_whole_number_costs_round_half_up_once():
    half = _full(rates=Rates(Decimal("0.0005"), Decimal(0)))  # 0.5 nano-dollars a token
    assert cost_nanos_of(half, Usage(input_tokens=1)) == 1
    assert cost_nanos_of(half, Usage(input_tokens=3)) == 2  # 1.5 -> 2, not 1 + 1 per line
    assert cost_nanos_of(_full(), Usage(input_tokens=5000, output_tokens=500)) == 22_500_000


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (0, "0"),
        (1, "0.000000001"),
        (1_350_000, "0.00135"),
        (1_000_000_000, "1"),
        (120_500_000_000, "120.5"),
        (-1_350_000, "-0.00135"),
        (Decimal("1350000.5"), "0.0013500005"),
    ],
)
def test_format_usd_is_the_exact_decimal_without_trailing_zeros(nanos, text):
    assert format_usd(nanos) == text
