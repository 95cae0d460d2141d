from __future__ import annotations

import os
from typing import Any

import pytest
from rest_framework.test import APIClient


def post_usage(client: APIClient, payload: Any) -> Any:
    return client.post("/api/v1/usage/", payload, format="json")


def event(**overrides: Any) -> dict[str, Any]:
    base = {
        "event_id": "evt-1",
        "occurred_at": "2026-11-20T10:15:00Z",
        "provider": "anthropic",
        "model": "claude-haiku-4-5",
        "operation": "chat",
        "end_user": "user-1",
        "input_tokens": 450,
        "output_tokens": 180,
    }
    base.update(overrides)
    return base


# Counters, rate limits and reservations live in Redis; the embedded default has none.
requires_redis = pytest.mark.skipif(
    os.environ.get("COSTMON_TEST_DB") == "sqlite",
    reason="needs Redis (the embedded default has none)",
)


# What only PostgreSQL has (its wire protocol, one-statement upserts); the SQLite pass skips it,
# the PostgreSQL pass of the same suite runs it.
requires_postgresql = pytest.mark.skipif(
    os.environ.get("COSTMON_TEST_DB") == "sqlite",
    reason="PostgreSQL only (the suite's PostgreSQL pass runs it)",
)


def stored_events(tenant: Any) -> list[Any]:
    """Every raw event of the tenant, newest first, from the configured event store (read in
    the tenant's context, as the API reads them)."""
    from costmon.core.tenancy import tenant_context
    from usage.eventstore.base import event_query
    from usage.eventstore.current import event_store

    with tenant_context(tenant):
        return list(event_store().iter_events(tenant, event_query(time_range=None)))
