"""Two costmon servers side by side, single events paced, rounds alternated: A/B of a setting.

    .venv/bin/python tests/bench/ab_single.py --database NAME --redis-db N
        [--a KEY=VALUE,...] [--b KEY=VALUE,...] [--rate 620] [--singles 2500] [--rounds 8]

A single paced phase's server p50 moves by 1-2 ms from one run to the next on a small shared
machine, more than most changes are worth; a comparison of two separate runs says little. Here
both servers run at once on the data set a `run.py --scale medium` run left (built first if
missing), with the environment given for each (`--a`, `--b`: comma-separated KEY=VALUE pairs on
top of this process's), and take turns: A then B, then B then A, and so on for `--rounds`, each
a paced phase of `--singles` fresh single events from 8 clients. Prints each round and each
side's medians: server p50 and p90, and the CPU a request of its gunicorn, of the database's
backends and of the whole machine. Both run this tree's code: a setting read at start-up (an
environment variable) is what it compares. Each round starts on a vacuumed database
(`harness.settle`). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.harness import (  # noqa: E402
    MEDIUM,
    bench_environment,
    free_port,
    settle,
    start_server,
)
from tests.bench.single_cpu import bodies, measured, snapshot  # noqa: E402

FIGURES = ("server p50 ms", "server p90 ms", "gunicorn", "postgres backends", "machine busy")


def environment(pairs: str) -> dict[str, str]:
    env = dict(os.environ)
    for pair in filter(None, pairs.split(",")):
        key, _, value = pair.partition("=")
        env[key] = value
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", required=True)
    parser.add_argument("--redis-db", type=int, required=True)
    parser.add_argument("--a", default="", help="A's environment: KEY=VALUE,...")
    parser.add_argument("--b", default="", help="B's environment: KEY=VALUE,...")
    parser.add_argument("--rate", type=float, default=620.0, help="requests/s, all clients")
    parser.add_argument("--singles", type=int, default=2500, help="requests a round")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    bench_environment(args.database, args.redis_db)

    from tests.bench.dataset import prepare_database, setup_data

    fresh = prepare_database(args.database, MEDIUM, reuse=True)
    import django

    django.setup()
    from costmon.web.management.launcher import ProcessGroup

    context = setup_data(MEDIUM, fresh=fresh, jobs=os.cpu_count() or 2, ratios=False)
    stream = 20_000 + (os.getpid() % 1000) * 100  # fresh event ids each run
    figures: dict[str, list[tuple[float, ...]]] = {"A": [], "B": []}
    with ProcessGroup(grace=30) as children:
        ports, masters = {}, {}
        for side, pairs in (("A", args.a), ("B", args.b)):
            ports[side] = free_port()
            start_server(
                children,
                environment(pairs),
                workers=None,
                port=ports[side],
                name=f"gunicorn-{side}",
            )
            masters[side] = children.children[-1].pid

        def phase(side: str, count: int, rate: float | None) -> dict[str, object]:
            nonlocal stream
            stream += 1
            return measured(
                side,
                ports[side],
                context.ingest_key,
                bodies(count, stream),
                8,
                lambda: snapshot(args.database, {"gunicorn": masters[side]}),
                rate,
            )

        for side in "AB":  # warm: connections, prepared statements, caches
            phase(side, 1000, None)
        for round_ in range(args.rounds):
            # This machine's PostgreSQL runs without autovacuum (CI's configuration): the dead
            # rows of earlier rounds and runs, left in place, slowed each round more than the
            # last (the same server's p50 from 5.0 to 6.6 ms over half an hour).
            settle(f"round {round_}")
            for side in "AB" if round_ % 2 == 0 else "BA":
                m = phase(side, args.singles, args.rate)
                cpu: dict[str, float] = m["cpu ms per request"]  # type: ignore[assignment]
                row = (
                    float(m["server p50 ms"]),  # type: ignore[arg-type]
                    float(m["server p90 ms"]),  # type: ignore[arg-type]
                    cpu.get("gunicorn", 0.0),
                    cpu.get("postgres backends", 0.0),
                    cpu.get("machine busy (everyone)", 0.0),
                )
                figures[side].append(row)
                shown = ", ".join(f"{n} {v:.2f}" for n, v in zip(FIGURES, row, strict=True))
                print(f"round {round_} {side}: {shown}, {m['rate']:.0f} requests/s", flush=True)
    for side, pairs in (("A", args.a), ("B", args.b)):
        medians = [statistics.median(r[i] for r in figures[side]) for i in range(len(FIGURES))]
        shown = ", ".join(f"{n} {v:.2f}" for n, v in zip(FIGURES, medians, strict=True))
        print(f"{side} ({pairs or 'as is'}), medians: {shown}")


if __name__ == "__main__":
    main()
