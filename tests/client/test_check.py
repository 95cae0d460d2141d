"""`check()`: costmon's pre-flight answer as typed objects, raising on request, and the client's
own answer (allow or deny) when costmon cannot be asked."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import openai
import pytest
from costmon_client import (
    BudgetExceeded,
    CallDenied,
    CostmonUnavailable,
    EmergencyStopped,
    RateLimited,
)

from budgets.config import bump
from budgets.counters import counters_reconcile
from budgets.emergency_stop import emergency_stop_trip
from budgets.models import RateLimit
from budgets.services import budget_create
from tests.client.servers import FakeProvider, free_port
from tests.helpers import requires_redis

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("unscoped"),
]

HELLO = [{"role": "user", "content": "Say hello"}]


def hard_budget(tenant, limit: str, **data):
    data.setdefault("name", "Hard cap")
    return budget_create(
        tenant=tenant, data={"limit_usd": Decimal(limit), "enforcement": "hard", **data}
    )


def test_a_call_within_budget_is_allowed_with_the_budgets_figures(acme, prices, costmon):
    budget = hard_budget(acme, "0.01", name="Acme monthly")
    costmon.track("anthropic", "claude-haiku-4-5", input_tokens=450, output_tokens=180)
    assert costmon.flush(10)

    result = costmon.check(
        provider="anthropic",
        model="claude-haiku-4-5",
        estimated_input_tokens=450,
        estimated_output_tokens=180,
    )

    assert result.allowed and bool(result) and not result.unreachable
    assert (result.reasons, result.estimated_cost_usd) == ([], Decimal("0.00135"))
    [status] = result.budgets
    assert (status.id, status.name, status.scope, status.period, status.status) == (
        budget.pk,
        "Acme monthly",
        "tenant",
        "month",
        "ok",
    )
    assert (status.limit_usd, status.used_usd, status.remaining_usd) == (
        Decimal("0.01"),
        Decimal("0.00135"),
        Decimal("0.00865"),
    )
    assert status.percent == Decimal("13.5")
    assert status.resets_at is not None and status.resets_at.day == 1


def test_the_async_check_gives_the_same_answer(acme, prices, costmon):
    hard_budget(acme, "0.001")

    allowed = asyncio.run(costmon.acheck(estimated_cost_usd="0.0005"))
    denied = asyncio.run(costmon.acheck(estimated_cost_usd="0.002"))

    assert (allowed.allowed, denied.allowed, denied.reasons) == (True, False, ["budget_exceeded"])


def test_a_call_over_a_hard_budget_is_denied_and_raises_when_asked(acme, prices, costmon):
    hard_budget(acme, "0.001", suggested_model="claude-haiku-4-5")

    denied = costmon.check(estimated_cost_usd="0.002")
    with pytest.raises(BudgetExceeded, match=r"'Hard cap' \(month\): 0 of 0.001 USD") as raised:
        costmon.check(estimated_cost_usd=Decimal("0.002"), raise_on_deny=True)

    assert (denied.allowed, denied.reasons, denied.unreachable) == (
        False,
        ["budget_exceeded"],
        False,
    )
    assert raised.value.result.reasons == ["budget_exceeded"]
    assert isinstance(raised.value, CallDenied)


def test_the_emergency_stop_raises_its_own_exception(acme, prices, costmon):
    emergency_stop_trip(tenant=acme, reason="runaway agent")

    with pytest.raises(EmergencyStopped, match="runaway agent"):
        costmon.check(provider="openai", model="gpt-4o-mini", raise_on_deny=True)


@requires_redis
def test_a_rate_limited_call_raises_with_the_seconds_to_wait(acme, prices, costmon):
    counters_reconcile(tenant=acme)
    RateLimit.objects.create(tenant=acme, scope="end_user", window_seconds=60, max_requests=1)
    bump(acme.pk)

    assert costmon.check(end_user="u1").allowed
    with pytest.raises(RateLimited) as raised:
        costmon.check(end_user="u1", raise_on_deny=True)

    assert raised.value.result.reasons == ["rate_limited"]
    assert raised.value.retry_after is not None and 0 < raised.value.retry_after <= 60


@requires_redis
def test_a_reservation_is_settled_by_the_wrapped_calls_event(acme, prices, costmon):
    counters_reconcile(tenant=acme)
    hard_budget(acme, "0.01")
    with FakeProvider() as provider:
        client = costmon.wrap(
            openai.OpenAI(base_url=f"{provider.url}/v1", api_key="sk-test", max_retries=0)
        )

        held = costmon.check(
            provider="openai", model="gpt-4o-mini", estimated_cost_usd="0.001", reserve=True
        )
        client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, costmon_reservation_id=held.reservation_id
        )

    assert held.reservation_id and held.budgets[0].raw["reserved_usd"] == "0.001"
    assert costmon.flush(10)
    [after] = costmon.check().budgets
    # The call cost $0.000285 (see test_openai): that is spent, nothing is held any more.
    assert (after.used_usd, after.raw["reserved_usd"]) == (Decimal("0.000285"), "0")


def test_when_costmon_is_down_the_check_allows_by_default(make_costmon):
    costmon = make_costmon(url=f"http://127.0.0.1:{free_port()}")

    result = costmon.check(provider="openai", model="gpt-4o-mini", raise_on_deny=True)

    assert (result.allowed, result.unreachable, result.reasons) == (True, True, [])
    assert result.warnings[0]["code"] == "costmon_unreachable"


def test_when_costmon_is_down_a_deny_client_refuses_and_can_raise(make_costmon):
    costmon = make_costmon(url=f"http://127.0.0.1:{free_port()}", on_unreachable="deny")

    result = costmon.check()
    with pytest.raises(CostmonUnavailable):
        costmon.check(raise_on_deny=True)

    assert (result.allowed, result.unreachable, result.reasons) == (
        False,
        True,
        ["costmon_unreachable"],
    )
    # The policy can also be chosen per call.
    assert costmon.check(on_unreachable="allow").allowed


def test_a_slow_costmon_answers_from_the_policy_and_is_not_asked_again_at_once(
    acme, gate, make_costmon
):
    costmon = make_costmon(url=gate.url, check_timeout=0.2, on_unreachable="deny")
    gate.open.clear()  # costmon never answers in time

    first = costmon.check()
    second = costmon.check()

    assert (first.allowed, first.unreachable, second.allowed, second.unreachable) == (
        False,
        True,
        False,
        True,
    )
    assert "TimeoutError" in first.warnings[0]["message"]
    assert gate.arrivals == 1  # the second check did not wait for costmon again
    gate.open.set()


def test_a_costmon_error_answer_counts_as_unreachable(acme, gate, make_costmon):
    costmon = make_costmon(url=gate.url)
    gate.plan.fail = 1

    result = costmon.check()

    assert (result.allowed, result.unreachable) == (True, True)
    assert result.warnings[0]["message"] == "costmon answered 503 to the check"
    assert costmon.check().unreachable is False  # the next one reaches costmon


def test_a_503_with_retry_after_answers_from_the_policy_without_asking_until_then(
    acme, gate, make_costmon
):
    costmon = make_costmon(url=gate.url, on_unreachable="deny")
    gate.plan.fail = 1
    gate.plan.fail_headers = {"Retry-After": "1"}

    first = costmon.check()
    second = costmon.check()

    assert (first.allowed, first.unreachable) == (False, True)
    assert first.warnings[0]["message"] == (
        "costmon answered 503 to the check (it asks to retry in 1 s)"
    )
    assert (second.allowed, second.unreachable) == (False, True)
    assert second.warnings[0]["message"] == "costmon answered 503 and asked to retry later"
    assert gate.arrivals == 1  # the second check did not ask
    time.sleep(1.05)
    assert costmon.check().unreachable is False
    assert gate.arrivals == 2
