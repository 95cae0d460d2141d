"""CPU per event of batch ingest through the full Django stack, in process (issue 17, part 2).

    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/costmon_batchbench \
        REDIS_URL=redis://127.0.0.1:6379/9 SECRET_KEY=bench
    .venv/bin/python tests/bench/batch_cpu.py [--batches 30] [--profile]

Drops and creates the database of DATABASE_URL (a scratch one: never point it at real data),
acts as the role `costmon_app` so row-level security is on, as in production, and flushes the
Redis db of REDIS_URL. A tenant with two budgets (so the counter update runs as in production)
posts 1,000-event JSON batches of fresh events (the benchmark's demo stream: two days, ~300 end
users, tags, sessions) to `POST /api/v1/usage/` through Django's test client, one at a time.

Prints, per event, the CPU time this process spent (parsing, validation, pricing, rows, the
statements' parameters, the counter update) and the CPU time of its PostgreSQL backend (read
from /proc/<pid>/stat: planning, the insert, its rollup upserts, index maintenance, WAL), in
microseconds, the garbage collector tuned as in a gunicorn worker. CPU time is what a loaded
machine does not inflate, unlike wall time; the ticks are 10 ms, so the batches are timed
together. The Redis server's CPU is not counted (it is
shared with other processes). `--profile` prints the process's cProfile of the timed batches.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_ROLE", "costmon_app")
os.environ.setdefault("SECRET_KEY", "batch-cpu-bench")
os.environ["DJANGO_SETTINGS_MODULE"] = "costmon.settings"
BATCH = 1000


def prepare_database(url: str) -> None:
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    if not name.replace("_", "").isalnum() or name in ("costmon", "postgres", "test"):
        raise SystemExit(f"DATABASE_URL names {name!r}: give a scratch database")
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN CREATE ROLE costmon_app NOLOGIN CREATEDB; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name} OWNER costmon_app")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=30, help="timed 1,000-event batches")
    parser.add_argument("--warm", type=int, default=3, help="batches before the timed ones")
    parser.add_argument("--profile", action="store_true", help="print the process's profile")
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        raise SystemExit("Set DATABASE_URL to a scratch PostgreSQL database (it is recreated).")
    prepare_database(url)

    import django

    django.setup()
    import redis
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from budgets import counters
    from budgets.services import budget_create
    from costmon.core.services import api_key_create, tenant_create
    from costmon.core.tenancy import unscoped
    from costmon.gunicorn_conf import GC_GEN0_THRESHOLD
    from usage import demo
    from usage.prices import prices_sync, read_price_file

    call_command("migrate", verbosity=0)
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    with unscoped():
        tenant = tenant_create(slug="bench")
        prices_sync(price_list=read_price_file(str(ROOT / "usage" / "data" / "prices.json")))
        budget_create(
            tenant=tenant,
            data={"name": "month", "limit_usd": Decimal(10**6), "enforcement": "hard"},
        )
        budget_create(
            tenant=tenant,
            data={
                "name": "user",
                "scope": "every_end_user",
                "limit_usd": Decimal(10**4),
                "enforcement": "soft",
            },
        )
        secret = api_key_create(tenant=tenant, scopes="ingest").secret
        # Trusted counters, as in production once the first rebuild ran.
        counters.counters_reconcile(tenant=tenant)
    total = args.warm + args.batches
    events = list(
        demo.demo_events(count=BATCH * total, days=2, end=datetime.now(UTC), seed=17, stream=17)
    )
    bodies = [
        json.dumps([demo.as_payload(e) for e in events[i : i + BATCH]]).encode()
        for i in range(0, len(events), BATCH)
    ]
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}", SERVER_NAME="localhost")

    def post(body: bytes) -> None:
        response = client.post("/api/v1/usage/", body, content_type="application/json")
        if response.status_code != 201:
            raise SystemExit(f"answered {response.status_code}: {response.content[:300]!r}")

    for body in bodies[: args.warm]:
        post(body)
    # The garbage collector as in a gunicorn worker (costmon.wsgi, costmon.gunicorn_conf):
    # with Python's default threshold a batch would pay for collections a worker never makes.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    ticks = os.sysconf("SC_CLK_TCK")

    def backend_seconds() -> float:
        fields = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    profile = cProfile.Profile() if args.profile else None
    wall, cpu, pg = time.perf_counter(), time.process_time(), backend_seconds()
    if profile is not None:
        profile.enable()
    for body in bodies[args.warm :]:
        post(body)
    if profile is not None:
        profile.disable()
    wall, cpu, pg = time.perf_counter() - wall, time.process_time() - cpu, backend_seconds() - pg
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        if cursor.fetchone()[0] != backend:
            raise SystemExit("the connection was replaced during the run: its CPU is not counted")
    n = args.batches * BATCH
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"batch ingest, {args.batches} x {BATCH:,} events through the Django stack (1 process): "
        f"Python {cpu / n * 1e6:.0f} us/event, PostgreSQL backend {pg / n * 1e6:.0f} us/event, "
        f"sum {(cpu + pg) / n * 1e6:.0f} us/event; wall {wall / args.batches * 1000:.0f} ms/batch"
        f"{' (profiled)' if profile else ''}; load average {load}"
    )
    if profile is not None:
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(35)
        stats.sort_stats("cumulative").print_stats(60)


if __name__ == "__main__":
    main()
