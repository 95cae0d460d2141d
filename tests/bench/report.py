"""The benchmark's report: the table and the machine (tests/bench/run.py)."""

from __future__ import annotations

import argparse
import json
import os
import platform
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from tests.bench.harness import Context, Row, Scale, costmon_workers, naive_workers


def machine() -> list[tuple[str, str]]:
    import django
    import gunicorn
    import psycopg
    import redis
    from django.conf import settings
    from django.db import connection

    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg = cursor.fetchone()[0]
    redis_version = redis.Redis.from_url(settings.REDIS_URL).info()["redis_version"]
    return [
        ("CPU", f"{cpu}, {os.cpu_count()} cores"),
        ("memory", f"{mem_kib / 2**20:.1f} GiB"),
        ("load average at the end", " ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("OS", platform.platform()),
        ("PostgreSQL", f"{pg} (same machine)"),
        ("Redis", f"{redis_version} (same machine)"),
        ("Python", platform.python_version()),
        (
            "Django / psycopg / gunicorn",
            f"{django.get_version()} / {psycopg.__version__} / {gunicorn.__version__}",
        ),
    ]


def render(rows: list[Row], context: Context, scale: Scale, args: argparse.Namespace) -> str:
    width = max(len(r.what) for r in rows)
    mwidth = max(len(r.measured) for r in rows)
    twidth = max(len(r.target) for r in rows)
    lines = [
        f"# costmon benchmark{' (smoke run: the figures mean nothing)' if args.smoke else ''}"
        + (f" ({args.scale} scale)" if args.scale == "medium" else "")
        + (", raw events in ClickHouse" if args.event_store == "clickhouse" else ""),
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Data set: {scale.tenants} tenants x "
        f"{scale.events:,} events over {scale.days} days, {scale.users:,} end users each"
        + (
            f" (seeded in {context.seed_seconds:,.0f} s)"
            if context.seed_seconds is not None
            else " (reused)"
        )
        + f". gunicorn: {costmon_workers(args.workers)} workers (costmon.gunicorn_conf; the naive "
        f"endpoint: {naive_workers()} sync workers); "
        f"{args.clients} client processes ({args.single_clients} for single events).",
        "",
        f"| {'what':<{width}} | {'measured':<{mwidth}} | {'target':<{twidth}} | result |",
        f"|{'-' * (width + 2)}|{'-' * (mwidth + 2)}|{'-' * (twidth + 2)}|--------|",
    ]
    lines += [
        f"| {r.what:<{width}} | {r.measured:<{mwidth}} | {r.target:<{twidth}} | {r.verdict:<6} |"
        for r in rows
    ]
    lines += ["", "Machine:", ""]
    lines += [f"- {k}: {v}" for k, v in machine()]
    return "\n".join(lines) + "\n"


@dataclass
class OtherPass:
    """The ClickHouse pass's results, as its process hands them back (JSON)."""

    rows: list[Row]
    events_total: int
    seed_seconds: float | None
    version: str
    load: str  # the load average when it ended

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "rows": [asdict(r) for r in self.rows]})

    @classmethod
    def from_json(cls, text: str) -> OtherPass:
        data = json.loads(text)
        return cls(**{**data, "rows": [Row(**r) for r in data["rows"]]})


def side_by_side(
    pg: list[Row], ch: list[Row], *, events: int
) -> list[tuple[str, str, str, str, str]]:
    """(what, PostgreSQL, ClickHouse, target, result) for each figure: the PostgreSQL pass's
    rows in order, each beside the ClickHouse row of the same key ("" where that pass did not
    measure it); ClickHouse's rows without a PostgreSQL twin at the end."""
    by_key = {r.key or r.what: r for r in ch}
    out = []
    for r in pg:
        twin = by_key.pop(r.key or r.what, None)
        if twin is None:
            out.append((r.what, r.measured, "", r.target, r.verdict))
            continue
        target = r.target if twin.target == r.target else f"{r.target} / {twin.target}"
        verdict = r.verdict if twin.verdict == r.verdict else f"{r.verdict} / {twin.verdict}"
        what = r.what if r.key != "storage" else f"storage per raw event ({events:,} events)"
        out.append((what, r.measured, twin.measured, target, verdict))
    out += [(r.what, "", r.measured, r.target, r.verdict) for r in by_key.values()]
    return out


def render_both(
    rows: list[Row],
    other: OtherPass,
    context: Context,
    scale: Scale,
    args: argparse.Namespace,
    *,
    load: str,
) -> str:
    """One table, a column for each store; `load` is the load average at the end of the
    PostgreSQL pass (`other` holds the ClickHouse pass's)."""
    table = [("what", "PostgreSQL", "ClickHouse", "target", "result")]
    table += side_by_side(rows, other.rows, events=other.events_total)
    widths = [max(len(line[i]) for line in table) for i in range(5)]
    seeded = (
        f"PostgreSQL seeded with COPY in {context.seed_seconds:,.0f} s"
        if context.seed_seconds is not None
        else "PostgreSQL's reused"
    )
    if other.seed_seconds is not None:
        seeded += (
            f"; ClickHouse through the ingest service in 1,000-event batches in "
            f"{other.seed_seconds:,.0f} s"
        )
    lines = [
        f"# costmon benchmark, PostgreSQL and ClickHouse event stores"
        f"{' (smoke run: the figures mean nothing)' if args.smoke else ''}"
        + (f" ({args.scale} scale)" if args.scale == "medium" else ""),
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Data set, in each store: {scale.tenants} "
        f"tenants x {scale.events:,} events over {scale.days} days, {scale.users:,} end users "
        f"each ({seeded}). The two passes run one after the other, each with its own scratch "
        f"database and gunicorn ({costmon_workers(args.workers)} workers, costmon.gunicorn_conf; "
        f"the naive endpoint: {naive_workers()} sync workers); {args.clients} client processes "
        f"({args.single_clients} for single events). ClickHouse {other.version}: a throwaway "
        "server on this machine, which also keeps the hourly rollups by every dimension; the "
        "rollups by model and by tag, counters and tenants stay in PostgreSQL and Redis. "
        "Storage after each ClickHouse partition is merged (OPTIMIZE ... FINAL): active parts' "
        "bytes on disk per event.",
        "",
        "| " + " | ".join(c.ljust(w) for c, w in zip(table[0], widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in table[1:]
    ]
    lines += ["", "Machine:", ""]
    lines += [f"- {k}: {v}" for k, v in machine()]
    lines.append(
        f"- load average at the end of each pass: PostgreSQL {load}; ClickHouse {other.load}"
    )
    return "\n".join(lines) + "\n"
