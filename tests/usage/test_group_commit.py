"""Single events stored together (usage.grouping) and the ingest API's hot path.

The hot path answers a valid report without DRF and must give DRF's reply byte for byte. Group
commit stores concurrent requests in one transaction and must keep rollups equal to the events,
the Redis counters equal to PostgreSQL, and every event counted once, per tenant."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.db.models import Sum
from rest_framework.renderers import JSONRenderer
from rest_framework.test import APIClient

from budgets import counters
from budgets import redis as bredis
from costmon.core.models import Tenant
from costmon.core.services import api_key_create
from costmon.core.tenancy import tenant_context
from tests.helpers import event, post_usage, requires_redis
from usage import grouping
from usage.api import UsageApi, recorded_body, recorded_json
from usage.ingest import parse_batch
from usage.models import CostSource, HourlyRollup, UsageEvent
from usage.services import EventResult

pytestmark = [pytest.mark.usefixtures("prices", "unscoped")]
HAIKU = 1_350_000  # nano-USD of the default test event


def events_and_rollups(tenant) -> tuple[dict[str, int], dict[str, int]]:
    events = UsageEvent.objects.for_tenant(tenant).aggregate(
        cost=Sum("cost_nanos"), input=Sum("input_tokens")
    )
    events["calls"] = UsageEvent.objects.for_tenant(tenant).count()
    rollups = HourlyRollup.objects.for_tenant(tenant).aggregate(
        calls=Sum("calls"), cost=Sum("cost_nanos"), input=Sum("input_tokens")
    )
    return events, rollups


def client_for(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


# --- the hot path ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_hot_path_replies_as_drf_does_byte_for_byte(acme, outsider, monkeypatch):
    batch = [event(event_id="a"), event(event_id="b", cost_usd="0.5"), event(event_id="a")]
    hot = post_usage(client_for(api_key_create(tenant=acme, scopes="ingest").secret), batch)
    monkeypatch.setattr(UsageApi, "_answer_directly", lambda self, request: None)
    drf = post_usage(client_for(api_key_create(tenant=outsider, scopes="ingest").secret), batch)
    assert (hot.status_code, hot.content) == (drf.status_code, drf.content)
    assert hot.json()["events"][2] == {
        "event_id": "a",
        "cost_usd": "0.00135",
        "cost_source": "computed",
        "duplicate": True,
    }
    header_names = {n for n in hot.headers if n != "Server-Timing"}
    assert header_names == {n for n in drf.headers if n != "Server-Timing"}
    assert all(hot.headers[n] == drf.headers[n] for n in header_names)
    # Each tenant stored its own two events, and sees only those.
    with tenant_context(acme):
        assert list(UsageEvent.objects.order_by("event_id").values_list("event_id", flat=True)) == [
            "a",
            "b",
        ]
    assert UsageEvent.objects.for_tenant(outsider).count() == 2


@pytest.mark.parametrize(
    "event_id",
    [
        "plain",
        'quote " and \\ backslash',
        "caf\u00e9 \U0001f600",
        "line\u2028para\u2029",
        "</script>\x7f",
    ],
)
def test_the_hot_paths_reply_body_is_drfs_rendering(event_id):
    results = [
        EventResult(event_id, 1_350_000, CostSource.COMPUTED, False),
        EventResult(event_id, 120_500_000_000, CostSource.CALLER, True),
        EventResult("u", 0, CostSource.UNPRICED, False),
    ]
    assert recorded_body(results) == JSONRenderer().render(recorded_json(results))


@pytest.mark.django_db
def test_bad_reports_take_drfs_path_and_get_its_errors(ingest_client, acme):
    response = post_usage(ingest_client, [event(event_id="a"), event(input_tokens=-1)])
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"index": 1, "field": "input_tokens", "message": "Must not be negative."}
    ]
    missing = APIClient().post("/api/v1/usage/", [event()], format="json")
    assert missing.status_code in (401, 403)
    assert UsageEvent.objects.for_tenant(acme).count() == 0


# --- group commit, without threads ----------------------------------------------------------


@pytest.mark.django_db
def test_a_group_answers_each_request_with_its_own_results_and_isolates_failures(
    acme, outsider, monkeypatch
):
    real = grouping.usage_record_batch

    def failing_on_bad(*, tenant, events, api_key_id=None):
        if any(e.event_id == "bad" for e in events):
            raise RuntimeError("this request's batch fails")
        return real(tenant=tenant, events=events, api_key_id=api_key_id)

    monkeypatch.setattr(grouping, "usage_record_batch", failing_on_bad)

    def waiting(tenant, key, *ids):
        return grouping._Waiting(tenant, key, parse_batch([event(event_id=i) for i in ids]))

    group = [
        waiting(acme, 1, "a", "b"),
        waiting(acme, 1, "bad"),
        waiting(acme, 1, "a"),  # sent again by another request of the group: a duplicate
        waiting(acme, 2, "c"),  # another key: its own group
        waiting(outsider, 3, "a"),  # another tenant: its own event
    ]
    assert grouping.GroupCommitter().commit(group) is True  # one failed
    answers = [
        [(r.event_id, r.cost_nanos, r.duplicate) for r in w.future.result()]
        for w in group
        if w.future.exception() is None
    ]
    assert answers == [
        [("a", HAIKU, False), ("b", HAIKU, False)],
        [("a", HAIKU, True)],
        [("c", HAIKU, False)],
        [("a", HAIKU, False)],
    ]
    assert isinstance(group[1].future.exception(), RuntimeError)
    assert sorted(UsageEvent.objects.for_tenant(acme).values_list("event_id", "api_key_id")) == [
        ("a", 1),
        ("b", 1),
        ("c", 2),
    ]
    assert list(UsageEvent.objects.for_tenant(outsider).values_list("event_id", flat=True)) == ["a"]
    for tenant in (acme, outsider):
        events, rollups = events_and_rollups(tenant)
        assert events == rollups


# --- group commit under load: threads, PostgreSQL and Redis -----------------------------------


@pytest.fixture
def group_commit(settings):
    settings.COSTMON_INGEST_GROUP_COMMIT = True
    yield grouping.committer()
    grouping.committer().shutdown()  # closes the committer's database connection


@requires_redis
@pytest.mark.django_db(transaction=True)
def test_concurrent_single_and_batch_reports_count_each_event_once(
    acme, outsider, group_commit, monkeypatch
):
    sizes: list[int] = []
    commit = grouping.GroupCommitter.commit

    def counted(self, waiting):
        sizes.append(len(waiting))
        return commit(self, waiting)

    monkeypatch.setattr(grouping.GroupCommitter, "commit", counted)
    acme_keys = [api_key_create(tenant=acme, scopes="ingest").secret for _ in range(2)]
    outsider_key = api_key_create(tenant=outsider, scopes="ingest").secret
    ids = [f"e{i}" for i in range(120)]
    # Every id is sent several times: by two single-event threads and by a batch thread.
    jobs: list[tuple[str, list[list[dict]]]] = []
    for t in range(6):
        mine = ids[t * 20 : t * 20 + 40] if t < 5 else ids[100:] + ids[:20]
        jobs.append(
            (
                acme_keys[t % 2],
                [[event(event_id=i, occurred_at=None, end_user=f"u{t}")] for i in mine],
            )
        )
    jobs.append(
        (
            acme_keys[0],
            [
                [event(event_id=i, occurred_at=None) for i in ids[k : k + 30]]
                for k in range(0, 120, 30)
            ],
        )
    )
    jobs.append((outsider_key, [[event(event_id=i, occurred_at=None)] for i in ids[:30]]))
    answers: list[tuple[str, int, dict]] = []
    barrier = threading.Barrier(len(jobs))

    def send(secret: str, bodies: list[list[dict]]) -> None:
        client = client_for(secret)
        barrier.wait()
        for body in bodies:
            response = post_usage(client, body)
            for result in response.json()["events"]:
                answers.append((secret, response.status_code, result))
        connection.close()

    threads = [threading.Thread(target=send, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert {status for _, status, _ in answers} == {201}
    # The single events went through the committer (the batches of 30 did not).
    assert sum(sizes) == 6 * 40 + 30
    print("requests per group, largest:", max(sizes))
    acme_answers = [a for s, _, a in answers if s != outsider_key]
    stored_once = sorted(a["event_id"] for a in acme_answers if not a["duplicate"])
    assert stored_once == sorted(ids)  # each id stored by exactly one of the requests
    assert all(a["cost_usd"] == "0.00135" for a in acme_answers)
    events, rollups = events_and_rollups(acme)
    assert events == rollups == {"calls": 120, "cost": 120 * HAIKU, "input": 120 * 450}
    events, rollups = events_and_rollups(outsider)
    assert events == rollups == {"calls": 30, "cost": 30 * HAIKU, "input": 30 * 450}
    # The Redis counters hold what PostgreSQL holds: a rebuild finds nothing to correct.
    # The events were stamped as they arrived: their days (two if the test ran over midnight).
    stamped = UsageEvent.objects.for_tenant(acme).values_list("occurred_at", flat=True)
    days = [counters.day_key(acme.pk, day) for day in {at.date() for at in stamped}]
    assert sum(int(bredis.client().hget(day, "t") or 0) for day in days) == 120 * HAIKU
    for tenant in (acme, outsider):
        assert counters.counters_reconcile(tenant=tenant).corrected == 0


@pytest.mark.django_db(transaction=True)
def test_a_second_committer_stores_a_group_while_the_first_waits(acme, outsider, monkeypatch):
    held, release = threading.Event(), threading.Event()
    record = grouping.usage_record_batch

    def slow(*, tenant, events, api_key_id):
        if events[0].event_id == "slow":  # this group waits, its transaction not begun
            held.set()
            assert release.wait(10)
        return record(tenant=tenant, events=events, api_key_id=api_key_id)

    monkeypatch.setattr(grouping, "usage_record_batch", slow)
    committer = grouping.GroupCommitter(threads=2)
    answers: list[list[EventResult]] = []

    def send(event_id: str) -> None:
        events = parse_batch([event(event_id=event_id, occurred_at=None)])
        answers.append(committer.record(tenant=acme, events=events, api_key_id=None))

    first = threading.Thread(target=send, args=("slow",))
    second = threading.Thread(target=send, args=("fast",))
    try:
        first.start()
        assert held.wait(10)
        second.start()
        second.join(10)  # answered while the first committer still holds its group
        assert answers, "the second group waited for the first"
        assert [r.event_id for r in answers[0]] == ["fast"] and not answers[0][0].duplicate
        assert UsageEvent.objects.for_tenant(acme).count() == 1
    finally:
        release.set()
        first.join(10)
        second.join(10)
        committer.shutdown()
    assert [a[0].event_id for a in answers] == ["fast", "slow"]
    events, rollups = events_and_rollups(acme)
    assert events == rollups == {"calls": 2, "cost": 2 * HAIKU, "input": 2 * 450}
    assert UsageEvent.objects.for_tenant(outsider).count() == 0
    assert not any(t.is_alive() for t in committer._threads)


@pytest.mark.django_db(transaction=True)
def test_the_committers_are_as_many_as_the_setting_and_end_together(acme, settings):
    settings.COSTMON_INGEST_COMMITTERS = 3
    committer = grouping.GroupCommitter()
    events = parse_batch([event(event_id="a", occurred_at=None)])
    try:
        assert not committer.record(tenant=acme, events=events, api_key_id=None)[0].duplicate
        threads = list(committer._threads)
        assert len(threads) == 3 and all(t.is_alive() for t in threads)
    finally:
        committer.shutdown()
    assert not any(t.is_alive() for t in threads)
    # The next request starts them again.
    assert committer.record(tenant=acme, events=events, api_key_id=None)[0].duplicate
    committer.shutdown()


class _Answering(grouping.GroupCommitter):
    """A committer whose groups are answered at once, with no database: its threads alone."""

    def commit(self, waiting: list[grouping._Waiting]) -> bool:
        for w in waiting:
            w.future.set_result([])
        return False


def test_a_request_queued_while_the_committers_stop_is_still_stored(monkeypatch):
    committer = _Answering(threads=1)
    racing = threading.Event()
    stoppers: list[threading.Thread] = []
    simple_queue = grouping.queue.SimpleQueue

    class Racing(simple_queue):
        def put(self, item, block=True, timeout=None):
            # The moment a request is queued: `shutdown` runs then, from another thread, and
            # is given the time to end the committers (200 ms), unless it has to wait.
            if racing.is_set() and isinstance(item, grouping._Waiting):
                racing.clear()
                stoppers.append(threading.Thread(target=committer.shutdown))
                stoppers[0].start()
                stoppers[0].join(0.2)
            super().put(item, block, timeout)

    monkeypatch.setattr(grouping.queue, "SimpleQueue", Racing)
    tenant = Tenant(pk=1, slug="acme")
    events = parse_batch([event(event_id="a")])
    try:
        assert committer.record(tenant=tenant, events=events, api_key_id=None) == []
        racing.set()
        waiting = grouping._Waiting(tenant, None, events)
        recorder = threading.Thread(
            target=lambda: waiting.future.set_result(
                committer.record(tenant=tenant, events=events, api_key_id=None)
            ),
            daemon=True,  # without the fix it would wait forever
        )
        recorder.start()
        # Stored by the committers that stop or by new ones; never left on a queue nobody reads.
        assert waiting.future.result(timeout=5) == []
        stoppers[0].join(5)
        assert not stoppers[0].is_alive()
        # The next request starts committers again.
        assert committer.record(tenant=tenant, events=events, api_key_id=None) == []
    finally:
        committer.shutdown()
    assert not any(t.is_alive() for t in committer._threads)
