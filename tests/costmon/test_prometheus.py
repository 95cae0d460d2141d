"""GET /metrics: Prometheus text format read back with the real client library's parser."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from alerts.models import Channel, Notification
from budgets.emergency_stop import emergency_stop_lift, emergency_stop_trip
from costmon import gunicorn_conf
from costmon.core.services import api_key_create
from costmon.web.prometheus import totals
from tests.helpers import event, post_usage, requires_redis

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "prometheus-test-token-0123456789"
NOW = "2026-11-21T12:00:00Z"  # Saturday
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(autouse=True)
def _token(settings: Any) -> None:
    settings.COSTMON_METRICS_TOKEN = TOKEN


@pytest.fixture(autouse=True)
def clock() -> Iterator[Any]:
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


def get_metrics(authorization: str | None = f"Bearer {TOKEN}") -> Any:
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization is not None else {}
    return Client().get("/metrics", **headers)


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape() -> Samples:
    response = get_metrics()
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(response.content.decode())


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def usd(*amounts: str) -> float:
    return float(sum((Decimal(a) for a in amounts), Decimal(0)))


def check(client: APIClient, **body: Any) -> Any:
    return client.post("/api/v1/check/", body, format="json")


# --- who may read -------------------------------------------------------------------------------


def test_the_endpoint_is_off_until_a_token_is_set(settings):
    settings.COSTMON_METRICS_TOKEN = ""
    response = get_metrics()
    assert response.status_code == 404
    assert "COSTMON_METRICS_TOKEN" in response.content.decode()
    assert b"costmon_" not in response.content


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong-token-wrong-token-wrong",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        TOKEN,
    ],
)
def test_a_missing_or_wrong_token_gets_401_and_no_figures(acme, ingest_client, authorization):
    post_usage(ingest_client, event())
    response = get_metrics(authorization)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"costmon_" not in response.content


def test_a_tenants_api_key_does_not_open_the_metrics(acme):
    secret = api_key_create(tenant=acme, scopes="ingest,read,admin").secret
    assert get_metrics(f"Bearer {secret}").status_code == 401


def test_the_scheme_is_case_insensitive_and_only_get_is_allowed():
    assert get_metrics(f"bearer {TOKEN}").status_code == 200
    response = Client().post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 405


def test_a_short_token_is_refused_at_start_up(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "COSTMON_VAR_DIR": str(tmp_path),
        "COSTMON_METRICS_TOKEN": "short",
    }
    result = subprocess.run(
        [sys.executable, "-c", "import costmon.settings"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "COSTMON_METRICS_TOKEN must be at least 16 characters" in result.stderr


# --- usage counters ----------------------------------------------------------------------------


def test_spend_calls_and_tokens_are_exact_per_tenant_provider_and_model(
    acme, outsider, ingest_client, outsider_client
):
    posted = post_usage(
        ingest_client,
        [
            event(),  # 450 in, 180 out: $0.00135
            event(
                event_id="evt-2",
                occurred_at="2026-11-21T11:30:00Z",  # an hour that has not settled
                input_tokens=1000,
                cached_input_tokens=600,
                cache_write_tokens=200,
                output_tokens=100,
                reasoning_tokens=40,
                status="error",
            ),
            event(
                event_id="evt-3",
                provider="openai",
                model="gpt-4o-mini",
                input_tokens=2000,
                output_tokens=500,
            ),
        ],
    )
    assert posted.status_code == 201, posted.content
    costs = [e["cost_usd"] for e in posted.json()["events"]]
    assert costs[0] == "0.00135"
    # Sent again: a duplicate, counted once.
    assert post_usage(ingest_client, event()).json()["events"][0]["duplicate"] is True
    assert post_usage(outsider_client, event(input_tokens=2000, output_tokens=0)).status_code == 201

    samples = scrape()
    haiku = {"tenant": "acme", "provider": "anthropic", "model": "claude-haiku-4-5"}
    mini = {"tenant": "acme", "provider": "openai", "model": "gpt-4o-mini"}
    theirs = {"tenant": "globex", "provider": "anthropic", "model": "claude-haiku-4-5"}
    assert value(samples, "costmon_spend_usd_total", **haiku) == usd(costs[0], costs[1])
    assert value(samples, "costmon_spend_usd_total", **mini) == usd(costs[2]) == 0.0006
    assert value(samples, "costmon_spend_usd_total", **theirs) == 0.002
    assert value(samples, "costmon_calls_total", **haiku) == 2
    assert value(samples, "costmon_calls_total", **mini) == 1
    assert value(samples, "costmon_call_errors_total", **haiku) == 1
    assert value(samples, "costmon_call_errors_total", **mini) == 0
    tokens = {
        kind: value(samples, "costmon_tokens_total", **haiku, kind=kind)
        for kind in ("input", "output", "cached_input", "cache_write", "reasoning")
    }
    assert tokens == {
        "input": 1450,
        "output": 280,
        "cached_input": 600,
        "cache_write": 200,
        "reasoning": 40,
    }
    assert value(samples, "costmon_tokens_total", **theirs, kind="input") == 2000
    spend_series = [k for k in samples if k[0] == "costmon_spend_usd_total"]
    assert len(spend_series) == 3


HAIKU = {"tenant": "acme", "provider": "anthropic", "model": "claude-haiku-4-5"}


def rollup_sql(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries if "usage_modelhourlyrollup" in q["sql"]]


def only_recent_hours_read(queries: CaptureQueriesContext) -> bool:
    """Every rollup query of the scrape had a lower bound on the hour: no full sum."""
    return all('"hour" >=' in sql for sql in rollup_sql(queries))


def test_a_second_scrape_sums_only_the_recent_hours_of_rollups(acme, outsider, ingest_client):
    post_usage(ingest_client, event())
    with CaptureQueriesContext(connection) as queries:
        scrape()
    assert not only_recent_hours_read(queries)  # the first one sums everything, once
    with CaptureQueriesContext(connection) as queries:
        samples = scrape()
    assert rollup_sql(queries), "the scrape reads the rollups"
    assert only_recent_hours_read(queries)
    assert value(samples, "costmon_calls_total", **HAIKU) == 1


def test_the_totals_stay_exact_as_hours_settle(acme, ingest_client, clock):
    clock.shift(timedelta(minutes=30))  # 12:30: hours before 10:00 are settled
    post_usage(
        ingest_client,
        [
            event(occurred_at="2026-11-20T10:15:00Z"),  # settled
            event(event_id="b", occurred_at="2026-11-21T10:45:00Z"),  # still open
        ],
    )
    assert value(scrape(), "costmon_calls_total", **HAIKU) == 2

    clock.shift(timedelta(minutes=35))  # 13:05: the 10:00 hour settles, folded in on its own
    post_usage(ingest_client, event(event_id="c", occurred_at="2026-11-21T13:01:00Z"))
    with CaptureQueriesContext(connection) as queries:
        samples = scrape()
    assert only_recent_hours_read(queries)
    assert value(samples, "costmon_calls_total", **HAIKU) == 3
    assert value(samples, "costmon_spend_usd_total", **HAIKU) == usd(
        "0.00135", "0.00135", "0.00135"
    )

    clock.shift(timedelta(hours=3))  # summed from scratch again (hourly): nothing counted twice
    with CaptureQueriesContext(connection) as queries:
        samples = scrape()
    assert not only_recent_hours_read(queries)
    assert value(samples, "costmon_calls_total", **HAIKU) == 3
    assert value(scrape(), "costmon_calls_total", **HAIKU) == 3


def test_a_late_event_in_a_settled_hour_is_counted_within_minutes(acme, ingest_client, clock):
    post_usage(ingest_client, event())
    assert value(scrape(), "costmon_calls_total", **HAIKU) == 1
    # A client that retried for days: its event lands in an hour the cached sums hold.
    post_usage(ingest_client, event(event_id="late", occurred_at="2026-11-18T08:00:00Z"))
    clock.shift(timedelta(seconds=totals.STALE_RESUM_SECONDS))
    samples = scrape()
    assert value(samples, "costmon_calls_total", **HAIKU) == 2
    assert value(samples, "costmon_spend_usd_total", **HAIKU) == usd("0.00135", "0.00135")


@requires_redis
def test_with_a_shared_cache_the_full_sum_is_left_to_a_worker(
    acme, ingest_client, clock, monkeypatch
):
    queued: list[str] = []
    monkeypatch.setattr(totals.refresh_usage_sums, "delay", lambda: queued.append("refresh"))
    post_usage(ingest_client, event())
    scrape()  # nothing cached yet: summed here
    post_usage(ingest_client, event(event_id="late", occurred_at="2026-11-18T08:00:00Z"))
    clock.shift(timedelta(hours=1, minutes=30))
    for _ in range(3):  # the worker has not run yet: the scrapes answer from the cached sums
        with CaptureQueriesContext(connection) as queries:
            samples = scrape()
        assert only_recent_hours_read(queries)
        assert value(samples, "costmon_calls_total", **HAIKU) == 1
    assert queued == ["refresh"]  # asked once
    totals.refresh_usage_sums()  # the worker's turn
    assert value(scrape(), "costmon_calls_total", **HAIKU) == 2


def test_no_label_names_an_end_user(acme, ingest_client, admin_client_key):
    post_usage(ingest_client, [event(end_user="user-secret-1"), event(event_id="b", end_user="u2")])
    admin_client_key.post(
        "/api/v1/budgets/",
        {"name": "Per user", "scope": "every_end_user", "period": "day", "limit_usd": "1"},
        format="json",
    )
    text = get_metrics().content.decode()
    assert "user-secret-1" not in text
    label_names = {
        name
        for family in text_string_to_metric_families(text)
        for s in family.samples
        for name in s.labels
    }
    assert label_names <= {
        "tenant",
        "provider",
        "model",
        "kind",
        "budget_id",
        "budget",
        "scope",
        "period",
        "channel",
        "code",
        "outcome",
        "le",
    }


# --- budgets, alerts, emergency stops --------------------------------------------------------


def test_budget_gauges_equal_the_api(acme, outsider, ingest_client, admin_client_key):
    today = "2026-11-21T10:15:00Z"
    post_usage(
        ingest_client,
        [
            event(occurred_at=today),  # user-1: $0.00135
            event(event_id="evt-2", occurred_at=today, end_user="user-2", input_tokens=4000),
            event(event_id="old", occurred_at="2026-10-30T10:00:00Z"),  # last month
        ],
    )
    for body in (
        {"name": "Monthly", "limit_usd": "10"},
        {"name": "Per user", "scope": "every_end_user", "period": "day", "limit_usd": "0.004"},
        {"name": "Paused", "limit_usd": "5", "is_active": False},
    ):
        assert admin_client_key.post("/api/v1/budgets/", body, format="json").status_code == 201
    api = {b["name"]: b for b in admin_client_key.get("/api/v1/budgets/").json()["results"]}
    assert api["Monthly"]["used_usd"] == "0.00625"
    assert api["Per user"]["used_usd"] == "0.0049"  # the top spender today, user-2
    assert api["Per user"]["remaining_usd"] == "0"

    samples = scrape()
    for name, scope, period in (
        ("Monthly", "tenant", "month"),
        ("Per user", "every_end_user", "day"),
    ):
        budget = api[name]
        labels = {
            "tenant": "acme",
            "budget_id": str(budget["id"]),
            "budget": name,
            "scope": scope,
            "period": period,
        }
        figures = {
            field: value(samples, f"costmon_budget_{field}", **labels)
            for field in ("limit_usd", "used_usd", "remaining_usd", "projected_usd")
        }
        assert figures == {field: usd(budget[field]) for field in figures}
    used = [k for k in samples if k[0] == "costmon_budget_used_usd"]
    assert len(used) == 2  # the paused budget is not exported; one series per budget


@pytest.mark.usefixtures("unscoped")
def test_alert_counters_count_sent_and_failed_deliveries_by_tenant_and_channel(acme, outsider):
    hook = Channel.objects.create(tenant=acme, name="hook", kind="webhook", config={})
    mail = Channel.objects.create(tenant=acme, name="mail", kind="email", config={})
    slack = Channel.objects.create(tenant=outsider, name="slack", kind="slack", config={})
    S = Notification.Status
    for channel, status, kind in [
        (hook, S.SENT, "alert"),
        (hook, S.SENT, "reminder"),
        (hook, S.FAILED, "alert"),
        (hook, S.PENDING, "alert"),
        (hook, S.RETRYING, "alert"),
        (hook, S.SENT, "test"),  # a test message is not an alert
        (mail, S.SENT, "resolved"),
        (slack, S.FAILED, "alert"),
    ]:
        Notification.objects.create(
            tenant=channel.tenant, channel=channel, status=status, kind=kind
        )

    samples = scrape()
    assert {
        (k[0], dict(k[1])["tenant"], dict(k[1])["channel"]): v
        for k, v in samples.items()
        if k[0] in ("costmon_alerts_sent_total", "costmon_alerts_failed_total")
    } == {
        ("costmon_alerts_sent_total", "acme", "email"): 1,
        ("costmon_alerts_failed_total", "acme", "email"): 0,
        ("costmon_alerts_sent_total", "acme", "webhook"): 2,
        ("costmon_alerts_failed_total", "acme", "webhook"): 1,
        ("costmon_alerts_sent_total", "globex", "slack"): 0,
        ("costmon_alerts_failed_total", "globex", "slack"): 1,
    }


def test_the_emergency_stop_gauge_follows_trips_lifts_and_expiry(acme, outsider, clock):
    def stops() -> dict[tuple[str, str], float]:
        return {
            (dict(k[1])["scope"], dict(k[1])["tenant"]): v
            for k, v in scrape().items()
            if k[0] == "costmon_emergency_stop_active"
        }

    assert stops() == {("global", ""): 0, ("tenant", "acme"): 0, ("tenant", "globex"): 0}
    emergency_stop_trip(tenant=acme, reason="runaway agent", duration_minutes=60)
    assert stops() == {("global", ""): 0, ("tenant", "acme"): 1, ("tenant", "globex"): 0}
    emergency_stop_trip(tenant=None, reason="everyone", duration_minutes=30)
    assert stops() == {("global", ""): 1, ("tenant", "acme"): 1, ("tenant", "globex"): 0}
    emergency_stop_lift(tenant=None, user=None, reason="fine")
    clock.shift(timedelta(minutes=61))  # acme's expires
    assert stops() == {("global", ""): 0, ("tenant", "acme"): 0, ("tenant", "globex"): 0}


# --- what the web processes observe ----------------------------------------------------------


def _deltas(before: Samples, after: Samples) -> dict[tuple[str, str], float]:
    """Changes in the request metrics' counts, by (metric, code or outcome)."""
    out = {}
    for key, v in after.items():
        name, labels = key
        if name in (
            "costmon_ingest_duration_seconds_count",
            "costmon_check_duration_seconds_count",
            "costmon_ingest_events_total",
        ):
            label = dict(labels).get("code") or dict(labels)["outcome"]
            if v - before.get(key, 0):
                out[(name, label)] = v - before.get(key, 0)
    return out


def test_ingest_histogram_and_event_counter_count_each_request(acme, ingest_client):
    before = scrape()
    post_usage(ingest_client, [event(), event(event_id="b")])
    post_usage(ingest_client, [event(), event(event_id="c")])  # one duplicate, one new
    post_usage(ingest_client, [event(event_id="bad", input_tokens=-1)])  # 400
    post_usage(APIClient(), event(event_id="no-key"))  # 401
    ingest_client.get("/api/v1/usage/")  # not a POST: not observed (403: no read scope)
    after = scrape()
    assert _deltas(before, after) == {
        ("costmon_ingest_duration_seconds_count", "201"): 2,
        ("costmon_ingest_duration_seconds_count", "400"): 1,
        ("costmon_ingest_duration_seconds_count", "401"): 1,
        ("costmon_ingest_events_total", "recorded"): 3,
        ("costmon_ingest_events_total", "duplicate"): 1,
    }
    inf = value(after, "costmon_ingest_duration_seconds_bucket", code="201", le="+Inf")
    assert inf == value(after, "costmon_ingest_duration_seconds_count", code="201")
    assert 0 < value(after, "costmon_ingest_duration_seconds_sum", code="201") < 60


def test_check_histogram_counts_each_check(acme, ingest_client):
    before = scrape()
    for _ in range(3):
        assert check(ingest_client, end_user="user-1", model="claude-haiku-4-5").status_code == 200
    assert check(ingest_client, estimated_input_tokens=-5).status_code == 400
    after = scrape()
    assert _deltas(before, after) == {
        ("costmon_check_duration_seconds_count", "200"): 3,
        ("costmon_check_duration_seconds_count", "400"): 1,
    }
    fast = value(after, "costmon_check_duration_seconds_bucket", code="200", le="2.5")
    assert fast == value(after, "costmon_check_duration_seconds_count", code="200")


def test_values_written_by_another_process_are_summed(acme, ingest_client):
    """Two processes writing to the same folder (as gunicorn workers do): one scrape, one sum."""
    before = scrape()
    post_usage(ingest_client, event())
    script = textwrap.dedent(
        """
        from costmon.core import instruments
        instruments.INGEST_SECONDS.labels(code="201").observe(20.0)
        instruments.INGEST_SECONDS.labels(code="201").observe(25.0)
        instruments.EVENTS_INGESTED.labels(outcome="recorded").inc(7)
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=os.environ.copy(), check=True)  # noqa: S603
    after = scrape()
    assert _deltas(before, after) == {
        ("costmon_ingest_duration_seconds_count", "201"): 3,
        ("costmon_ingest_events_total", "recorded"): 8,
    }
    assert (
        value(after, "costmon_ingest_duration_seconds_sum", code="201")
        - (value(before, "costmon_ingest_duration_seconds_sum", code="201") or 0)
        >= 45
    )
    assert (value(after, "costmon_ingest_duration_seconds_bucket", code="201", le="10.0") or 0) - (
        value(before, "costmon_ingest_duration_seconds_bucket", code="201", le="10.0") or 0
    ) == 1


def test_gunicorn_hooks_empty_the_folder_at_start_and_forget_dead_workers(settings, tmp_path):
    settings.PROMETHEUS_MULTIPROC_DIR = str(tmp_path)
    stale = [tmp_path / "histogram_11.db", tmp_path / "counter_11.db"]
    live = tmp_path / "gauge_livesum_12.db"
    for path in [*stale, live]:
        path.write_bytes(b"")
    gunicorn_conf.on_starting(server=None)
    assert list(tmp_path.iterdir()) == []

    live.write_bytes(b"")
    kept = tmp_path / "counter_12.db"
    kept.write_bytes(b"")

    class Worker:
        pid = 12

    gunicorn_conf.child_exit(server=None, worker=Worker())
    assert list(tmp_path.iterdir()) == [kept]  # counters of a dead worker still count


# --- with a real server ------------------------------------------------------------------------


@pytest.mark.slow
@requires_redis
def test_gunicorn_with_two_workers_serves_the_sum_of_both(transactional_db, tmp_path, prices):
    """The deployment as documented: gunicorn -c python:costmon.gunicorn_conf, two workers."""
    import socket
    import time
    from concurrent.futures import ThreadPoolExecutor

    import requests
    from django.conf import settings

    from costmon.core.services import tenant_create

    tenant = tenant_create(slug="acme")
    secret = api_key_create(tenant=tenant, scopes="ingest").secret
    folder = tmp_path / "prometheus"
    folder.mkdir()
    (folder / "counter_999999.db").write_bytes(b"left over by an earlier run")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "costmon.settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
        "DATABASE_ROLE": os.environ.get("DATABASE_ROLE", "costmon_app"),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": "tests-only-secret-key",
        "COSTMON_METRICS_TOKEN": TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
    }
    server = subprocess.Popen(  # noqa: S603
        [
            *[sys.executable, "-m", "gunicorn", "costmon.wsgi:application"],
            *["-c", "python:costmon.gunicorn_conf", "--workers", "2", "--bind"],
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, "gunicorn exited"
            try:
                if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "gunicorn did not start within 60 s"
            time.sleep(0.2)

        def send(i: int) -> int:
            return requests.post(
                f"{base}/api/v1/usage/",
                json=event(event_id=f"evt-{i}", occurred_at=NOW),
                headers={"Authorization": f"Bearer {secret}"},
                timeout=30,
            ).status_code

        # Which worker takes a connection is up to the kernel, and one threaded worker can
        # serve a whole round: send rounds until both have written their figures.
        sent = 0
        with ThreadPoolExecutor(8) as pool:
            for _ in range(25):
                assert set(pool.map(send, range(sent, sent + 40))) == {201}
                sent += 40
                writers = {p.name.split("_")[-1] for p in folder.glob("histogram_*.db")}
                if len(writers) == 2:
                    break
        assert len(writers) == 2, f"both workers served requests ({sent} sent)"

        for _ in range(4):  # whichever worker answers, the figures are the same
            response = requests.get(
                f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
            )
            assert response.status_code == 200
            samples = parse(response.text)
            assert value(samples, "costmon_ingest_duration_seconds_count", code="201") == sent
            assert value(samples, "costmon_ingest_events_total", outcome="recorded") == sent
            key = {"tenant": "acme", "provider": "anthropic", "model": "claude-haiku-4-5"}
            assert value(samples, "costmon_spend_usd_total", **key) == usd(
                str(Decimal("0.054") * (sent // 40))
            )
        assert not (folder / "counter_999999.db").exists()
    finally:
        server.terminate()
        server.wait(timeout=30)
