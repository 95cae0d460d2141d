"""Single-event ingest in process, one at a time: what one report costs the server.

    .venv/bin/python tests/bench/single_events.py [--events 2000] [--database NAME] [--redis-db N]
        [--trusted] [--profile] [--group N] [--compare]

Uses a scratch PostgreSQL database (`costmon_single_bench` unless named; dropped and created
again) and a Redis database (9 unless named), acting as the role `costmon_app` so row-level
security is on, as in production, with the budgets app's counters in Redis. Each event goes
through `usage_record_batch` alone, as the group committer stores a group of one: known names,
a fresh event id, its time given. Prints p50 and p90 of wall time and of this process's CPU
time per event (the rest of the wall time is waiting: PostgreSQL, Redis, the other processes
of the machine), the CPU time of the connection's PostgreSQL backend per event (from /proc),
and the PostgreSQL round trips of one event. `--group N` stores N events a call (a group of
N single events); `--compare` alternates blocks of calls through the one-round-trip path
(`usage.newevents`) and the two-round-trip path, and prints each path's figures.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import os
import pstats
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def prepare_database(name: str) -> None:
    import psycopg

    with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN CREATE ROLE costmon_app NOLOGIN CREATEDB; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name} OWNER costmon_app")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--database", default="costmon_single_bench")
    parser.add_argument("--redis-db", type=int, default=9)
    parser.add_argument("--profile", action="store_true", help="print the timed events' cProfile")
    parser.add_argument("--group", type=int, default=1, help="events stored per call")
    parser.add_argument(
        "--compare", action="store_true", help="alternate the one- and two-round-trip paths"
    )
    parser.add_argument(
        "--trusted",
        action="store_true",
        help="rebuild the counters first, as production does: checks trust them, and ingest "
        "settles reservations in Redis only",
    )
    args = parser.parse_args()
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.database}"
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:6379/{args.redis_db}"
    os.environ.setdefault("DATABASE_ROLE", "costmon_app")
    os.environ.setdefault("SECRET_KEY", "single-bench")
    os.environ["DJANGO_SETTINGS_MODULE"] = "costmon.settings"
    prepare_database(args.database)
    import django

    django.setup()
    import redis
    from django.core.management import call_command
    from django.db import connection

    from costmon.core.services import tenant_create
    from costmon.core.tenancy import unscoped
    from usage.ingest import parse_batch
    from usage.prices import prices_sync, read_price_file
    from usage.services import usage_record_batch

    call_command("migrate", verbosity=0)
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    with unscoped():
        tenant = tenant_create(slug="bench")
        prices_sync(price_list=read_price_file(str(ROOT / "usage" / "data" / "prices.json")))
    at = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def body(i: int) -> list[dict[str, object]]:
        return [
            {
                "event_id": f"single-{i}-{j}",
                "occurred_at": at,
                "provider": "openai",
                "model": "gpt-4o",
                "operation": "chat",
                "end_user": f"user-{i % 20}",
                "input_tokens": 1200,
                "output_tokens": 300,
                "tags": {"team": "search"},
            }
            for j in range(args.group)
        ]

    if args.trusted:
        from budgets.counters import counters_reconcile

        counters_reconcile(tenant=tenant)
    for i in range(50):  # names, tag set, partition, catalog and connection warmed up
        usage_record_batch(tenant=tenant, events=parse_batch(body(-1 - i)))
    from usage.eventstore.postgres import PostgresStore

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    paths = ("one trip", "two trips") if args.compare else ("as configured",)
    walls: dict[str, list[float]] = {p: [] for p in paths}
    cpus: dict[str, list[float]] = {p: [] for p in paths}
    backend_ms: dict[str, float] = dict.fromkeys(paths, 0.0)
    block = 100 if args.events >= 400 else max(1, args.events // 6)  # alternated blocks
    profile = cProfile.Profile() if args.profile else None
    if profile is not None:
        profile.enable()
    for start in range(0, args.events, block):
        path = paths[(start // block) % len(paths)]
        if args.compare:
            PostgresStore.one_trip_writes = path == "one trip"
        b0 = _cpu_ms(backend)
        for i in range(start, min(start + block, args.events)):
            events = parse_batch(body(i))
            w0, c0 = time.perf_counter(), time.process_time()
            usage_record_batch(tenant=tenant, events=events)
            cpus[path].append((time.process_time() - c0) * 1000)
            walls[path].append((time.perf_counter() - w0) * 1000)
        backend_ms[path] += _cpu_ms(backend) - b0
    if profile is not None:
        profile.disable()
    print(f"single events in process, {args.group} a call ({args.events} calls):")
    for path in paths:
        if args.compare:
            PostgresStore.one_trip_writes = path == "one trip"
        w, c = walls[path], cpus[path]
        probe = parse_batch(body(-1000 - paths.index(path)))
        trips = _round_trips(
            connection, functools.partial(usage_record_batch, tenant=tenant, events=probe)
        )
        print(
            f"  {path}: wall p50 {statistics.median(w):.2f} ms, p90 {pct(w, 0.9):.2f} ms; "
            f"CPU p50 {statistics.median(c):.2f} ms, p90 {pct(c, 0.9):.2f} ms; PostgreSQL "
            f"backend CPU {backend_ms[path] / len(w):.3f} ms a call; round trips {trips}"
        )
    print(f"  load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if profile is not None:
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(50)


def _cpu_ms(pid: int) -> float:
    """User + system CPU time of a local process so far, in milliseconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def _round_trips(connection: object, call: object) -> int:
    import tempfile

    from psycopg import pq

    pgconn = connection.connection.pgconn  # type: ignore[attr-defined]
    with tempfile.TemporaryFile("w+") as trace:
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            call()  # type: ignore[operator]
        finally:
            pgconn.untrace()
        trace.seek(0)
        trips, sending = 0, False
        for line in trace:
            direction = line.split("\t", 1)[0]
            if direction == "F":
                sending = True
            elif direction == "B" and sending:
                trips, sending = trips + 1, False
    return trips


if __name__ == "__main__":
    main()
