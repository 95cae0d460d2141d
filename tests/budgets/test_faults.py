"""The fault test: a bounded load (ingest batches and reserving checks from several threads)
through gunicorn while Redis is killed and restarted empty, PostgreSQL is restarted and web
workers are killed; then events are stored exactly once each, rollups equal events, counters
equal PostgreSQL and the metrics API equals the database.

Everything runs privately: a PostgreSQL 15 cluster made with initdb, a redis-server, gunicorn,
and a Celery worker with beat (which runs the sweeper and the rebuilds as in production). The
figures of a run go to test-artifacts/faults.json (docs/faults.md discusses them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from tests.budgets.servers import ROOT, Gunicorn, PostgresCluster, RedisServer, wait_for
from tests.helpers import requires_redis

pytestmark = [requires_redis, pytest.mark.slow]

DATABASE = "costmon_faults"
ROLE = "costmon_app"
BATCHES = 30  # per thread
EVENTS = 40  # per batch
THREADS = {"acme": 8, "globex": 2}  # globex: the outsider, whose figures must stay its own
ARTIFACTS = ROOT / "test-artifacts"

# Prints, per tenant, how its Redis counters (this month's hashes) differ from what PostgreSQL
# says they should hold, whether they are trusted, and the all-tenants hash of today.
COMPARE = """
import json
import django
django.setup()
from django.utils import timezone
from budgets import config, counters
from budgets import redis as bredis
from budgets.models import CounterUpdate
from costmon.core.models import Tenant
from costmon.core.tenancy import tenant_context, unscoped
from costmon.core.periods import tenant_zone

r = bredis.client()
out = {"tenants": {}}
with unscoped():
    tenants = list(Tenant.objects.order_by("slug"))
    out["pending_updates"] = CounterUpdate.objects.unscoped().count()
today = timezone.now().date()
for tenant in tenants:
    since = timezone.now().astimezone(tenant_zone(tenant)).date().replace(day=1)
    with tenant_context(tenant):
        want = counters.expected_counters(
            tenant=tenant, since=since, tag_names=config.for_tenant(tenant.pk).tag_names
        )
    differing = {}
    for key, fields in want.items():
        have = {k.decode(): int(v) for k, v in r.hgetall(key).items()}
        for name in set(fields) | set(have):
            if fields.get(name, 0) != have.get(name, 0):
                differing[key + " " + name] = [fields.get(name, 0), have.get(name, 0)]
    out["tenants"][tenant.slug] = {
        "trusted": counters.counters_trusted(r, tenant.pk),
        "differing": len(differing),
        "examples": dict(list(differing.items())[:3]),
        "today_nanos": int(r.hget(counters.day_key(tenant.pk, today), "t") or 0),
        "hashes_compared": len(want),
    }
out["global_today_nanos"] = int(r.hget(counters.global_day_key(today), "t") or 0)
print(json.dumps(out))
"""


@pytest.fixture(autouse=True)
def _frozen_clock() -> Iterator[None]:
    """The servers run on the real clock, so does the load."""
    yield None


@dataclass
class Stack:
    pg: PostgresCluster
    redis: RedisServer
    web: Gunicorn
    env: dict[str, str]
    worker: subprocess.Popen[bytes]
    worker_log: Path
    web_log: Path
    keys: dict[str, str]

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg.url(DATABASE), autocommit=True) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def manage(self, *args: str) -> str:
        return run_python(["manage.py", *args], self.env)

    def compare(self) -> dict[str, Any]:
        return json.loads(run_python(["-c", COMPARE], self.env).strip().splitlines()[-1])


def worker_events(stack: Stack, name: str, log: Path | None = None) -> list[dict[str, Any]]:
    """The Celery worker's (or gunicorn's) log lines (JSON) for one event."""
    found = []
    for line in (log or stack.worker_log).read_text().splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            found.append(json.loads(line))
    return found


def run_python(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(  # noqa: S603
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def stack() -> Iterator[Stack]:
    tmp_path = Path(tempfile.mkdtemp(prefix="costmon-faults-"))
    pg = PostgresCluster()
    redis_server = RedisServer()
    web: Gunicorn | None = None
    worker: subprocess.Popen[bytes] | None = None
    try:
        pg.init()
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} NOLOGIN")
            conn.execute(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
        redis_server.start()
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "costmon.settings",
            "DATABASE_URL": pg.url(DATABASE),
            "DATABASE_ROLE": ROLE,
            "REDIS_URL": redis_server.url,
            "SECRET_KEY": "tests-only-secret-key",
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "worker-metrics"),
        }
        (tmp_path / "worker-metrics").mkdir()
        run_python(["manage.py", "migrate", "--verbosity", "0"], env)
        keys = {}
        for slug in THREADS:
            run_python(["manage.py", "create_tenant", slug], env)
            out = run_python(
                ["manage.py", "create_api_key", slug, "--scopes", "ingest,read,admin"], env
            )
            keys[slug] = out.strip().splitlines()[-1]
        web_log = tmp_path / "web.log"
        web = Gunicorn(
            database_url=pg.url(DATABASE),
            redis_url=redis_server.url,
            workers=3,
            threads=4,
            log=web_log,
        )
        web.start()
        worker_log = tmp_path / "worker.log"
        with worker_log.open("wb") as log:
            worker = subprocess.Popen(  # noqa: S603
                [
                    *[sys.executable, "-m", "celery", "-A", "costmon", "worker", "--beat"],
                    *["--pool", "solo", "--loglevel", "WARNING", "--without-gossip"],
                    *["--without-mingle", "--without-heartbeat"],
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        stack = Stack(pg, redis_server, web, env, worker, worker_log, web_log, keys)
        # Beat writes its schedule into the database as it starts.
        wait_for(
            lambda: stack.sql("SELECT count(*) FROM django_celery_beat_periodictask")[0][0] > 5,
            60,
            "celery beat starts",
        )
        yield stack
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        if web is not None:
            web.stop()
        redis_server.kill()
        pg.destroy()
        shutil.rmtree(tmp_path, ignore_errors=True)


class Load:
    """Threads sending batches (and a reserving check before each) until every batch is
    stored, retrying what failed with the same event ids, as the Python client does."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.base = stack.web.base
        self.lock = threading.Lock()
        self.stats: Counter[str] = Counter()
        self.done = 0
        self.total = sum(THREADS.values()) * BATCHES
        self.sent: dict[str, dict[str, int]] = {slug: {} for slug in THREADS}  # event -> nanos
        self.started = time.monotonic()
        self.sources: list[tuple[float, str]] = []  # (when, where a check read spend)
        self.bugs: list[str] = []  # answers other than success or "try again"

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.stats[name] += n

    def post(self, session: requests.Session, path: str, body: Any, key: str) -> dict[str, Any]:
        while True:
            try:
                response = session.post(
                    f"{self.base}{path}",
                    json=body,
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=30,
                )
            except requests.RequestException:
                self.count(f"{path} connection error")
                time.sleep(0.2)
                continue
            self.count(f"{path} {response.status_code}")
            if response.status_code in (200, 201):
                return dict(response.json())
            if response.status_code not in (502, 503, 504):  # a 4xx or a 500 is a bug here
                with self.lock:
                    self.bugs.append(f"{path} {response.status_code}: {response.text[:500]}")
            else:
                assert "Retry-After" in response.headers or response.status_code != 503
            retry_after = float(response.headers.get("Retry-After") or 0.3)
            time.sleep(min(retry_after, 2.0))

    def run_thread(self, slug: str, n: int) -> None:
        key = self.stack.keys[slug]
        session = requests.Session()
        for b in range(BATCHES):
            now = datetime.now(UTC).isoformat()
            batch = []
            for i in range(EVENTS):
                nanos = 1_000 * (1 + (n * 7 + b * 3 + i) % 97)  # $0.000001 to $0.000097
                event_id = f"{slug}-{n}-{b}-{i}"
                batch.append(
                    {
                        "event_id": event_id,
                        "occurred_at": now,
                        "provider": "openai",
                        "model": ["gpt-4o", "gpt-4o-mini"][i % 2],
                        "operation": "chat",
                        "end_user": f"user-{i % 5}",
                        "input_tokens": 100 + i,
                        "output_tokens": 20,
                        "cost_usd": str(Decimal(nanos) / 10**9),
                    }
                )
                self.sent[slug][event_id] = nanos
            cost = sum(self.sent[slug][e["event_id"]] for e in batch)
            while True:  # the application asks first, and waits while it is refused
                check = self.post(
                    session,
                    "/api/v1/check/",
                    {
                        "end_user": "user-0",
                        "estimated_cost_usd": str(Decimal(cost) / 10**9),
                        "reserve": True,
                    },
                    key,
                )
                self.count(f"check source {check['source']}")
                with self.lock:
                    self.sources.append((time.monotonic() - self.started, check["source"]))
                if check["allowed"]:
                    break
                self.count(f"check refused {','.join(check['reasons'])}")
                time.sleep(0.3)
            if check.get("reservation_id"):
                batch[0]["reservation_id"] = check["reservation_id"]
            reply = self.post(session, "/api/v1/usage/", batch, key)
            self.count("events reported duplicate", sum(e["duplicate"] for e in reply["events"]))
            with self.lock:
                self.done += 1


def test_a_bounded_load_survives_redis_postgresql_and_worker_faults(stack: Stack) -> None:
    for slug, key in stack.keys.items():
        response = requests.post(
            f"{stack.web.base}/api/v1/budgets/",
            json={"name": "daily", "period": "day", "limit_usd": "1000", "enforcement": "hard"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert response.status_code == 201, (slug, response.text)
    load = Load(stack)
    faults: list[tuple[float, str]] = []
    started = load.started

    def at(progress: float) -> None:
        while load.done < progress * load.total:
            time.sleep(0.02)

    def inject() -> None:
        at(0.15)
        stack.redis.kill()
        faults.append((time.monotonic() - started, "Redis killed"))
        at(0.30)
        stack.redis.start()  # empty: no counters, no "trusted" marks, no queued tasks
        faults.append((time.monotonic() - started, "Redis restarted (empty)"))
        at(0.45)
        stack.pg.stop("fast")
        faults.append((time.monotonic() - started, "PostgreSQL stopped"))
        time.sleep(2)
        stack.pg.start()
        faults.append((time.monotonic() - started, "PostgreSQL started"))
        for progress in (0.55, 0.65, 0.75, 0.85):
            at(progress)
            pid = stack.web.kill_a_worker()
            faults.append((time.monotonic() - started, f"web worker {pid} killed"))

    injector = threading.Thread(target=inject)
    threads = [
        threading.Thread(target=load.run_thread, args=(slug, n))
        for slug, count in THREADS.items()
        for n in range(count)
    ]
    injector.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    load_seconds = time.monotonic() - started
    injector.join(timeout=60)
    assert len(faults) == 8, faults
    # Every refusal under faults said "try again" (503 with Retry-After), never 500 or a 4xx.
    assert load.bugs == []

    stored = {
        slug: (count, int(total))
        for slug, count, total in stack.sql(
            "SELECT t.slug, count(*), sum(e.cost_nanos) FROM usage_usageevent e "
            "JOIN costmon_tenant t ON t.id = e.tenant_id GROUP BY t.slug"
        )
    }

    # Counters: the sweeper, the stale rebuild and the rebuild checks asked for (all run by
    # the Celery worker) bring each tenant's level with PostgreSQL; the all-tenants hash (for
    # global stop rules) is rebuilt every minute.
    def tenants_equal(comparison: dict[str, Any]) -> bool:
        return comparison["pending_updates"] == 0 and all(
            t["trusted"] and t["differing"] == 0 and t["today_nanos"] == stored[slug][1]
            for slug, t in comparison["tenants"].items()
        )

    settle_started = time.monotonic()
    comparison: dict[str, Any] = {}
    tenants_seconds = None
    while time.monotonic() - settle_started < 150:
        comparison = stack.compare()
        if tenants_seconds is None and tenants_equal(comparison):
            tenants_seconds = time.monotonic() - settle_started
        if tenants_seconds is not None and comparison["global_today_nanos"] == sum(
            total for _, total in stored.values()
        ):
            break
        time.sleep(3)
    settle_seconds = time.monotonic() - settle_started

    restarted = next(t for t, what in faults if what.startswith("Redis restarted"))
    back = [t for t, source in load.sources if t > restarted and source == "redis"]
    figures = {
        "events_sent": {slug: len(events) for slug, events in load.sent.items()},
        "load_seconds": round(load_seconds, 1),
        "events_per_second": round(sum(len(e) for e in load.sent.values()) / load_seconds),
        "faults": [f"{t:.1f} s: {what}" for t, what in faults],
        "requests": dict(sorted(load.stats.items())),
        "seconds_from_redis_restart_to_the_first_check_answered_by_redis": round(
            back[0] - restarted, 1
        )
        if back
        else None,
        "seconds_after_the_load_until_tenant_counters_equal_postgresql": tenants_seconds
        and round(tenants_seconds, 1),
        "seconds_after_the_load_until_the_all_tenants_counters_equal_too": round(settle_seconds, 1),
        "counter_updates_recovered_by_the_sweeper": sum(
            line.get("applied", 0) for line in worker_events(stack, "counter_updates_recovered")
        ),
        "drift_corrected_in_trusted_counters": len(
            worker_events(stack, "counters_drift_corrected")
        ),
        "web_workers_finding_redis_unavailable": len(
            worker_events(stack, "redis_unavailable", stack.web_log)
        ),
        "counter_updates_the_web_workers_could_not_finish": len(
            worker_events(stack, "after_record_hook_failed", stack.web_log)
        ),
        "comparison": comparison,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "faults.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))

    # 1. Events stored exactly once each.
    for slug, events in load.sent.items():
        ids = {
            row[0]
            for row in stack.sql(
                "SELECT e.event_id FROM usage_usageevent e JOIN costmon_tenant t "
                "ON t.id = e.tenant_id WHERE t.slug = %s",
                slug,
            )
        }
        assert ids == set(events), slug
        assert stored[slug] == (len(events), sum(events.values())), slug
    # 2. Rollups equal events (both rollup tables).
    for table in ("usage_hourlyrollup", "usage_modelhourlyrollup"):
        rolled = {
            slug: (int(calls), int(cost))
            for slug, calls, cost in stack.sql(
                f"SELECT t.slug, sum(r.calls), sum(r.cost_nanos) FROM {table} r "  # noqa: S608
                "JOIN costmon_tenant t ON t.id = r.tenant_id GROUP BY t.slug"
            )
        }
        assert rolled == stored, table
    # 3. Counters equal PostgreSQL: each tenant's within about a minute of the load's end (the
    # stale rebuild runs every minute; the sweeper every 20 seconds).
    assert tenants_seconds is not None and tenants_seconds < 75, figures
    for slug, state in comparison["tenants"].items():
        assert state["trusted"] and state["differing"] == 0, (slug, state)
        assert state["hashes_compared"] >= 2, (slug, state)  # today's and the month's at least
        assert state["today_nanos"] == stored[slug][1], slug
    assert comparison["global_today_nanos"] == sum(total for _, total in stored.values())
    assert comparison["pending_updates"] == 0
    # 4. The metrics API equals the database, for each tenant (and only its own figures).
    for slug, key in stack.keys.items():
        total = requests.get(
            f"{stack.web.base}/api/v1/metrics/?period=day",
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ).json()["total"]
        assert (total["calls"], Decimal(total["cost_usd"])) == (
            stored[slug][0],
            Decimal(stored[slug][1]) / 10**9,
        ), slug
