from __future__ import annotations

from typing import Any

import pytest
import time_machine
from rest_framework.test import APIClient

from budgets import counters
from costmon.models import Tenant

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
