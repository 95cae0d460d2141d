"""Price rows for the usage fields that change a price (tiers, one-hour cache writes, audio and
image tokens, web searches, images), shared by the Python client's tests and the Node client's
driver: the figures their exact costs come from."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from usage import catalog
from usage.models import ModelPrice

# Rates for what the new usage fields price (USD per million tokens, per 1,000 searches, per
# image), on top of the `prices` fixture's rows: the figures the tests' exact costs come from.
TIER_PRICES: list[dict[str, Any]] = [
    # Anthropic: one-hour cache writes at twice the input rate, $10 per 1,000 web searches, and
    # a priority row.
    {
        "provider": "anthropic",
        "model": "claude-haiku-4-5",
        "service_tier": "priority",
        "input": "2",
        "output": "10",
        "cached_input": "0.20",
        "cache_write": "2.50",
        "cache_write_1h": "4",
        "web_search_per_kcalls": "10",
    },
    # OpenAI: flex and batch at half the standard rates, priority above them.
    *(
        {
            "provider": "openai",
            "model": "gpt-4o-mini",
            "service_tier": tier,
            "input": "0.075",
            "output": "0.30",
            "cached_input": "0.0375",
        }
        for tier in ("flex", "batch")
    ),
    {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "service_tier": "priority",
        "input": "0.25",
        "output": "1",
        "cached_input": "0.125",
        "web_search_per_kcalls": "10",
    },
    # Audio tokens at their own rates.
    {
        "provider": "openai",
        "model": "gpt-4o-mini-audio-preview",
        "match_pattern": "gpt-4o-mini-audio-preview-20??-??-??",
        "input": "0.15",
        "output": "0.60",
        "cached_input": "0.075",
        "input_audio": "10",
        "output_audio": "20",
    },
    # Image tokens at their own rates, and a price per generated image.
    {
        "provider": "openai",
        "model": "gpt-image-1",
        "input": "5",
        "output": "40",
        "input_image": "10",
        "output_image": "40",
        "per_output_image": "0.01",
    },
]
# Added to the standard rows of the `prices` fixture.
STANDARD_EXTRAS = {
    ("anthropic", "claude-haiku-4-5"): {
        "cache_write_1h_per_mtok": Decimal(2),
        "web_search_per_kcalls": Decimal(10),
    },
    ("openai", "gpt-4o-mini"): {"web_search_per_kcalls": Decimal(10)},
}


def add_tier_prices() -> list[ModelPrice]:
    """Add STANDARD_EXTRAS to the standard rows already there (the `prices` fixture's) and
    create TIER_PRICES' rows, in force since 2024."""
    for (provider, model), rates in STANDARD_EXTRAS.items():
        ModelPrice.objects.unscoped().filter(provider=provider, model=model, tenant=None).update(
            **rates
        )
    rows = []
    for spec in TIER_PRICES:
        spec = dict(spec)
        fields: dict[str, Any] = {
            "provider": spec.pop("provider"),
            "model": spec.pop("model"),
            "service_tier": spec.pop("service_tier", "standard"),
            "match_pattern": spec.pop("match_pattern", ""),
            "effective_from": datetime(2024, 1, 1, tzinfo=UTC),
        }
        for name in ("web_search_per_kcalls", "per_output_image"):
            if name in spec:
                fields[name] = Decimal(spec.pop(name))
        fields.update({f"{name}_per_mtok": Decimal(rate) for name, rate in spec.items()})
        rows.append(ModelPrice.objects.create(**fields))
    catalog.clear_local()
    return rows
