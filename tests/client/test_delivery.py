"""Getting events to costmon without ever holding up or breaking the application: batches from
one background thread, retries with the same event ids, a bounded queue, flush at exit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import openai
import pytest
from costmon_client._http import retry_after_seconds

from budgets.services import budget_create
from costmon.core.services import api_key_create
from tests.client.conftest import recorded
from tests.client.servers import FakeProvider, free_port, iter_usage_ids

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("unscoped"),
]

HELLO = [{"role": "user", "content": "Say hello"}]


def sdk(provider: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{provider.url}/v1", api_key="sk-test", max_retries=0)


def haiku(costmon, n: int = 1, **fields) -> list[str]:
    """Report n calls of 450 input and 180 output tokens: $0.00135 each."""
    return [
        costmon.track(
            "anthropic", "claude-haiku-4-5", input_tokens=450, output_tokens=180, **fields
        )
        for _ in range(n)
    ]


def test_events_are_sent_in_batches_of_at_most_batch_size(acme, prices, gate, make_costmon):
    costmon = make_costmon(url=gate.url, batch_size=4, flush_interval=60)

    ids = haiku(costmon, 10)

    assert costmon.flush(10)
    assert [len(batch) for batch in iter_usage_ids(gate.passages)] == [4, 4, 2]
    assert sorted(recorded(acme)) == sorted(ids)
    assert costmon.stats().sent == 10


def test_with_costmon_down_the_wrapped_call_succeeds_and_the_event_waits(
    acme, prices, provider, make_costmon
):
    costmon = make_costmon(url=f"http://127.0.0.1:{free_port()}")
    client = costmon.wrap(sdk(provider))

    reply = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)

    assert reply.choices[0].message.content == "Hello there"
    assert costmon.flush(0.5) is False  # nothing to talk to: it keeps the event and retries
    stats = costmon.stats()
    assert stats.sent == 0 and stats.queued + stats.in_flight == 1 and stats.retries >= 1
    assert stats.last_error is not None and "unreachable" in stats.last_error
    assert costmon.close(timeout=0.1) is False
    assert recorded(acme) == {}


def test_a_stuck_costmon_does_not_hold_up_the_application(
    acme, prices, provider, gate, make_costmon
):
    costmon = make_costmon(url=gate.url, batch_size=100)
    client = costmon.wrap(sdk(provider))
    gate.open.clear()  # costmon accepts the connection and then says nothing

    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert gate.arrived.wait(10)  # the sender is now inside its POST, waiting for an answer
    for _ in range(5):
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    started = time.perf_counter()
    for _ in range(2000):
        costmon.track("openai", "gpt-4o-mini", input_tokens=1)
    per_call = (time.perf_counter() - started) / 2000

    # The calls all returned while the sender was stuck; they only queued their events.
    stats = costmon.stats()
    assert (stats.in_flight, stats.queued, stats.sent) == (1, 2005, 0)
    # Queuing is a lock and a deque append: microseconds. A whole millisecond would be a bug.
    assert per_call < 0.001
    gate.open.set()
    assert costmon.flush(30)
    assert len(recorded(acme)) == 2006


def test_a_lost_answer_is_retried_with_the_same_ids_and_costmon_counts_once(
    acme, prices, gate, make_costmon, read_client
):
    budget = budget_create(tenant=acme, data={"name": "Month", "limit_usd": Decimal("1")})
    costmon = make_costmon(url=gate.url)
    gate.plan.lose_answer = 1  # costmon stores the batch, but its 201 never reaches the client

    ids = haiku(costmon, 3)

    assert costmon.flush(10)
    first, second = iter_usage_ids(gate.passages)
    assert first == second == ids
    assert [p.answered for p in gate.passages] == [503, 201]
    stats = costmon.stats()
    assert (stats.sent, stats.duplicates, stats.retries) == (3, 3, 1)
    # Stored once, spent once: the events, the metrics and the budget all say $0.00405.
    assert sorted(recorded(acme)) == sorted(ids)
    total = read_client.get("/api/v1/metrics/", {"period": "day"}).json()["total"]
    assert (total["calls"], total["cost_usd"]) == (3, "0.00405")
    [status] = costmon.check().budgets
    assert (status.id, status.used_usd) == (budget.pk, Decimal("0.00405"))


def test_503s_are_retried_until_costmon_takes_the_batch(acme, prices, gate, make_costmon):
    costmon = make_costmon(url=gate.url)
    gate.plan.fail = 3

    ids = haiku(costmon, 2)

    assert costmon.flush(10)
    assert [p.answered for p in gate.passages] == [503, 503, 503, 201]
    assert list(iter_usage_ids(gate.passages)) == [ids] * 4
    assert sorted(recorded(acme)) == sorted(ids)


def test_a_503_with_retry_after_is_sent_again_no_sooner_than_costmon_asked(
    acme, prices, gate, make_costmon
):
    # As costmon answers while its database restarts: 503 with Retry-After.
    costmon = make_costmon(url=gate.url, max_retry_delay=5)
    gate.plan.fail = 1
    gate.plan.fail_headers = {"Retry-After": "1"}

    ids = haiku(costmon, 2)

    assert costmon.flush(10)
    first, second = gate.passages
    assert (first.answered, second.answered) == (503, 201)
    assert second.at - first.at >= 1.0  # its own backoff alone would be about 0.02 s
    assert sorted(recorded(acme)) == sorted(ids)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("5", 5.0),
        ("0", 0.0),
        ("-3", 0.0),
        ("Wed, 21 Oct 2026 07:28:30 GMT", 30.0),  # an HTTP date: 30 s after "now"
        ("Wed, 21 Oct 2026 07:27:00 GMT", 0.0),  # already past
        ("soon", None),
        ("", None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(header, seconds):
    now = datetime(2026, 10, 21, 7, 28, tzinfo=UTC).timestamp()
    assert retry_after_seconds({"retry-after": header}, now=now) == seconds


def test_an_event_costmon_refuses_is_dropped_and_the_rest_of_its_batch_is_stored(
    acme, prices, gate, make_costmon
):
    costmon = make_costmon(url=gate.url, batch_size=3, flush_interval=60)
    [good] = haiku(costmon)
    [bad] = haiku(costmon, occurred_at=datetime.now(UTC) + timedelta(days=2))  # in the future
    [also_good] = haiku(costmon)

    assert costmon.flush(10)
    # costmon refused the whole batch for one event; the client sent the two good ones again.
    assert list(iter_usage_ids(gate.passages)) == [[good, bad, also_good], [good, also_good]]
    assert sorted(recorded(acme)) == sorted([good, also_good])
    stats = costmon.stats()
    assert (stats.sent, stats.rejected, stats.retries) == (2, 1, 0)


def test_a_revoked_or_wrong_key_drops_the_batch_instead_of_retrying_forever(
    acme, gate, make_costmon
):
    costmon = make_costmon(url=gate.url, api_key="cm_wrong_key")

    haiku(costmon, 2)

    assert costmon.flush(10)
    assert [p.answered for p in gate.passages] == [401]
    stats = costmon.stats()
    assert (stats.sent, stats.rejected, stats.retries) == (0, 2, 0)
    assert stats.last_error == "costmon refused a batch (401)"


def test_a_full_queue_drops_the_oldest_events_and_counts_them(acme, prices, gate, make_costmon):
    costmon = make_costmon(url=gate.url, batch_size=1, max_queue=3)
    gate.open.clear()
    [first] = haiku(costmon)
    assert gate.arrived.wait(10)  # in flight, held at the gate

    later = haiku(costmon, 5)  # room for 3: the 2 oldest of these go

    assert costmon.stats().dropped == 2
    gate.open.set()
    assert costmon.flush(10)
    assert sorted(recorded(acme)) == sorted([first, *later[2:]])


def test_the_outsider_sees_none_of_the_events_the_client_reported(
    acme, outsider, prices, costmon, outsider_client
):
    ids = haiku(costmon, 3)
    assert costmon.flush(10)

    assert sorted(recorded(acme)) == sorted(ids)
    assert recorded(outsider) == {}
    listed = outsider_client.get("/api/v1/usage/", {"period": "day"}).json()
    assert listed["results"] == []
    total = outsider_client.get("/api/v1/metrics/", {"period": "day"}).json()["total"]
    assert (total["calls"], total["cost_usd"]) == (0, "0")


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - this interpreter, the test's own code
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("COSTMON_")},
        check=False,
    )


def test_queued_events_are_sent_when_the_application_exits(acme, prices, live_server):
    key = api_key_create(tenant=acme, scopes="ingest").secret
    done = _run_python(
        f"""
        import costmon_client
        costmon_client.init({live_server.url!r}, {key!r}, flush_interval=3600)
        print(costmon_client.track("openai", "gpt-4o-mini", input_tokens=1000, output_tokens=100))
        # no flush, no close: the interpreter's exit sends it
        """
    )

    assert done.returncode == 0, done.stderr
    event_id = done.stdout.strip()
    # 1,000 x 0.15 + 100 x 0.60 = 210 USD per Mtok.
    assert recorded(acme)[event_id]["cost_nanos"] == 210_000


def test_a_forked_child_sends_its_own_events_not_its_parents(acme, prices, gate, make_costmon):
    costmon = make_costmon(url=gate.url, batch_size=1)
    gate.open.clear()
    [parents] = haiku(costmon)
    assert gate.arrived.wait(10)
    [queued_before_fork] = haiku(costmon)

    pid = os.fork()
    if pid == 0:  # the child: a new sender thread, an empty queue, its own connection
        ok = False
        try:
            child_id = costmon.track(
                "anthropic", "claude-haiku-4-5", input_tokens=1, end_user="child"
            )
            ok = bool(costmon.flush(20) and costmon.stats().sent == 1 and child_id)
        finally:
            os._exit(0 if ok else 1)  # never back into pytest in the child
    gate.open.set()  # the child's request waits at the gate too until now
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert costmon.flush(10)
    events = recorded(acme)
    assert len(events) == 3  # the parent's two, once each, and the child's
    assert {parents, queued_before_fork} < set(events)
    assert [e["end_user"] for e in events.values()].count("child") == 1
