"""The event stores side by side: PostgreSQL (the default) and ClickHouse, on the same events.

    .venv/bin/python tests/bench/clickhouse_store.py --events 200000 [--db NAME] [--redis N]

Uses a scratch PostgreSQL database (`--db`, created afresh) and a Redis database (`--redis`),
acting as the role `costmon_app` so row-level security is on, and starts its own
clickhouse-server on a free port in a temporary folder. Loads the same demo events (30 days,
one tenant per store) through the ingest service in 1,000-event batches, then prints, for each
store: bytes per event on disk (PostgreSQL: the events table's partitions with their indexes;
ClickHouse: the table's parts after a merge), the ingest rate in one process, and the median
time of the metrics API (a month by model: rollups, in PostgreSQL with either store) and of the
event list's first page (100 events), through the Django stack in process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def prepare_database(db: str) -> None:
    import psycopg

    with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN CREATE ROLE costmon_app NOLOGIN CREATEDB; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        conn.execute(f"DROP DATABASE IF EXISTS {db}")
        conn.execute(f"CREATE DATABASE {db} OWNER costmon_app")


def bench_environment(db: str, redis_db: int) -> None:
    """The environment of a bench script run before Django starts: the scratch PostgreSQL
    database `db` made afresh (acting as `costmon_app`, so row-level security is on), the Redis
    database `redis_db`, and no event store chosen yet."""
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{db}"
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:6379/{redis_db}"
    os.environ.setdefault("DATABASE_ROLE", "costmon_app")
    os.environ.setdefault("SECRET_KEY", "ch-bench")
    os.environ["DJANGO_SETTINGS_MODULE"] = "costmon.settings"
    os.environ.pop("COSTMON_EVENT_STORE_URL", None)
    prepare_database(db)


@contextlib.contextmanager
def clickhouse_only(db: str, redis_db: int, name: str, *, buffered: bool = False) -> Iterator[Any]:
    """Django on a scratch PostgreSQL database (`db`, made afresh and migrated) and a flushed
    Redis database, the global catalog loaded, and a clickhouse-server of its own as the event
    store (database `name`, schema made): yields the store, stops the server at the end."""
    bench_environment(db, redis_db)
    os.environ["COSTMON_CLICKHOUSE_BUFFER"] = "1" if buffered else "0"

    import django

    django.setup()
    import redis
    from django.conf import settings
    from django.core.management import call_command

    from costmon.core.tenancy import unscoped
    from tests.clickhouse import Server, binary
    from usage.eventstore import current
    from usage.prices import prices_sync, read_price_file

    if binary() is None:
        sys.exit("clickhouse-server is not installed (apt-get install clickhouse-server)")
    call_command("migrate", verbosity=0)
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    server = Server(Path(tempfile.mkdtemp(prefix=f"costmon-{name}-")))
    try:
        with unscoped():
            prices_sync(price_list=read_price_file(str(ROOT / "usage" / "data" / "prices.json")))
        settings.COSTMON_EVENT_STORE_URL = f"clickhouse://127.0.0.1:{server.port}/{name}"
        current.forget()
        store = current.event_store()
        store.create_schema()  # type: ignore[attr-defined]
        yield store
    finally:
        server.stop()


def timed(client, url: str, repeat: int = 15) -> float:
    client.get(url)  # warm
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.content[:300]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--db", default="costmon_chbench")
    parser.add_argument("--redis", type=int, default=9)
    args = parser.parse_args()
    bench_environment(args.db, args.redis)

    import django

    django.setup()
    import redis
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from costmon.core.services import api_key_create, tenant_create
    from costmon.core.tenancy import unscoped
    from tests.clickhouse import Server, binary
    from usage import demo
    from usage.eventstore import current
    from usage.prices import prices_sync, read_price_file
    from usage.services import usage_record_batch

    if binary() is None:
        sys.exit("clickhouse-server is not installed (apt-get install clickhouse-server)")
    call_command("migrate", verbosity=0)
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    folder = Path(tempfile.mkdtemp(prefix="costmon-chbench-"))
    server = Server(folder)
    try:
        with unscoped():
            prices_sync(price_list=read_price_file(str(ROOT / "usage" / "data" / "prices.json")))
        now = datetime.now(UTC)
        events = list(demo.demo_events(count=args.events, days=30, end=now, seed=7))
        batches = [events[i : i + 1000] for i in range(0, len(events), 1000)]
        rows = []
        for name, url in (
            ("PostgreSQL", ""),
            ("ClickHouse", f"clickhouse://127.0.0.1:{server.port}/costmon_bench"),
        ):
            settings.COSTMON_EVENT_STORE_URL = url
            current.forget()
            store = current.event_store()
            if url:
                store.create_schema()  # type: ignore[attr-defined]
            with unscoped():
                tenant = tenant_create(slug=f"bench-{store.name}")
                secret = api_key_create(tenant=tenant, scopes="ingest,read").secret
                started = time.perf_counter()
                for batch in batches:
                    usage_record_batch(tenant=tenant, events=batch)
                rate = len(events) / (time.perf_counter() - started)
            if url:
                store.connections.execute(0, "OPTIMIZE TABLE usage_events_buffer")  # type: ignore[attr-defined]
                store.connections.execute(0, "OPTIMIZE TABLE usage_events FINAL")  # type: ignore[attr-defined]
                (size,) = store.connections.execute(  # type: ignore[attr-defined]
                    0,
                    "SELECT sum(bytes_on_disk) FROM system.parts WHERE active "
                    "AND database = 'costmon_bench' AND table = 'usage_events'",
                )[0]
            else:
                with connection.cursor() as cursor:
                    cursor.execute("VACUUM ANALYZE usage_usageevent")
                    cursor.execute(
                        "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                        "WHERE inhparent = 'usage_usageevent'::regclass"
                    )
                    (size,) = cursor.fetchone()
            client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}", SERVER_NAME="localhost")
            metrics = timed(client, "/api/v1/metrics/?period=month&group_by=model")
            first_page = timed(client, "/api/v1/usage/?limit=100")
            rows.append((name, int(size) / len(events), rate, metrics, first_page))
        load = os.getloadavg()
        print(
            f"{len(events):,} events, 30 days, one tenant per store; load {load[0]:.2f} {load[1]:.2f}"
        )
        print(
            "| store | bytes/event | ingest events/s (1 process) | metrics API ms | event list 1st page ms |"
        )
        print("|---|---|---|---|---|")
        for name, per_event, rate, metrics, first_page in rows:
            print(f"| {name} | {per_event:.1f} | {rate:,.0f} | {metrics:.1f} | {first_page:.1f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
