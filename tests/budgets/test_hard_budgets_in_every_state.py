"""A hard budget holds in every state of the counters: 50 callers reserving at once through
real HTTP (gunicorn, two workers of eight threads) against a $1.00 daily budget are admitted
at most limit/estimate + 1 times, whether the counters are trusted, just flushed (being
rebuilt), rebuilt in the middle of the burst, or Redis is unreachable.

Redis here is a private redis-server the tests flush, kill and restart; PostgreSQL is the test
database (the shared server is never touched)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC
from decimal import Decimal
from typing import Any

import pytest
import requests
from django.db import connection
from django.utils import timezone

from budgets import counters
from budgets import redis as bredis
from budgets.models import ReservationHold
from budgets.services import budget_create
from costmon.core.services import api_key_create
from tests.budgets.servers import Gunicorn, RedisServer
from tests.helpers import requires_redis
from usage.models import UsageEvent

pytestmark = [
    requires_redis,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("unscoped"),
]

CALLERS = 50
LIMIT = Decimal("1.00")


@pytest.fixture(autouse=True)
def _frozen_clock() -> Iterator[None]:
    """The server runs on the real clock, so do these tests."""
    yield None


@pytest.fixture(scope="module")
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def server(django_db_setup: Any, private_redis: RedisServer) -> Iterator[Gunicorn]:
    db = connection.settings_dict
    gunicorn = Gunicorn(
        database_url=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
        redis_url=private_redis.url,
    )
    gunicorn.start()
    yield gunicorn
    gunicorn.stop()


@pytest.fixture
def redis_up(private_redis: RedisServer, settings: Any) -> RedisServer:
    """The private Redis runs (again) and this process's code uses it too."""
    if private_redis.process is None:
        private_redis.start()
    settings.REDIS_URL = private_redis.url
    bredis.reset_breaker()
    return private_redis


@pytest.fixture
def acme_cap(acme, outsider, prices, redis_up) -> dict[str, Any]:
    """acme's $1.00 hard daily budget and ingest key; the outsider has a budget of its own."""
    cap = budget_create(
        tenant=acme,
        data={"name": "daily cap", "period": "day", "limit_usd": LIMIT, "enforcement": "hard"},
    )
    budget_create(
        tenant=outsider,
        data={"name": "theirs", "period": "day", "limit_usd": LIMIT, "enforcement": "hard"},
    )
    counters.counters_reconcile(tenant=acme)
    counters.counters_reconcile(tenant=outsider)
    return {
        "budget": cap,
        "auth": {"Authorization": f"Bearer {api_key_create(tenant=acme, scopes='ingest').secret}"},
        "outsider_auth": {
            "Authorization": f"Bearer {api_key_create(tenant=outsider, scopes='ingest').secret}"
        },
    }


def ask(server: Gunicorn, auth: dict[str, str], **body: Any) -> dict[str, Any]:
    response = requests.post(f"{server.base}/api/v1/check/", json=body, headers=auth, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def spend(server: Gunicorn, auth: dict[str, str], event_id: str, cost: str, **fields: Any) -> None:
    body = {
        "event_id": event_id,
        "occurred_at": timezone.now().astimezone(UTC).isoformat(),
        "provider": "openai",
        "model": "gpt-4o",
        "cost_usd": cost,
        **fields,
    }
    response = requests.post(f"{server.base}/api/v1/usage/", json=body, headers=auth, timeout=60)
    assert response.status_code == 201, response.text


def burst(
    server: Gunicorn, auth: dict[str, str], *, estimate: str, then_spend: bool = False
) -> list[dict[str, Any]]:
    """CALLERS threads reserve `estimate` at the same moment; with `then_spend`, each admitted
    caller then reports its call at exactly the estimate, settling its reservation."""
    barrier = threading.Barrier(CALLERS)
    replies: list[dict[str, Any]] = [{} for _ in range(CALLERS)]

    def caller(n: int) -> None:
        barrier.wait()
        reply = ask(server, auth, end_user=f"u{n}", estimated_cost_usd=estimate, reserve=True)
        replies[n] = reply
        if then_spend and reply["allowed"]:
            spend(server, auth, f"call-{n}", estimate, reservation_id=reply["reservation_id"])

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return replies


def admitted(replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in replies if r["allowed"]]


def stored_spend(tenant) -> Decimal:
    nanos = sum(UsageEvent.objects.for_tenant(tenant).values_list("cost_nanos", flat=True))
    return Decimal(nanos) / 10**9


def answers_from(server: Gunicorn, auth: dict[str, str], source: str) -> None:
    """Wait until the workers answer from `source` (a worker skips a Redis that failed for
    five seconds)."""
    deadline = time.monotonic() + 30
    while ask(server, auth)["source"] != source:
        assert time.monotonic() < deadline, f"checks never answered from {source}"
        time.sleep(0.2)


def test_counters_trusted(server, acme_cap, acme):
    answers_from(server, acme_cap["auth"], "redis")
    replies = burst(server, acme_cap["auth"], estimate="0.05", then_spend=True)
    assert {r["source"] for r in replies} == {"redis"}
    assert len(admitted(replies)) == 20 <= LIMIT / Decimal("0.05") + 1
    assert stored_spend(acme) == Decimal("1.00")


def test_counters_just_flushed(server, acme_cap, acme, outsider, redis_up):
    answers_from(server, acme_cap["auth"], "redis")
    spend(server, acme_cap["auth"], "earlier", "0.30")
    redis_up.client().flushdb()  # Redis restarted empty: no counters, no "trusted" mark

    replies = burst(server, acme_cap["auth"], estimate="0.05")

    # No worker runs here, so the rebuild the checks asked for never happens: every answer
    # comes from PostgreSQL, reserving there under the tenant's lock.
    assert {r["source"] for r in replies} == {"database"}
    assert len(admitted(replies)) == 14  # $0.70 left: 14 x $0.05 (at most 15 allowed)
    assert ReservationHold.objects.for_tenant(acme).count() == 14
    assert not ReservationHold.objects.for_tenant(outsider).exists()
    refused = [r for r in replies if not r["allowed"]]
    assert {tuple(r["reasons"]) for r in refused} == {("budget_exceeded",)}
    assert {r["budgets"][0]["used_usd"] for r in replies} == {"0.3"}


def test_counters_rebuilt_in_the_middle_of_the_burst(server, acme_cap, acme, redis_up):
    answers_from(server, acme_cap["auth"], "redis")
    spend(server, acme_cap["auth"], "earlier", "0.30")
    redis_up.client().flushdb()
    rebuilt = threading.Event()

    def rebuild() -> None:
        time.sleep(0.05)  # a few checks have reserved in PostgreSQL by now
        counters.counters_reconcile(tenant=acme)  # moves their holds into Redis
        connection.close()
        rebuilt.set()

    rebuilder = threading.Thread(target=rebuild)
    rebuilder.start()
    replies = burst(server, acme_cap["auth"], estimate="0.05")
    rebuilder.join()

    assert rebuilt.is_set()
    assert len(admitted(replies)) == 14
    assert not ReservationHold.objects.for_tenant(acme).exists()  # all in Redis now
    after = ask(server, acme_cap["auth"])
    assert (after["source"], after["budgets"][0]["reserved_usd"]) == ("redis", "0.7")


def test_redis_unreachable(server, acme_cap, acme, outsider, redis_up):
    answers_from(server, acme_cap["auth"], "redis")
    spend(server, acme_cap["auth"], "earlier", "0.30")
    redis_up.kill()

    replies = burst(server, acme_cap["auth"], estimate="0.05")

    assert {r["source"] for r in replies} == {"database"}
    assert len(admitted(replies)) == 14
    assert ReservationHold.objects.for_tenant(acme).count() == 14
    warnings = {w["code"] for r in replies for w in r["warnings"]}
    assert "counters_from_database" in warnings and "reservation_unavailable" not in warnings

    # Redis comes back empty: the rebuild moves the 14 holds there before checks trust it.
    redis_up.start()
    counters.counters_reconcile(tenant=acme)
    answers_from(server, acme_cap["auth"], "redis")
    after = ask(server, acme_cap["auth"], estimated_cost_usd="0.05", reserve=True)
    assert (after["allowed"], after["budgets"][0]["reserved_usd"]) == (False, "0.7")
    theirs = ask(server, acme_cap["outsider_auth"], estimated_cost_usd="0.05", reserve=True)
    assert (theirs["allowed"], theirs["budgets"][0]["used_usd"]) == (True, "0")


def test_redis_unreachable_while_callers_check_then_spend_in_a_loop(
    server, acme_cap, acme, redis_up
):
    """The issue's case: Redis away, 50 callers each checking ($0.03, reserved) then reporting
    the call at $0.03, again and again until refused. Before, they spent $1.65 of $1.00."""
    answers_from(server, acme_cap["auth"], "redis")
    redis_up.kill()
    barrier = threading.Barrier(CALLERS)
    calls: list[int] = []

    def caller(n: int) -> None:
        barrier.wait()
        for i in range(100):
            reply = ask(
                server, acme_cap["auth"], end_user=f"u{n}", estimated_cost_usd="0.03", reserve=True
            )
            if not reply["allowed"]:
                return
            spend(
                server, acme_cap["auth"], f"{n}-{i}", "0.03", reservation_id=reply["reservation_id"]
            )
            calls.append(n)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(calls) == 33  # $0.99: a 34th call would take the budget past $1.00
    assert stored_spend(acme) == Decimal("0.99") <= LIMIT + Decimal("0.03")
    assert not ReservationHold.objects.for_tenant(acme).exists()  # every call settled its hold
