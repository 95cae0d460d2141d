"""Sliding-window rate limits, kept in Redis so every web process sees the same window."""

from __future__ import annotations

import pytest

from budgets.config import bump
from budgets.models import RateLimit
from tests.budgets.conftest import THROUGH_DRF, check, reply_headers
from tests.helpers import requires_redis

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.usefixtures("prices", "ready", "unscoped"),
    requires_redis,
]


def limit(tenant, **fields) -> RateLimit:
    row = RateLimit.objects.create(tenant=tenant, **fields)
    bump(tenant.pk)
    return row


def test_the_request_over_the_limit_gets_429_with_the_headers(acme, ingest_client):
    limit(acme, scope="end_user", window_seconds=60, max_requests=3)
    for remaining in (2, 1, 0):
        response = check(ingest_client, end_user="u1")
        assert response.status_code == 200
        assert response["X-RateLimit-Limit"] == "3"
        assert response["X-RateLimit-Remaining"] == str(remaining)
    refused = check(ingest_client, end_user="u1")
    assert refused.status_code == 429
    assert refused.json()["reasons"] == ["rate_limited"]
    assert refused.json()["allowed"] is False
    # 12:00:00 is the start of a 60 s window: it resets in 60 s, and with nothing in the
    # previous window the caller must wait for the reset.
    assert (
        refused["Retry-After"],
        refused["X-RateLimit-Reset"],
        refused["X-RateLimit-Remaining"],
    ) == ("60", "60", "0")
    # Another end user has a window of their own.
    assert check(ingest_client, end_user="u2").status_code == 200


def test_the_window_slides_instead_of_resetting_all_at_once(acme, ingest_client, _frozen_clock):
    limit(acme, scope="end_user", window_seconds=60, max_requests=4)
    for _ in range(4):
        assert check(ingest_client, end_user="u1").status_code == 200
    _frozen_clock.shift(60)  # the next window: the previous one still weighs 100%
    assert check(ingest_client, end_user="u1").status_code == 429
    _frozen_clock.shift(30)  # half way: 4 x 0.5 = 2 used, 2 more may pass
    assert check(ingest_client, end_user="u1").status_code == 200
    assert check(ingest_client, end_user="u1").status_code == 200
    refused = check(ingest_client, end_user="u1")
    assert refused.status_code == 429
    # 2 x (1 - 30/60) + 2 = 4 used: one more needs 0.25 of the old window gone, 15 s.
    assert refused["Retry-After"] == "15"


def test_a_token_limit_counts_the_estimated_tokens(acme, ingest_client):
    limit(acme, scope="api_key", window_seconds=60, max_tokens=10_000)
    assert (
        check(ingest_client, estimated_input_tokens=6000, estimated_output_tokens=2000).status_code
        == 200
    )
    refused = check(ingest_client, estimated_input_tokens=2000, estimated_output_tokens=1)
    assert refused.status_code == 429
    assert check(ingest_client, estimated_input_tokens=2000).status_code == 200


def test_an_override_replaces_the_default_for_one_caller(acme, ingest_client):
    limit(acme, scope="end_user", window_seconds=60, max_requests=1)
    limit(acme, scope="end_user", value="vip", window_seconds=60, max_requests=3)
    assert [check(ingest_client, end_user="vip").status_code for _ in range(4)] == [
        200,
        200,
        200,
        429,
    ]
    assert [check(ingest_client, end_user="regular").status_code for _ in range(2)] == [200, 429]


def test_checks_without_an_end_user_are_limited_per_client_ip(acme, ingest_client):
    limit(acme, scope="ip", window_seconds=60, max_requests=2)
    codes = [
        ingest_client.post("/api/v1/check/", {}, format="json", REMOTE_ADDR="10.0.0.1").status_code
        for _ in range(3)
    ]
    assert codes == [200, 200, 429]
    assert (
        ingest_client.post("/api/v1/check/", {}, format="json", REMOTE_ADDR="10.0.0.2").status_code
        == 200
    )
    # With an end user, the IP limit does not apply.
    assert check(ingest_client, end_user="u1", REMOTE_ADDR="10.0.0.1").status_code == 200


def test_a_refused_call_does_not_use_up_the_window(acme, ingest_client):
    from decimal import Decimal

    from budgets.services import budget_create

    limit(acme, scope="end_user", window_seconds=60, max_requests=2)
    budget_create(
        tenant=acme, data={"name": "tiny", "limit_usd": Decimal("0.001"), "enforcement": "hard"}
    )
    assert check(ingest_client, end_user="u1", estimated_cost_usd="1").json()["reasons"] == [
        "budget_exceeded"
    ]
    assert check(ingest_client, end_user="u1").status_code == 200
    assert check(ingest_client, end_user="u1").status_code == 200
    assert check(ingest_client, end_user="u1").status_code == 429


def test_one_tenants_limits_never_touch_anothers(acme, ingest_client, outsider, outsider_client):
    limit(acme, scope="end_user", window_seconds=60, max_requests=1)
    assert check(ingest_client, end_user="u1").status_code == 200
    assert check(ingest_client, end_user="u1").status_code == 429
    assert [check(outsider_client, end_user="u1").status_code for _ in range(3)] == [200, 200, 200]


def test_rate_limit_replies_are_the_same_with_or_without_drf(acme, ingest_client):
    limit(acme, scope="end_user", window_seconds=60, max_requests=2)

    def post(**extra):
        return ingest_client.post("/api/v1/check/", {"end_user": "u1"}, format="json", **extra)

    direct, through_drf = post(), post(**THROUGH_DRF)
    assert (direct.status_code, through_drf.status_code) == (200, 200)
    assert direct.content == through_drf.content
    assert (direct["X-RateLimit-Remaining"], through_drf["X-RateLimit-Remaining"]) == ("1", "0")
    del direct["X-RateLimit-Remaining"], through_drf["X-RateLimit-Remaining"]
    assert reply_headers(direct) == reply_headers(through_drf)
    # Refused calls do not count, so two refusals are the same reply.
    direct, through_drf = post(), post(**THROUGH_DRF)
    assert (direct.status_code, through_drf.status_code) == (429, 429)
    assert direct.content == through_drf.content
    assert reply_headers(direct) == reply_headers(through_drf)
    assert direct["Retry-After"] == "60"
