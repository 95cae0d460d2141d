"""The ClickHouse event store on a large set (100 million events by default): built inside
ClickHouse in minutes rather than seeded through the product for hours, then measured.

    .venv/bin/python tests/bench/ch_large.py [--events 100000000] [--data /work/ch-100m-data]
        [--url clickhouse://127.0.0.1:PORT/costmon_large] [--db costmon_h3_bench] [--redis 5]
        [--steps setup,generate,rollups,storage,measure]

1. setup: a clickhouse-server with its data in `--data` (kept afterwards: a later run with the
   same folder finds the events there), or the running one of `--url`; a PostgreSQL bench
   database (`--db`, kept when it holds the same set) seeded by the product's `seed_demo`
   through the ClickHouse store with a few thousand events per tenant (20 tenants, 300 end
   users each, 90 days), and the benchmark's own tenant and keys (`tests.bench.dataset`).
2. generate: the seeded events are the template (`ch_large_template`): every generated event
   copies one template event's tenant, dictionary ids, tokens, cost and flags (so its cost is
   the product's own, priced from the catalog in nano-dollars) and takes the time of another
   (its hour, then a random second and microsecond within it: the demo's busy hours, weekdays
   and spike day, over every hour of the 90 days) and an event id of its own (32 random hex
   characters). `INSERT INTO usage_events SELECT ... FROM numbers(...)` in chunks (ClickHouse
   18.16's SQL); each finished chunk is noted in `ch_large_chunks`, so a stopped run resumes.
3. rollups: the store's hourly rollups (`usage_rollups_hourly`) summed from the events with the
   store's own sums (`chrows.SUM_SQL`; what `clickhouse_rollups_rebuild` inserts into an empty
   table, at a million events a second instead of a day at a time), then PostgreSQL's rollups
   by model and by tag (what the dashboard reads) from ClickHouse's sums, by COPY.
4. storage, measure: `tests/bench/ch_large_measure.py` (bytes per event after merging every
   partition, a step of its own as it takes minutes at 100 million; reads; ingest over HTTP).

Each step is timed with the disk it took; everything goes to stderr and the table to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.harness import Scale, say  # noqa: E402

DATABASE = "costmon_large"  # the ClickHouse database
TEMPLATE = "ch_large_template"
CHUNKS = "ch_large_chunks"
# What a generated event has of its own; it copies every other column from its template event.
OWN = {
    "event_id": "lower(hex(MD5(concat('ch-large-', toString(g)))))",
    "occurred_at": "toDateTime(least(hr + cityHash64(g, 3) % 3600, {now}))",
    "micros": "toUInt32(cityHash64(g, 4) % 1000000)",
}


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000_000, help="events in the store")
    parser.add_argument("--template", type=int, default=5_000, help="seeded events per tenant")
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--users", type=int, default=300, help="end users per tenant")
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--chunk", type=int, default=5_000_000, help="events per INSERT")
    parser.add_argument("--data", default="/work/ch-100m-data", help="the server's folder")
    parser.add_argument("--url", help="a running server's clickhouse://host:port/db instead")
    parser.add_argument("--compression", default="", help="the server's parts: zstd (or lz4)")
    parser.add_argument("--memory", type=int, default=8_000_000_000, help="bytes per query")
    parser.add_argument("--db", default="costmon_h3_bench", help="PostgreSQL bench database")
    parser.add_argument("--redis", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2, help="seed_demo's processes")
    parser.add_argument("--steps", default="setup,generate,rollups,storage,measure")
    parser.add_argument("--batches", type=int, default=100, help="1,000-event ingest requests")
    parser.add_argument("--singles", type=int, default=2_000, help="single-event requests")
    parser.add_argument("--views", type=int, default=5, help="repeats of each read")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--single-clients", type=int, default=8)
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: its config's)")
    parser.add_argument("--threads", type=int)
    return parser.parse_args(argv)


def scale_of(args: argparse.Namespace) -> Scale:
    return Scale(
        events=args.template,
        tenants=args.tenants,
        users=args.users,
        days=args.days,
        batches=args.batches,
        singles=args.singles,
        checks=0,
        page_views=args.views,
    )


def environment(args: argparse.Namespace, url: str) -> None:
    """The product's settings for this run (before Django starts; `seed_demo` inherits them)."""
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.db}"
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:6379/{args.redis}"
    os.environ.setdefault("DATABASE_ROLE", "costmon_app")
    os.environ.setdefault("SECRET_KEY", "ch-large")
    os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost")
    os.environ["DJANGO_SETTINGS_MODULE"] = "costmon.settings"
    os.environ["COSTMON_EVENT_STORE_URL"] = url
    os.environ.pop("COSTMON_CLICKHOUSE_SHARDS", None)


def server_start(args: argparse.Namespace) -> tuple[str, Any]:
    """The store's URL and the server started (None with `--url`)."""
    if args.url:
        return args.url, None
    from tests import clickhouse

    if clickhouse.binary() is None:
        raise SystemExit("clickhouse-server is not installed (apt-get install clickhouse-server)")
    server = clickhouse.Server(
        Path(args.data), memory=args.memory, marks=args.memory // 8, compression=args.compression
    )
    say(f"clickhouse-server {server.process.pid} on port {server.port}, data in {args.data}")
    return f"clickhouse://127.0.0.1:{server.port}/{DATABASE}", server


def folder_bytes(folder: str) -> int:
    """Bytes a folder's files take on disk (its blocks, as `du`)."""
    total = 0
    for path, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(path, name)).st_blocks * 512
    return total


class Steps:
    """Time of each step and what the data folder grew by, for the report."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.taken: list[tuple[str, float, int]] = []

    def disk(self) -> int:
        return folder_bytes(self.folder)

    def run(self, name: str, action: Any, *a: Any, **kw: Any) -> Any:
        started, used = time.monotonic(), self.disk()
        say(f"step {name}: starting (load {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
        result = action(*a, **kw)
        seconds, grown = time.monotonic() - started, self.disk() - used
        self.taken.append((name, seconds, grown))
        say(f"step {name}: {seconds:,.0f} s, disk {grown / 2**30:+.2f} GiB")
        return result


def setup(args: argparse.Namespace) -> Any:
    """The bench database seeded through the product, the store's schema; the bench context."""
    import django

    from tests.bench.dataset import prepare_database, setup_data

    fresh = prepare_database(args.db, scale_of(args), reuse=True)
    django.setup()
    store().create_schema()
    if fresh:  # a new PostgreSQL set: the events of an earlier one belong to other ids
        for table in ("usage_events", "usage_rollups_hourly"):
            store().connections.execute(0, f"TRUNCATE TABLE {table}")
        for table in (TEMPLATE, CHUNKS):
            store().connections.execute(0, f"DROP TABLE IF EXISTS {table}")
    return setup_data(scale_of(args), fresh=fresh, jobs=args.jobs, ratios=False)


def store() -> Any:
    from tests.bench.clickhouse_pass import _store

    return _store()


def execute(sql: str, params: Any = None, **settings: Any) -> list[tuple[Any, ...]]:
    connections = store().connections
    if settings:
        client = connections._client(0)
        return client.execute(sql, params, settings=settings)  # type: ignore[no-any-return]
    return connections.execute(0, sql, params)  # type: ignore[no-any-return]


def template_make() -> int:
    """The template: the seeded events, numbered from 0 (made once, kept for a resumed run)."""
    from usage.eventstore.chrows import COLUMNS, TABLE

    execute(
        f"CREATE TABLE IF NOT EXISTS {TEMPLATE} ENGINE = Log AS SELECT "
        f"rowNumberInAllBlocks() AS n, {', '.join(COLUMNS)} FROM {TABLE} WHERE 0"
    )
    execute(f"CREATE TABLE IF NOT EXISTS {CHUNKS} (chunk UInt64, rows UInt64) ENGINE = Log")
    ((held,),) = execute(f"SELECT count() FROM {TEMPLATE}")
    if not held:
        execute("OPTIMIZE TABLE usage_events_buffer")
        execute(
            f"INSERT INTO {TEMPLATE} SELECT rowNumberInAllBlocks() AS n, {', '.join(COLUMNS)} "
            f"FROM (SELECT {', '.join(COLUMNS)} FROM {TABLE} ORDER BY tenant_id, occurred_at)"
        )
        ((held,),) = execute(f"SELECT count() FROM {TEMPLATE}")
    return int(held)


def generate_sql(first: int, count: int, template: int, now: int) -> str:
    """The INSERT of generated events `first` to `first + count - 1`."""
    from usage.eventstore.chrows import COLUMNS, META_COLUMNS, TABLE

    copied = ", ".join(c for c in COLUMNS if c not in OWN)
    values = ", ".join(OWN.get(c, c).format(now=int(now)) for c in COLUMNS)
    return (
        f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}, {', '.join(c for c, _, _ in META_COLUMNS)}) "
        f"SELECT {values}, 0, 0 FROM ("
        f"SELECT * FROM (SELECT number AS g, toUInt64(cityHash64(number, 1) % {template}) AS n, "
        f"toUInt64(cityHash64(number, 2) % {template}) AS tn FROM numbers({int(first)}, {int(count)})) "
        f"ANY LEFT JOIN (SELECT n, {copied} FROM {TEMPLATE}) USING n"
        f") ANY LEFT JOIN (SELECT n AS tn, toUInt32(toStartOfHour(occurred_at)) AS hr "
        f"FROM {TEMPLATE}) USING tn"
    )


def generate(args: argparse.Namespace) -> int:
    """Generate up to `--events` in the store, a chunk at a time; events held at the end."""
    template = template_make()
    if not template:
        raise SystemExit(
            f"The store holds no seeded events to copy: drop the PostgreSQL database {args.db} "
            "(the set is kept there and in the data folder together) and run again."
        )
    wanted = max(args.events - template, 0)
    ((now,),) = execute(f"SELECT toUInt32(max(occurred_at)) FROM {TEMPLATE}")
    done = {int(c) for (c,) in execute(f"SELECT chunk FROM {CHUNKS}")}
    chunks = range(0, -(-wanted // args.chunk))
    say(f"template {template:,} events; generating {wanted:,} in {len(chunks)} chunks")
    started = time.monotonic()
    for chunk in chunks:
        if chunk in done:
            continue
        first = chunk * args.chunk
        count = min(args.chunk, wanted - first)
        execute(
            generate_sql(first, count, template, now),
            min_insert_block_size_rows=count,
            min_insert_block_size_bytes=2**31,
            max_threads=2,
        )
        execute(f"INSERT INTO {CHUNKS} VALUES", [(chunk, count)])
        elapsed = time.monotonic() - started
        made = first + count
        say(
            f"chunk {chunk + 1}/{len(chunks)}: {made:,} events generated, {elapsed:,.0f} s, "
            f"{made / max(elapsed, 1e-9):,.0f} events/s, disk free "
            f"{shutil.disk_usage(args.data).free / 2**30:,.1f} GiB, load {os.getloadavg()[0]:.2f}"
        )
    ((held,),) = execute("SELECT count() FROM usage_events")
    return int(held)


def main() -> None:
    args = arguments()
    steps = set(args.steps.split(","))
    Path(args.data).mkdir(parents=True, exist_ok=True)
    url, server = server_start(args)
    environment(args, url)
    timer = Steps(args.data)
    try:
        context = timer.run("setup", setup, args)
        if "generate" in steps:
            held = timer.run("generate", generate, args)
            say(f"the store holds {held:,} events")
        if "rollups" in steps:
            from tests.bench.ch_large_rollups import rollups_fill

            timer.run("rollups", rollups_fill)
        if "measure" in steps:
            from tests.bench.ch_large_measure import measure, render

            rows = timer.run("measure", measure, args, context)
            print(render(rows, timer.taken, args))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
