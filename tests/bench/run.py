"""The benchmark: costmon as in production, driven over HTTP, against the targets of issue 6.

    .venv/bin/python tests/bench/run.py            # the full run: 10 million events, ~25 min
    .venv/bin/python tests/bench/run.py --smoke    # a small run that checks it all still works
    .venv/bin/python tests/bench/run.py --scale medium  # 1 tenant x 200,000 events, ~3 min
    .venv/bin/python tests/bench/run.py --scale medium --event-store both  # PostgreSQL and
                                                   # ClickHouse side by side, ~8 min
    .venv/bin/python tests/bench/run.py --scale medium --reuse --only batch [--batches 300]
                                                   # the batch-ingest phase alone (PostgreSQL)

It builds a data set in a scratch PostgreSQL database (`costmon_bench`, dropped and made again;
`--reuse` keeps one already built with the same size), starts gunicorn with several workers on
a free port, drives it with concurrent HTTP clients in separate processes, and prints one table:
each figure, its target, and pass or short. The table and the machine's details are also written
to `var/bench/bench-<time>.md` (and `var/bench/latest.md`).

Server time is read from each response's `Server-Timing` header (Django's own time, without the
network and the client); request latency and throughput are measured by the clients.

The same run also serves a naive DRF endpoint (tests/bench/naive: a stock ModelSerializer view, one
insert per event, stock middleware) with its own gunicorn of the same worker count, and sends it
the same single events and 1,000-event batches: the table gives costmon's rates beside it.

The same run also measures, in this process, the same 1,000-event batches through a naive
baseline (one ORM insert per event, as a stock DRF ModelSerializer view does) and the raw
PostgreSQL COPY of the same rows, for ratios that hold on a noisy machine.

`--event-store clickhouse` keeps the raw events in ClickHouse instead (tests/bench/
clickhouse_pass.py): a throwaway clickhouse-server started by the run, a scratch database
`<--database>` for what stays in PostgreSQL, always seeded afresh (`seed_demo` goes through the
ingest service in 1,000-event batches with that store), and only the figures that touch raw
events: bytes per event (the table's parts after OPTIMIZE ... FINAL), batch and single-event
ingest over HTTP, the dashboard overview and the metrics API. `--event-store both` runs the
PostgreSQL pass as usual, then the ClickHouse pass in a process of its own on `<--database>_ch`,
and prints one table with a column for each store.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from costmon.web.management.launcher import ChildExited, ProcessGroup, StopRequested  # noqa: E402
from tests.bench.clickhouse_pass import clickhouse_pass, clickhouse_server  # noqa: E402
from tests.bench.dataset import drop_database, prepare_database, setup_data  # noqa: E402
from tests.bench.harness import (  # noqa: E402
    PYTHON,
    SCALES,
    Row,
    Scale,
    costmon_workers,
    free_port,
    naive_workers,
    say,
    start_costmon,
    start_server,
)
from tests.bench.phases import batch_rows, http_rows  # noqa: E402
from tests.bench.ratios import ratio_rows  # noqa: E402
from tests.bench.report import OtherPass, render, render_both  # noqa: E402
from tests.bench.storage import storage_rows  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a small, quick run (CI)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="full", help="data-set size")
    parser.add_argument("--database", default="costmon_bench", help="scratch database name")
    parser.add_argument("--redis-db", type=int, default=14, help="scratch Redis database")
    parser.add_argument("--reuse", action="store_true", help="keep a data set of the same size")
    parser.add_argument(
        "--workers", type=int, default=None, help="costmon's gunicorn workers (default: its config)"
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent client processes")
    parser.add_argument(
        "--single-clients", type=int, default=8, help="client processes sending single events"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="threads per costmon worker (default: its config)"
    )
    parser.add_argument(
        "--no-rule-rounds", action="store_true", help="skip the rule rounds (ingest comparisons)"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="seeding processes")
    parser.add_argument("--out", default=str(ROOT / "var" / "bench"))
    parser.add_argument(
        "--event-store",
        choices=("postgres", "clickhouse", "both"),
        default="postgres",
        help="where the raw events are: both runs the two passes and prints them side by side",
    )
    parser.add_argument(
        "--only",
        choices=("batch",),
        help="run one phase alone (PostgreSQL): batch ingest over HTTP, without the naive "
        "endpoint, the in-process ratios and the rule rounds",
    )
    parser.add_argument(
        "--batches", type=int, default=None, help="1,000-event batches of the batch phase"
    )
    parser.add_argument("--handback", help=argparse.SUPPRESS)  # the `both` mode's own use
    args = parser.parse_args(argv)
    if args.smoke:
        args.scale = "smoke"
    scale = SCALES[args.scale]
    if args.batches is not None:
        scale = replace(scale, batches=args.batches)
    if args.only and args.event_store != "postgres":
        parser.error("--only runs with the events in PostgreSQL")

    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.database}"
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:6379/{args.redis_db}"
    os.environ["DATABASE_ROLE"] = "costmon_app"  # row-level security on, as in production
    os.environ.setdefault("SECRET_KEY", "benchmark-only")
    os.environ["DJANGO_SETTINGS_MODULE"] = "costmon.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["COSTMON_CATALOG_TTL_SECONDS"] = "300"

    os.environ.pop("COSTMON_EVENT_STORE_URL", None)  # the PostgreSQL pass: the default store

    try:
        if args.event_store == "clickhouse":
            with clickhouse_server() as url:
                os.environ["COSTMON_EVENT_STORE_URL"] = url
                rows, context, version = clickhouse_pass(args, scale, url)
        else:
            rows, context = postgres_pass(args, scale)
    except StopRequested as stop:
        say(f"stopped: {stop.name} received; gunicorn is stopped")
        return 128 + stop.signum
    except ChildExited as exited:
        say(f"stopped: {exited}")
        return 1
    if args.event_store == "clickhouse":
        other = OtherPass(
            rows=rows,
            events_total=context.events_total,
            seed_seconds=context.seed_seconds,
            version=version,
            load=" ".join(f"{x:.2f}" for x in os.getloadavg()),
        )
        if args.handback:  # run by the `both` mode's PostgreSQL pass: it writes the report
            Path(args.handback).write_text(other.to_json())
            drop_smoke_databases(args)
            return 0
        report = render(rows, context, scale, args)
    else:
        sections = "" if args.no_rule_rounds or args.only else rule_rounds(args, scale)
        if args.event_store == "both":
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            other = run_clickhouse_pass(args)
            report = render_both(rows, other, context, scale, args, load=load)
        else:
            report = render(rows, context, scale, args)
        report += sections
    sys.stdout.write(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = "" if args.scale == "full" else f"-{args.scale}"
    suffix += "" if args.event_store == "postgres" else f"-{args.event_store}"
    # A run of one phase is not the latest whole table.
    names = [f"bench-{stamp}{suffix}-{args.only}.md"] if args.only else []
    for name in names or (f"bench-{stamp}{suffix}.md", "latest.md"):
        (out / name).write_text(report)
    say(f"written to {out / (names or ['latest.md'])[0]}")
    drop_smoke_databases(args)
    return 0


def drop_smoke_databases(args: argparse.Namespace) -> None:
    if args.scale != "smoke":
        return
    drop_database(args.database)
    if args.event_store != "clickhouse":
        drop_database(f"{args.database}_rules")


def postgres_pass(args: argparse.Namespace, scale: Scale) -> tuple[list[Row], Any]:
    """Every figure with the events in PostgreSQL, the naive endpoint's beside them."""
    fresh = prepare_database(args.database, scale, reuse=args.reuse)
    import django

    django.setup()
    rows: list[Row] = []
    context = setup_data(scale, fresh=fresh, jobs=args.jobs, ratios=not args.only)
    if args.only == "batch":
        port = free_port()
        say(f"starting gunicorn: {costmon_workers(args.workers)} workers on port {port}")
        with ProcessGroup(grace=30) as children:
            start_costmon(children, args, port)
            rows += batch_rows(context, scale, port=port, clients=args.clients, naive_rate=None)
        return rows, context
    rows += storage_rows(context)
    rows += ratio_rows(context)
    port, naive_port = free_port(), free_port()
    say(
        f"starting gunicorn: {costmon_workers(args.workers)} workers on port {port}, naive "
        f"({naive_workers()} sync workers) on {naive_port}"
    )
    # gunicorn, master and workers, stops with this run however it ends (an error, Ctrl+C,
    # SIGTERM or SIGHUP): it must not keep the port and the scratch database busy.
    with ProcessGroup(grace=30) as children:
        start_costmon(children, args, port)
        naive_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.bench.naive.settings"}
        start_server(
            children,
            naive_env,
            workers=naive_workers(),
            port=naive_port,
            app="tests.bench.naive.wsgi",
            name="gunicorn-naive",
            # A 1,000-event batch takes it seconds, more on a busy machine.
            config=("--worker-class", "sync", "--timeout", "300"),
        )
        rows += http_rows(
            context,
            scale,
            port=port,
            naive_port=naive_port,
            clients=args.clients,
            single_clients=args.single_clients,
        )
    return rows, context


def run_clickhouse_pass(args: argparse.Namespace) -> OtherPass:
    """The ClickHouse pass in a process of its own (Django runs on one database a process), on
    the scratch database `<--database>_ch`; its rows come back through a file."""
    from django.db import connections

    connections.close_all()
    with tempfile.TemporaryDirectory(prefix="costmon-bench-") as folder:
        handback = Path(folder) / "clickhouse.json"
        options = [
            ("--scale", args.scale),
            ("--database", f"{args.database}_ch"),
            ("--redis-db", args.redis_db),
            ("--clients", args.clients),
            ("--single-clients", args.single_clients),
            ("--jobs", args.jobs),
            ("--out", args.out),
        ]
        if args.threads is not None:
            options.append(("--threads", args.threads))
        if args.workers is not None:
            options.append(("--workers", args.workers))
        say("the ClickHouse pass")
        done = subprocess.run(
            [
                PYTHON,
                str(Path(__file__).resolve()),
                "--event-store",
                "clickhouse",
                "--handback",
                str(handback),
                *(str(x) for pair in options for x in pair),
            ],
            cwd=ROOT,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"the ClickHouse pass failed (exit {done.returncode})")
        return OtherPass.from_json(handback.read_text())


def rule_rounds(args: argparse.Namespace, scale: Scale) -> str:
    """One round of the every-minute alert rules through two Celery workers
    (tests/bench/rules_round.py): for the data set's tenants, each given seven rules and two
    budgets, and for `scale.rule_tenants` small tenants in a database of their own."""
    runs = (
        ("the data set's tenants", ["--database", args.database, "--existing"]),
        (
            f"{scale.rule_tenants:,} small tenants",
            [
                "--database",
                f"{args.database}_rules",
                "--tenants",
                str(scale.rule_tenants),
                "--reuse",
            ],
        ),
    )
    sections = []
    for what, options in runs:
        say(f"rule rounds: {what}")
        done = subprocess.run(
            [
                PYTHON,
                str(ROOT / "tests" / "bench" / "rules_round.py"),
                "--no-serial",
                "--redis-url",
                f"redis://127.0.0.1:6379/{args.redis_db}",
                *options,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"the rule rounds for {what} failed (exit {done.returncode})")
        sections.append(done.stdout)
    return "\n" + "\n".join(sections)


if __name__ == "__main__":
    raise SystemExit(main())
