"""Fixtures for the Python client: a real costmon (`live_server`), a fake LLM provider, a gate
in front of costmon, and clients that are always closed after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from costmon_client import Costmon

from costmon.core.models import Tenant
from costmon.core.services import api_key_create
from tests.client.prices import add_tier_prices
from tests.client.servers import FakeProvider, Gate
from usage.api import event_json
from usage.models import ModelPrice, UsageEvent


@pytest.fixture
def tier_prices(prices: list[ModelPrice]) -> list[ModelPrice]:
    """The `prices` fixture's rows with rates for one-hour cache writes and web searches, plus
    rows for other tiers, audio and images (tests/client/prices.py)."""
    return [*prices, *add_tier_prices()]


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
