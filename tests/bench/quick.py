"""Quick in-process measurements (not the benchmark of issue 6, which drives a real server).

    .venv/bin/python tests/bench/quick.py

Uses a scratch PostgreSQL database `costmon_quickbench` (created if missing) and Redis db 9,
acting as the role `costmon_app` so row-level security is on, as in production. Prints:
- ingest through the service: events/s for 1,000-event batches, one process;
- the pre-flight check through the full Django stack (test client, no network): p50/p99 with
  three budgets (tenant month, every end user, model day) and two rate limits applying.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
DB = "costmon_quickbench"
os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{DB}"
os.environ["REDIS_URL"] = "redis://127.0.0.1:6379/9"
os.environ.setdefault("DATABASE_ROLE", "costmon_app")
os.environ.setdefault("SECRET_KEY", "quick-bench")
os.environ["DJANGO_SETTINGS_MODULE"] = "costmon.settings"


def prepare_database() -> None:
    import psycopg

    with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN CREATE ROLE costmon_app NOLOGIN CREATEDB; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.execute(f"CREATE DATABASE {DB} OWNER costmon_app")


def main() -> None:
    prepare_database()
    import django

    django.setup()
    import redis
    from django.core.management import call_command
    from django.test import Client

    from budgets import config, counters
    from budgets.models import RateLimit
    from budgets.services import budget_create
    from costmon.core.services import api_key_create, tenant_create
    from costmon.core.tenancy import unscoped
    from usage import demo
    from usage.prices import prices_sync, read_price_file
    from usage.services import usage_record_batch

    call_command("migrate", verbosity=0)
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    with unscoped():
        tenant = tenant_create(slug="bench")
        prices_sync(price_list=read_price_file(str(ROOT / "usage" / "data" / "prices.json")))
        now = datetime.now(UTC)
        events = list(demo.demo_events(count=11_000, days=3, end=now, seed=7))
        batches = [events[i : i + 1000] for i in range(0, len(events), 1000)]
        usage_record_batch(tenant=tenant, events=batches[0])  # warm caches
        started = time.perf_counter()
        for batch in batches[1:]:
            usage_record_batch(tenant=tenant, events=batch)
        elapsed = time.perf_counter() - started
        print(f"ingest (service, 1,000-event batches, 1 process): {10_000 / elapsed:,.0f} events/s")

        budget_create(
            tenant=tenant,
            data={"name": "month", "limit_usd": Decimal(100_000), "enforcement": "hard"},
        )
        budget_create(
            tenant=tenant,
            data={
                "name": "user",
                "scope": "every_end_user",
                "limit_usd": Decimal(1_000),
                "enforcement": "hard",
            },
        )
        budget_create(
            tenant=tenant,
            data={
                "name": "model",
                "scope": "model",
                "scope_value": "gpt-4o",
                "period": "day",
                "limit_usd": Decimal(5_000),
            },
        )
        RateLimit.objects.create(
            tenant=tenant, scope="end_user", window_seconds=60, max_requests=10**9
        )
        RateLimit.objects.create(
            tenant=tenant, scope="api_key", window_seconds=60, max_requests=10**9, max_tokens=10**15
        )
        config.bump(tenant.pk)
        secret = api_key_create(tenant=tenant, scopes="ingest").secret
        counters.counters_reconcile(tenant=tenant)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}", SERVER_NAME="localhost")
    body = (
        '{"end_user": "u%d", "provider": "openai", "model": "gpt-4o", '
        '"estimated_input_tokens": 1000, "estimated_output_tokens": 200, "reserve": true}'
    )
    for i in range(300):
        client.post("/api/v1/check/", body % (i % 50), content_type="application/json")
    latencies = []
    for i in range(3000):
        t0 = time.perf_counter()
        response = client.post("/api/v1/check/", body % (i % 50), content_type="application/json")
        latencies.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200
    latencies.sort()
    print(
        f"check (3 budgets + 2 rate limits, in-process Django stack): p50 {statistics.median(latencies):.2f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)]:.2f} ms, {1000 / statistics.mean(latencies):,.0f}/s in 1 process"
    )


if __name__ == "__main__":
    main()
