"""What every part of the benchmark (tests/bench/run.py) shares: the scales, the rows of the
table, the HTTP clients that drive the server, and gunicorn started in a process group."""

from __future__ import annotations

import http.client
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from costmon.web.management.launcher import ProcessGroup

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Scale:
    events: int  # per data-set tenant
    tenants: int
    users: int  # per tenant
    days: int
    batches: int  # 1,000-event batches sent by the batch-ingest phase
    singles: int  # single-event requests
    checks: int
    page_views: int
    rule_tenants: int = 1_000  # small tenants of the rule-round phase
    # 1,000-event batches sent to the naive endpoint (it takes about 2,000 events/s)
    naive_batches: int = 8


FULL = Scale(
    events=500_000,
    tenants=20,
    users=5_000,
    days=90,
    batches=400,
    singles=6_000,
    checks=20_000,
    page_views=15,
)
SMOKE = Scale(
    events=2_000,
    tenants=2,
    users=50,
    days=7,
    batches=6,
    singles=60,
    checks=200,
    page_views=2,
    rule_tenants=5,
    naive_batches=2,
)
# For comparing two versions of the code side by side (run each alternately, take medians).
MEDIUM = Scale(
    events=200_000,
    tenants=1,
    users=1_000,
    days=30,
    # 396 timed batches after the warm ones: of 96, the p99 was the slowest batch
    batches=400,
    singles=4_000,
    checks=2_000,
    page_views=3,
)
SCALES = {"smoke": SMOKE, "medium": MEDIUM, "full": FULL}


# --- results ---------------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    measured: str
    target: str
    ok: bool | None  # None: information, no target
    key: str = ""  # names the figure across the stores' passes (tests/bench/side_by_side.py)

    @property
    def verdict(self) -> str:
        return "" if self.ok is None else ("pass" if self.ok else "SHORT")


@dataclass
class Samples:
    """What the client processes of one phase saw."""

    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0

    def merge(self, other: Samples) -> None:
        self.latencies_ms += other.latencies_ms
        self.server_ms += other.server_ms
        for status, n in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n


def cpu_clock(*, serial_plans: bool) -> Callable[[], float]:
    """A clock of the CPU milliseconds this process has used, plus (`serial_plans`) those of its
    PostgreSQL backend, whose parallel workers are then turned off so the backend does all of
    a query's work (Django's default connection, opened here)."""
    from django.db import connection

    backend = None
    if serial_plans:
        with connection.cursor() as cursor:
            cursor.execute("SET max_parallel_workers_per_gather = 0")
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]

    def cpu_ms() -> float:
        spent = time.process_time() * 1000
        if backend is not None:
            fields = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
            spent += (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")
        return spent

    return cpu_ms


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


# --- the HTTP clients ------------------------------------------------------------------------


def _client_process(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str],
    bodies: list[bytes],
    interval: float | None = None,
    offset: float = 0.0,
) -> Samples:
    """Send `bodies` one after another over one keep-alive connection; with `interval`, the
    n-th no earlier than `offset` + n intervals after the start (paced: a late one goes at
    once)."""
    samples = Samples()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    first = time.perf_counter() + offset
    for n, body in enumerate(bodies):
        if interval is not None:
            time.sleep(max(0.0, first + n * interval - time.perf_counter()))
        started = time.perf_counter()
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        response.read()
        samples.latencies_ms.append((time.perf_counter() - started) * 1000)
        timing = response.getheader("Server-Timing", "")
        if ";dur=" in timing:
            samples.server_ms.append(float(timing.split(";dur=")[1]))
        samples.statuses[response.status] = samples.statuses.get(response.status, 0) + 1
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.close()
    return samples


def drive(
    port: int,
    *,
    method: str,
    path: str,
    headers: dict[str, str],
    bodies: list[bytes],
    clients: int,
    rate: float | None = None,
) -> Samples:
    """Split the bodies over `clients` processes that send at once; time the whole phase.
    With `rate`, the clients together send no more than that many requests a second (each its
    share, evenly spaced, the clients' starts staggered): the server's times at that load."""
    shares = [bodies[i::clients] for i in range(clients)]
    interval = None if rate is None else clients / rate
    context = multiprocessing.get_context("fork")
    pool = context.Pool(clients)
    try:
        started = time.perf_counter()
        parts = pool.starmap(
            _client_process,
            [
                (port, method, path, headers, share, interval, (interval or 0) * i / clients)
                for i, share in enumerate(shares)
            ],
        )
        elapsed = time.perf_counter() - started
    except BaseException:
        pool.terminate()  # stopped or failed: the clients may never finish
        raise
    # Done: let the clients end by themselves (terminate() could leave one stuck on a lock).
    pool.close()
    pool.join()
    total = Samples(elapsed=elapsed)
    for part in parts:
        total.merge(part)
    return total


def expect_ok(name: str, samples: Samples, *, allowed: Sequence[int] = (200, 201)) -> None:
    bad = {s: n for s, n in samples.statuses.items() if s not in allowed}
    if bad:
        raise SystemExit(f"{name}: unexpected answers {bad} (expected {list(allowed)})")


# --- the server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    children: ProcessGroup,
    env: dict[str, str],
    *,
    workers: int | None,
    port: int,
    app: str = "costmon.wsgi",
    name: str = "gunicorn",
    config: Sequence[str] = ("-c", "python:costmon.gunicorn_conf"),
) -> None:
    """gunicorn in the group of `children`: a stop signal or an error stops it with the run.

    costmon's own config (`costmon.gunicorn_conf`) chooses the worker class and threads, and
    the number of workers unless `workers` is given; the naive baseline runs stock sync
    workers."""
    children.start(
        name,
        [
            str(Path(PYTHON).with_name("gunicorn")),
            app,
            *config,
            "--bind",
            f"127.0.0.1:{port}",
            *(() if workers is None else ("--workers", str(workers))),
            "--keep-alive",
            "30",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        children.wait(0.2)  # raises ChildExited if gunicorn ended
    raise SystemExit("gunicorn did not answer /healthz within 60 s")


def start_costmon(children: ProcessGroup, args: Any, port: int) -> None:
    """costmon's gunicorn with this run's settings (`args.workers`, `args.threads`)."""
    threads = () if args.threads is None else ("--threads", str(args.threads))
    start_server(
        children,
        dict(os.environ),
        workers=args.workers,
        port=port,
        config=("-c", "python:costmon.gunicorn_conf", *threads),
    )


def costmon_workers(workers: int | None) -> int:
    """How many workers costmon's gunicorn runs: `workers`, else its config's default (two
    per core, `costmon.gunicorn_conf`; not imported here, it sets the process's settings)."""
    return workers or int(os.environ.get("COSTMON_GUNICORN_WORKERS") or (os.cpu_count() or 1) * 2)


def naive_workers() -> int:
    """The naive endpoint's sync workers: two per core, gunicorn's usual advice."""
    return (os.cpu_count() or 2) * 2


def bench_environment(database: str, redis_db: int) -> None:
    """This process's environment for a script that measures costmon on a data set the
    benchmark left in `database` (Redis database `redis_db`), as run.py's phases see it: the
    product's role (row-level security on), quiet logs, the catalog cached for the run."""
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{database}"
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:6379/{redis_db}"
    os.environ["DATABASE_ROLE"] = "costmon_app"
    os.environ.setdefault("SECRET_KEY", "benchmark-only")
    os.environ["DJANGO_SETTINGS_MODULE"] = "costmon.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["COSTMON_CATALOG_TTL_SECONDS"] = "300"
    os.environ.pop("COSTMON_EVENT_STORE_URL", None)


def say(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def scratch_database(name: str, marker: str, *, reuse: bool) -> bool:
    """Make the scratch database `name`, owned by the role the product connects as; True when
    it must be built. With `reuse`, a database whose comment is `marker` (left by a finished
    build of the same size) is kept as it is."""
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN CREATE ROLE costmon_app NOLOGIN CREATEDB; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            [name],
        ).fetchone()
        if reuse and row is not None and row[0] == marker:
            say(f"reusing database {name} ({marker})")
            return False
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" OWNER costmon_app')
        conn.execute(f"COMMENT ON DATABASE \"{name}\" IS 'building'")
    return True


@dataclass
class Context:
    bench_tenant: Any
    ingest_key: str
    check_key: str
    read_key: str  # the biggest data-set tenant's
    dataset_slug: str
    session_cookie: str
    events_total: int
    seed_seconds: float | None
    baseline: dict[str, float]


def settle(before: str, *, limit: float = 180.0) -> None:
    """Let PostgreSQL finish the upkeep a previous phase left before `before` is timed: wait (at
    most `limit` seconds) until no autovacuum worker runs in the run's database, VACUUM (ANALYZE)
    it, then CHECKPOINT, so that neither the naive endpoint nor costmon is timed while the
    server vacuums or flushes what an earlier phase wrote. The VACUUM is the upkeep autovacuum
    would start within its nap time (a minute) of the phase before, in the middle of the
    next one: right after costmon's batches (100,000 events), its single events were timed
    while the batches' tables were vacuumed. The naive endpoint's table is in the same
    database."""
    import psycopg

    database = os.environ["DATABASE_URL"].rsplit("/", 1)[-1]
    started = time.monotonic()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        while time.monotonic() - started < limit:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE backend_type = 'autovacuum worker' AND datname = %s",
                [database],
            ).fetchone()
            if not row or not row[0]:
                break
            time.sleep(1.0)
        waited = time.monotonic() - started
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        vacuumed = time.monotonic()
        conn.execute("VACUUM (ANALYZE)")
        vacuumed = time.monotonic() - vacuumed
        conn.execute("CHECKPOINT")
    say(
        f"settled before {before}: {waited:.0f} s of autovacuum waited for, "
        f"a VACUUM (ANALYZE) of {vacuumed:.0f} s, then a checkpoint"
    )


def _cpu_ms(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # ended
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def server_cpu(port: int) -> dict[str, dict[int, float]]:
    """CPU milliseconds used so far by the gunicorn serving `port` (master and workers) and by
    the PostgreSQL backends of the run's database, by process id: take it before and after a
    phase (`cpu_spent`). Processes of other runs on the machine are not counted."""
    import psycopg

    bind = f"127.0.0.1:{port}".encode()
    workers = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if bind in (entry / "cmdline").read_bytes():
                    workers.append(int(entry.name))
            except OSError:
                continue
    database = os.environ["DATABASE_URL"].rsplit("/", 1)[-1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        backends = [
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND datname = %s",
                [database],
            )
        ]
    return {
        "gunicorn": {pid: _cpu_ms(pid) for pid in workers},
        "PostgreSQL": {pid: _cpu_ms(pid) for pid in backends},
    }


def cpu_spent(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
) -> dict[str, float]:
    """What each kind of process of `server_cpu` spent between the two readings (a process
    that started meanwhile counts whole; one that ended meanwhile is lost)."""
    spent = {
        kind: sum(ms - before[kind].get(pid, 0.0) for pid, ms in now.items())
        for kind, now in after.items()
    }
    return spent
