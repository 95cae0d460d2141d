"""The ClickHouse store's hourly rollups: what they cost on disk and what they save a read.

    .venv/bin/python tests/bench/ch_rollups.py [--events 200000] [--days 90] [--users 300]
        [--db NAME] [--redis N]

Uses a scratch PostgreSQL database (`--db`, created afresh) and a Redis database, and starts its
own clickhouse-server in a temporary folder. Bulk-loads demo events into the ClickHouse store
(`usage_bulk_load`, which adds the store's rollups), merges both tables (`OPTIMIZE ... FINAL`),
and prints the bytes on disk per event of the events and of the rollups, the rollup rows, and
the median time of `event_sums` by end user over 30 and 90 days from the rollups and from the
raw events (the same figures both ways: checked), with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.clickhouse_store import bench_environment  # noqa: E402

DATABASE = "costmon_rollbench"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--db", default="costmon_chrollups")
    parser.add_argument("--redis", type=int, default=9)
    args = parser.parse_args()
    bench_environment(args.db, args.redis)

    import django

    django.setup()
    import redis
    from django.conf import settings
    from django.core.management import call_command

    from costmon.core.periods import TimeRange
    from costmon.core.services import tenant_create
    from costmon.core.tenancy import tenant_context, unscoped
    from tests.clickhouse import Server, binary
    from usage import demo
    from usage.bulk import usage_bulk_load
    from usage.eventstore import chrollups, clickhouse, current
    from usage.eventstore.base import event_query
    from usage.prices import prices_sync, read_price_file

    if binary() is None:
        sys.exit("clickhouse-server is not installed (apt-get install clickhouse-server)")
    call_command("migrate", verbosity=0)
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    server = Server(Path(tempfile.mkdtemp(prefix="costmon-chrollups-")))
    try:
        with unscoped():
            prices_sync(price_list=read_price_file(str(ROOT / "usage" / "data" / "prices.json")))
        settings.COSTMON_EVENT_STORE_URL = f"clickhouse://127.0.0.1:{server.port}/{DATABASE}"
        current.forget()
        store = current.event_store()
        assert isinstance(store, clickhouse.ClickHouseStore)
        store.create_schema()
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        events = demo.demo_events(
            count=args.events, days=args.days, end=end, seed=5, users=args.users
        )
        with unscoped():
            tenant = tenant_create(slug="rollbench")
        spent = [0.0]
        insert = chrollups.rollups_insert

        def timed_insert(*a: Any, **kw: Any) -> None:
            t0 = time.perf_counter()
            insert(*a, **kw)
            spent[0] += time.perf_counter() - t0

        chrollups.rollups_insert = timed_insert  # type: ignore[assignment]
        started = time.perf_counter()
        report = usage_bulk_load(tenant=tenant, events=events)
        loaded = time.perf_counter() - started
        chrollups.rollups_insert = insert  # type: ignore[assignment]
        print(
            f"{report.inserted:,} events ({args.days} days, {args.users} end users) loaded in "
            f"{loaded:.1f} s ({report.inserted / loaded:,.0f} events/s), of which the store's "
            f"rollup inserts {spent[0]:.1f} s"
        )
        run = store.connections.execute
        for table in ("usage_events", "usage_rollups_hourly"):
            run(0, f"OPTIMIZE TABLE {table} FINAL")
        sizes = dict(
            run(
                0,
                "SELECT table, sum(bytes_on_disk) FROM system.parts WHERE active AND "
                f"database = '{DATABASE}' GROUP BY table",
            )
        )
        rows = run(0, "SELECT count() FROM usage_rollups_hourly")[0][0]
        n = report.inserted
        events_b, rollups_b = sizes["usage_events"], sizes["usage_rollups_hourly"]
        print(
            f"bytes/event: events {events_b / n:.1f} + rollups {rollups_b / n:.1f} = "
            f"{(events_b + rollups_b) / n:.1f}; {rows:,} rollup rows ({rows / n:.2f} per event)"
        )
        real = clickhouse.rollup_event_sums
        for days in (30, 90):
            tr = TimeRange(end - timedelta(days=days), end, "custom", UTC)  # type: ignore[arg-type]
            query = event_query(time_range=tr)
            found = {}
            for name, reader in (("rollups", real), ("raw events", lambda *a: None)):
                clickhouse.rollup_event_sums = reader  # type: ignore[assignment]
                times = []
                with tenant_context(tenant):
                    for _ in range(7):
                        t0 = time.perf_counter()
                        answer = store.event_sums(tenant, query, by=("end_user",))
                        times.append((time.perf_counter() - t0) * 1000)
                found[name] = sorted((s.key, tuple(s.sums.items())) for s in answer)
                print(
                    f"event_sums by end user, {days} days, from {name}: median "
                    f"{statistics.median(times):.1f} ms ({len(answer)} groups)"
                )
            clickhouse.rollup_event_sums = real
            assert found["rollups"] == found["raw events"], "the two paths differ"
        load = os.getloadavg()
        print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
