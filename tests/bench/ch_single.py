"""Single-event ingest in process, PostgreSQL against ClickHouse: one event a call of the ingest
service (`usage_record_batch`), one process, sequential, as a single-event API request does
without HTTP.

    .venv/bin/python tests/bench/ch_single.py [--events 600] [--size 1] [--buffer] [--db NAME]

Uses a scratch PostgreSQL database (`--db`, created afresh) and a Redis database, and starts its
own clickhouse-server in a temporary folder. Prints events/s for each store, the parts the
ClickHouse table got (written, and active after merges), and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.clickhouse_store import bench_environment  # noqa: E402


def server_cpu(pid: int) -> float:
    """Seconds of CPU the process has used (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=600)
    parser.add_argument("--db", default="costmon_chsingle")
    parser.add_argument("--redis", type=int, default=9)
    parser.add_argument("--profile", action="store_true", help="time ClickHouse statements")
    parser.add_argument("--size", type=int, default=1, help="events per call (1: single events)")
    parser.add_argument(
        "--buffer", action="store_true", help="small inserts through the Buffer table"
    )
    args = parser.parse_args()
    os.environ["COSTMON_CLICKHOUSE_BUFFER"] = "1" if args.buffer else "0"
    bench_environment(args.db, args.redis)

    import django

    django.setup()
    import redis
    from django.conf import settings
    from django.core.management import call_command

    from costmon.core.services import tenant_create
    from costmon.core.tenancy import unscoped
    from tests.clickhouse import Server, binary
    from usage import demo
    from usage.eventstore import current
    from usage.prices import prices_sync, read_price_file
    from usage.services import usage_record_batch

    timings: dict[str, list[float]] = {}
    if args.profile:
        from usage.eventstore.chserver import Connections

        real = Connections.execute

        def execute(self, index, sql, params=None, **kw):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            try:
                return real(self, index, sql, params, **kw)
            finally:
                kind = " ".join(sql.split()[:2]) + (" buffer" if "_buffer" in sql else "")
                timings.setdefault(kind, []).append(time.perf_counter() - started)

        Connections.execute = execute  # type: ignore[method-assign]
    if binary() is None:
        sys.exit("clickhouse-server is not installed (apt-get install clickhouse-server)")
    call_command("migrate", verbosity=0)
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    server = Server(Path(tempfile.mkdtemp(prefix="costmon-chsingle-")))
    try:
        with unscoped():
            prices_sync(price_list=read_price_file(str(ROOT / "usage" / "data" / "prices.json")))
        events = list(demo.demo_events(count=args.events, days=1, end=datetime.now(UTC), seed=3))
        calls = [events[i : i + args.size] for i in range(0, len(events), args.size)]
        print(f"{len(events)} events, {args.size} a call, one process, sequential")
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
                tenant = tenant_create(slug=f"single-{store.name}")
                usage_record_batch(tenant=tenant, events=[replace(events[0], event_id="warm")])
                cpu = server_cpu(server.process.pid)
                started = time.perf_counter()
                for call in calls:
                    usage_record_batch(tenant=tenant, events=call)
                rate = len(events) / (time.perf_counter() - started)
                # The server's CPU per event, over the run and the 3 s after (merges, flushes).
                time.sleep(3)
                server_ms = (server_cpu(server.process.pid) - cpu) * 1000 / len(events)
            parts = ""
            if url:
                # Parts written (level 0: inserts and buffer flushes; merged-away ones linger
                # 8 minutes as inactive parts), the buffer flushed first where there is one.
                execute = store.connections.execute  # type: ignore[attr-defined]
                tables = {t for (t,) in execute(0, "SHOW TABLES")}
                if "usage_events_buffer" in tables:
                    execute(0, "OPTIMIZE TABLE usage_events_buffer")
                ((written, active),) = execute(
                    0,
                    "SELECT countIf(level = 0), countIf(active) FROM system.parts "
                    "WHERE database = 'costmon_bench' AND table = 'usage_events'",
                )
                parts = (
                    f", {written} parts written, {active} active after, "
                    f"clickhouse-server CPU {server_ms:.2f} ms/event"
                )
            load = os.getloadavg()
            print(f"{name}: {rate:,.1f} events/s{parts} (load {load[0]:.2f} {load[1]:.2f})")
            for kind, spent in sorted(timings.items()):
                print(f"  {kind}: {len(spent)} x {1000 * sum(spent) / len(spent):.2f} ms")
            timings.clear()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
