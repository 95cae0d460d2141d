"""Fixtures for the Python client: a real costmon (`live_server`), a fake LLM provider, a gate
in front of costmon, and clients that are always closed after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from costmon_client import Costmon

from costmon.models import Tenant
from costmon.services import api_key_create
from tests.client.servers import FakeProvider, Gate
from usage import catalog
from usage.api import event_json
from usage.models import ModelPrice, UsageEvent

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


@pytest.fixture
def tier_prices(prices: list[ModelPrice]) -> list[ModelPrice]:
    """The `prices` fixture's rows with rates for one-hour cache writes and web searches, plus
    rows for other tiers, audio and images (TIER_PRICES)."""
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
    return [*prices, *rows]


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with FakeProvider() as server:
        yield server


@pytest.fixture
def gate(live_server: Any) -> Iterator[Gate]:
    server = Gate(live_server.url)
    with server:
        yield server
    server.open.set()


@pytest.fixture
def acme_key(acme: Tenant) -> str:
    return api_key_create(tenant=acme, scopes="ingest").secret


@pytest.fixture
def make_costmon(live_server: Any, acme_key: str) -> Iterator[Callable[..., Costmon]]:
    """Costmon clients for acme, fast to flush and retry; closed when the test ends."""
    made: list[Costmon] = []

    def make(**options: Any) -> Costmon:
        options.setdefault("url", live_server.url)
        options.setdefault("api_key", acme_key)
        options.setdefault("flush_interval", 0.05)
        options.setdefault("retry_delay", 0.02)
        options.setdefault("max_retry_delay", 0.2)
        options.setdefault("shutdown_timeout", 2.0)
        client = Costmon(**options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close(timeout=2)


@pytest.fixture
def costmon(make_costmon: Callable[..., Costmon]) -> Costmon:
    return make_costmon()


def recorded(tenant: Tenant) -> dict[str, dict[str, Any]]:
    """The tenant's stored events as the API shows them, by event id, plus exact `cost_nanos`."""
    events = UsageEvent.objects.for_tenant(tenant).select_related(
        "provider", "model", "operation", "end_user", "session"
    )
    return {e.event_id: {**event_json(e), "cost_nanos": e.cost_nanos} for e in events}


def only_event(tenant: Tenant) -> dict[str, Any]:
    [event] = recorded(tenant).values()
    return event
