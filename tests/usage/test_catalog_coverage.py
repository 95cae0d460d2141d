"""The bundled catalog, loaded as a user loads it, prices the names its source lists.

`source_models` in usage/data/prices.json lists, per provider, every chat, responses, embedding
and completion name of the public list the catalog was built from (priced there or not); each
is looked up through the engine exactly as an event's model would be.
"""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from usage.catalog import load_catalog

pytestmark = pytest.mark.django_db

BUNDLED = Path(__file__).resolve().parents[2] / "usage" / "data" / "prices.json"
# The bar, for the providers it names; the clouds and the others are held near theirs.
REQUIRED = {"openai", "anthropic", "google", "mistral", "xai", "deepseek"}


def coverage(acme) -> dict[str, tuple[int, int]]:
    call_command("load_prices", stdout=io.StringIO(), stderr=io.StringIO())
    document = json.loads(BUNDLED.read_text())
    catalog = load_catalog(acme.pk)
    now = timezone.now()
    return {
        provider: (
            sum(1 for name in names if catalog.price_at(provider, name, now) is not None),
            len(names),
        )
        for provider, names in document["source_models"].items()
    }


def test_the_bundled_catalog_prices_at_least_95_percent_of_its_source_per_provider(acme):
    figures = coverage(acme)
    assert set(figures) >= REQUIRED
    low = {p: f for p, f in figures.items() if 100 * f[0] < (95 if p in REQUIRED else 90) * f[1]}
    assert low == {}
    # The standard price is found, not a batch or priority row loaded over it.
    catalog = load_catalog(acme.pk)
    gpt5 = catalog.price_at("openai", "gpt-5", timezone.now())
    assert gpt5 is not None
    assert (gpt5.rates.input, gpt5.rates.output) == (Decimal("1.25"), Decimal(10))
