"""Where the machine's CPU goes per single-event request, naive endpoint beside costmon.

    .venv/bin/python tests/bench/single_cpu.py --database NAME --redis-db N [--singles 3000]
        [--clients 8] [--workers N] [--threads T] [--rounds 1] [--only costmon] [--rate R]

Runs only the single-event phases of `tests/bench/run.py` (the same servers, clients, payloads
and bench tenant) on a data set that a `run.py --scale medium` run left in the database (built
first if missing, which takes minutes). Around each phase it reads the CPU time (user + system,
from /proc) of each group of processes: the endpoint's gunicorn workers, the PostgreSQL backends
of the database, PostgreSQL's other processes (WAL writer, checkpointer: shared with anything
else on the machine), redis-server (shared likewise) and the client processes; and the whole
machine's busy time (/proc/stat, everyone's). Prints, per phase, the rate, the server p50
and p90 and each group's milliseconds of CPU per request. `--rate` paces the clients (all of
them together) as run.py's paced phase does; without it they send as fast as answered.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.harness import (  # noqa: E402
    MEDIUM,
    bench_environment,
    drive,
    expect_ok,
    free_port,
    naive_workers,
    pct,
    say,
    start_costmon,
    start_server,
)

_TICK = os.sysconf("SC_CLK_TCK")


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _cpu_seconds(pid: str) -> tuple[int, float]:
    """(parent pid, user + system seconds) of a process; (0, 0.0) if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0.0
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def snapshot(database: str, masters: dict[str, int]) -> dict[str, tuple[str, float]]:
    """CPU seconds so far of each process of the groups (see the module's docstring), by pid,
    with its group; and the machine's and the clients' totals."""
    seen: dict[str, tuple[str, float]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        ppid, seconds = _cpu_seconds(pid)
        cmd = _cmdline(pid)
        group = next((name for name, m in masters.items() if ppid == m or int(pid) == m), None)
        if group is None:
            if cmd.startswith("postgres: ") and f" {database} " in cmd:
                group = "postgres backends"
            elif cmd.startswith("postgres") or "/postgres " in cmd:
                group = "postgres other (shared)"
            elif "redis-server" in cmd:
                group = "redis-server (shared)"
            else:
                continue
        seen[pid] = (group, seconds)
    with open("/proc/stat") as stat:
        ticks = [int(x) for x in stat.readline().split()[1:]]
    seen["machine"] = ("machine busy (everyone)", (sum(ticks) - ticks[3] - ticks[4]) / _TICK)
    times = os.times()
    seen["clients"] = ("clients", times.children_user + times.children_system)
    return seen


def spent(
    before: dict[str, tuple[str, float]], after: dict[str, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds each group spent between two snapshots: a process that started meanwhile
    counts whole; one that ended meanwhile is not seen (the naive endpoint's backends, one a
    request, end with it: its PostgreSQL figure is low)."""
    groups: dict[str, float] = {}
    for pid, (group, seconds) in after.items():
        old = before.get(pid)
        groups[group] = groups.get(group, 0.0) + seconds - (old[1] if old else 0.0)
    return groups


def bodies(count: int, stream: int) -> list[bytes]:
    """Single events shaped as run.py's; a stream of their own (fresh event ids)."""
    from tests.bench.phases import as_payload, fresh_batches

    return [json.dumps(as_payload(e)).encode() for e in fresh_batches(count, 1, stream=stream)[0]]


def measured(
    name: str,
    port: int,
    key: str,
    bodies: list[bytes],
    clients: int,
    snap: Callable[[], dict[str, tuple[str, float]]],
    rate: float | None = None,
) -> dict[str, object]:
    headers = {"Content-Type": "application/json"}
    headers["Authorization"] = f"Bearer {key}"
    say(f"{name}: {len(bodies)} single events, {clients} clients")
    before = snap()
    s = drive(
        port,
        method="POST",
        path="/api/v1/usage/",
        headers=headers,
        bodies=bodies,
        clients=clients,
        rate=rate,
    )
    after = snap()
    expect_ok(name, s)
    n = len(bodies)
    cpu = {g: seconds * 1000 / n for g, seconds in spent(before, after).items()}
    return {
        "phase": name,
        "rate": n / s.elapsed,
        "client p50 ms": pct(s.latencies_ms, 50),
        "server p50 ms": pct(s.server_ms, 50) if s.server_ms else None,
        "server p90 ms": pct(s.server_ms, 90) if s.server_ms else None,
        "cpu ms per request": {g: round(v, 3) for g, v in sorted(cpu.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", required=True)
    parser.add_argument("--redis-db", type=int, required=True)
    parser.add_argument("--singles", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="costmon's (default: its config)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=1, help="naive and costmon, alternately")
    parser.add_argument("--only", choices=("naive", "costmon"), default=None)
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="requests/s all clients together (default: full speed)",
    )
    args = parser.parse_args()
    bench_environment(args.database, args.redis_db)

    from tests.bench.dataset import prepare_database, setup_data

    fresh = prepare_database(args.database, MEDIUM, reuse=True)
    import django

    django.setup()
    from costmon.web.management.launcher import ProcessGroup

    context = setup_data(MEDIUM, fresh=fresh, jobs=os.cpu_count() or 2, ratios=False)
    port, naive_port = free_port(), free_port()
    results = []
    with ProcessGroup(grace=30) as children:
        masters: dict[str, int] = {}
        if args.only != "naive":
            start_costmon(children, args, port)
            masters["costmon gunicorn"] = children.children[-1].pid
        if args.only != "costmon":
            naive_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.bench.naive.settings"}
            start_server(
                children,
                naive_env,
                workers=naive_workers(),
                port=naive_port,
                app="tests.bench.naive.wsgi",
                name="gunicorn-naive",
                config=("--worker-class", "sync", "--timeout", "300"),
            )
            masters["naive gunicorn"] = children.children[-1].pid

        def snap() -> dict[str, tuple[str, float]]:
            return snapshot(args.database, masters)

        for round_ in range(args.rounds):
            if args.only != "costmon":
                results.append(
                    measured(
                        "naive",
                        naive_port,
                        context.ingest_key,
                        bodies(args.singles, 1905 + 10 * round_),
                        args.clients,
                        snap,
                        args.rate,
                    )
                )
            if args.only != "naive":
                results.append(
                    measured(
                        "costmon",
                        port,
                        context.ingest_key,
                        bodies(args.singles, 1903 + 10 * round_),
                        args.clients,
                        snap,
                        args.rate,
                    )
                )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    for r in results:
        print(json.dumps(r, indent=1))
    print(f"load average after: {load}")


if __name__ == "__main__":
    main()
