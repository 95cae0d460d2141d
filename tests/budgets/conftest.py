from __future__ import annotations

from typing import Any

import pytest
import time_machine
from rest_framework.test import APIClient

from budgets import counters
from costmon.core.models import Tenant

# Saturday 21 November 2026, 12:00 UTC
NOW = "2026-11-21T12:00:00Z"


@pytest.fixture(autouse=True)
def _frozen_clock() -> Any:
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def ready(acme: Tenant, outsider: Tenant) -> None:
    """Counters rebuilt once, as after the first reconcile since Redis started."""
    counters.counters_reconcile(tenant=acme)
    counters.counters_reconcile(tenant=outsider)


def check(client: APIClient, REMOTE_ADDR: str = "127.0.0.1", **body: Any) -> Any:
    return client.post("/api/v1/check/", body, format="json", REMOTE_ADDR=REMOTE_ADDR)


# The check answers a valid key without DRF's request machinery; any Accept header other than
# none, */* or application/json takes DRF's path. Tests send this one to compare the two.
THROUGH_DRF = {"HTTP_ACCEPT": "application/json, */*"}


def reply_headers(response: Any) -> dict[str, str]:
    """The headers the caller sees, but the server's timing (different on every reply)."""
    return {name: value for name, value in response.items() if name != "Server-Timing"}
