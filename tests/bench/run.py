"""The benchmark: costmon as in production, driven over HTTP, against the targets of issue 6.

    .venv/bin/python tests/bench/run.py            # the full run: 10 million events, ~25 min
    .venv/bin/python tests/bench/run.py --smoke    # a small run that checks it all still works
    .venv/bin/python tests/bench/run.py --scale medium  # 1 tenant x 200,000 events, ~3 min

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
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from costmon.web.management.launcher import ChildExited, ProcessGroup, StopRequested  # noqa: E402

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
)
# For comparing two versions of the code side by side (run each alternately, take medians).
MEDIUM = Scale(
    events=200_000,
    tenants=1,
    users=1_000,
    days=30,
    batches=100,
    singles=4_000,
    checks=2_000,
    page_views=3,
)
SCALES = {"smoke": SMOKE, "medium": MEDIUM, "full": FULL}
NAIVE_BATCHES = 8  # 1,000-event batches sent to the naive endpoint (about 2,000 events/s)


# --- results ---------------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    measured: str
    target: str
    ok: bool | None  # None: information, no target

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


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


# --- the HTTP clients ------------------------------------------------------------------------


def _client_process(
    port: int, method: str, path: str, headers: dict[str, str], bodies: list[bytes]
) -> Samples:
    """Send `bodies` one after another over one keep-alive connection."""
    samples = Samples()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    for body in bodies:
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
) -> Samples:
    """Split the bodies over `clients` processes that send at once; time the whole phase."""
    shares = [bodies[i::clients] for i in range(clients)]
    context = multiprocessing.get_context("fork")
    pool = context.Pool(clients)
    try:
        started = time.perf_counter()
        parts = pool.starmap(
            _client_process, [(port, method, path, headers, share) for share in shares]
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
    workers: int,
    port: int,
    app: str = "costmon.wsgi",
    name: str = "gunicorn",
    config: Sequence[str] = ("-c", "python:costmon.gunicorn_conf"),
) -> None:
    """gunicorn in the group of `children`: a stop signal or an error stops it with the run.

    costmon's own config (`costmon.gunicorn_conf`) chooses the worker class and threads; the
    naive baseline runs stock sync workers."""
    children.start(
        name,
        [
            str(Path(PYTHON).with_name("gunicorn")),
            app,
            *config,
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
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


# --- the run ---------------------------------------------------------------------------------


def say(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a small, quick run (CI)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="full", help="data-set size")
    parser.add_argument("--database", default="costmon_bench", help="scratch database name")
    parser.add_argument("--redis-db", type=int, default=14, help="scratch Redis database")
    parser.add_argument("--reuse", action="store_true", help="keep a data set of the same size")
    parser.add_argument("--workers", type=int, default=(os.cpu_count() or 2) * 2)
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
    args = parser.parse_args(argv)
    if args.smoke:
        args.scale = "smoke"
    scale = SCALES[args.scale]

    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.database}"
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:6379/{args.redis_db}"
    os.environ["DATABASE_ROLE"] = "costmon_app"  # row-level security on, as in production
    os.environ.setdefault("SECRET_KEY", "benchmark-only")
    os.environ["DJANGO_SETTINGS_MODULE"] = "costmon.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["COSTMON_CATALOG_TTL_SECONDS"] = "300"

    fresh = prepare_database(args.database, scale, reuse=args.reuse)
    import django

    django.setup()
    rows: list[Row] = []
    context = setup_data(scale, fresh=fresh, jobs=args.jobs)
    rows += storage_rows(context)
    rows += ratio_rows(context)
    port, naive_port = free_port(), free_port()
    say(f"starting gunicorn: {args.workers} workers on port {port}, naive on {naive_port}")
    # gunicorn, master and workers, stops with this run however it ends (an error, Ctrl+C,
    # SIGTERM or SIGHUP): it must not keep the port and the scratch database busy.
    try:
        with ProcessGroup(grace=30) as children:
            threads = () if args.threads is None else ("--threads", str(args.threads))
            start_server(
                children,
                dict(os.environ),
                workers=args.workers,
                port=port,
                config=("-c", "python:costmon.gunicorn_conf", *threads),
            )
            naive_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.bench.naive.settings"}
            start_server(
                children,
                naive_env,
                workers=args.workers,
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
    except StopRequested as stop:
        say(f"stopped: {stop.name} received; gunicorn is stopped")
        return 128 + stop.signum
    except ChildExited as exited:
        say(f"stopped: {exited}")
        return 1
    report = render(rows, context, scale, args)
    if not args.no_rule_rounds:
        report += rule_rounds(args, scale)
    sys.stdout.write(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = "" if args.scale == "full" else f"-{args.scale}"
    for name in (f"bench-{stamp}{suffix}.md", "latest.md"):
        (out / name).write_text(report)
    say(f"written to {out / 'latest.md'}")
    if args.scale == "smoke":
        drop_database(args.database)
        drop_database(f"{args.database}_rules")
    return 0


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


def drop_database(name: str) -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prepare_database(name: str, scale: Scale, *, reuse: bool) -> bool:
    """Make the scratch database; True when it must be seeded."""
    import psycopg

    marker = f"{scale.tenants}x{scale.events}x{scale.users}x{scale.days}"
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
            say(f"reusing the data set in database {name} ({marker})")
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


def setup_data(scale: Scale, *, fresh: bool, jobs: int) -> Context:
    import redis
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    from budgets import config, counters
    from budgets.models import RateLimit
    from budgets.services import budget_create
    from costmon.core.models import Tenant
    from costmon.core.services import api_key_create, membership_add, tenant_create
    from costmon.core.tenancy import unscoped
    from usage.models import UsageEvent

    seed_seconds = None
    say("migrating")
    call_command("migrate", verbosity=0)
    if fresh:
        redis.Redis.from_url(settings.REDIS_URL).flushdb()
        total = scale.events * scale.tenants
        say(f"seeding {total:,} events: {scale.tenants} tenants x {scale.events:,} events")
        started = time.perf_counter()
        subprocess.run(
            [
                PYTHON,
                "manage.py",
                "seed_demo",
                "--events",
                str(scale.events),
                "--tenants",
                str(scale.tenants),
                "--users",
                str(scale.users),
                "--days",
                str(scale.days),
                "--jobs",
                str(jobs),
            ],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seed_seconds = time.perf_counter() - started
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            name = settings.DATABASES["default"]["NAME"]
            marker = f"{scale.tenants}x{scale.events}x{scale.users}x{scale.days}"
            conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{marker}'")

    with unscoped():
        Tenant.objects.filter(slug__startswith="bench").delete()
        bench = tenant_create(slug="bench", name="Benchmark")
        budget_create(
            tenant=bench,
            data={"name": "month", "limit_usd": Decimal(10_000_000), "enforcement": "hard"},
        )
        budget_create(
            tenant=bench,
            data={
                "name": "each user",
                "scope": "every_end_user",
                "period": "day",
                "limit_usd": Decimal(100_000),
                "enforcement": "hard",
            },
        )
        budget_create(
            tenant=bench,
            data={
                "name": "gpt-4o",
                "scope": "model",
                "scope_value": "gpt-4o",
                "limit_usd": Decimal(1_000_000),
            },
        )
        RateLimit.objects.create(
            tenant=bench, scope="end_user", window_seconds=60, max_requests=10**9
        )
        RateLimit.objects.create(
            tenant=bench, scope="api_key", window_seconds=60, max_requests=10**9, max_tokens=10**15
        )
        config.bump(bench.pk)
        counters.counters_reconcile(tenant=bench)
        ingest_key = api_key_create(tenant=bench, scopes="ingest").secret
        check_key = api_key_create(tenant=bench, scopes="ingest").secret
        dataset = Tenant.objects.get(slug="demo")
        read_key = api_key_create(tenant=dataset, scopes="read").secret
        user_model = get_user_model()
        user, _ = user_model.objects.get_or_create(username="bench-viewer")
        if not user.memberships.filter(tenant=dataset).exists():  # type: ignore[attr-defined]
            membership_add(tenant=dataset, user=user, role="viewer")
        client = Client()
        client.force_login(user)
        cookie = (
            f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
        )
        events_total = UsageEvent.objects.unscoped().count()
    baseline = measure_ratios(bench)
    return Context(
        bench_tenant=bench,
        ingest_key=ingest_key,
        check_key=check_key,
        read_key=read_key,
        dataset_slug=dataset.slug,
        session_cookie=cookie,
        events_total=events_total,
        seed_seconds=seed_seconds,
        baseline=baseline,
    )


# --- in-process ratios: naive ORM, costmon's service, raw COPY -------------------------------


def _fresh_batches(count: int, batches: int, *, stream: int) -> list[list[Any]]:
    from usage import demo

    events = list(
        demo.demo_events(
            count=count * batches, days=2, end=datetime.now(UTC), seed=stream, stream=stream
        )
    )
    return [events[i : i + count] for i in range(0, len(events), count)]


def measure_ratios(bench: Any) -> dict[str, float]:
    """events/s of the naive baseline, of `usage_record_batch`, and of COPY, same rows."""
    from django.db import connection, transaction

    from costmon.core.tenancy import raw_cursor, tenant_context
    from usage import dimensions, rows, services, tagsets
    from usage.models import Dimension, TagSet, UsageEvent

    say("in-process ratios: naive ORM baseline, the ingest service, raw COPY")
    out: dict[str, float] = {}
    batches = _fresh_batches(1000, 6, stream=901)
    with tenant_context(bench):
        # The naive baseline: per event, look up or create each name and insert one row, each
        # statement its own commit (a stock ModelSerializer view without ATOMIC_REQUESTS).
        from usage.catalog import catalog_for

        catalog = catalog_for(bench.pk)
        started = time.perf_counter()
        for e in batches[0]:
            dims = {}
            for kind, value in (
                (Dimension.Kind.PROVIDER, e.provider),
                (Dimension.Kind.MODEL, e.model),
                (Dimension.Kind.OPERATION, e.operation),
                (Dimension.Kind.END_USER, e.end_user),
            ):
                dims[kind], _ = Dimension.objects.get_or_create(
                    tenant=bench, kind=kind, value=value
                )
            cost, source, price_id = rows.price_event(catalog, e)
            tag_set = None
            if e.tags:
                pairs = tagsets.pairs_of(e.tags)
                tag_set, _ = TagSet.objects.get_or_create(
                    tenant=bench, key=tagsets.tag_set_key(pairs), defaults={"tags": dict(pairs)}
                )
            UsageEvent.objects.create(
                tenant=bench,
                event_id=e.event_id,
                occurred_at=e.occurred_at,
                provider=dims[Dimension.Kind.PROVIDER],
                model=dims[Dimension.Kind.MODEL],
                operation=dims[Dimension.Kind.OPERATION],
                end_user=dims[Dimension.Kind.END_USER],
                tag_set=tag_set,
                input_tokens=e.input_tokens,
                output_tokens=e.output_tokens,
                cached_input_tokens=e.cached_input_tokens,
                cache_write_tokens=e.cache_write_tokens,
                reasoning_tokens=e.reasoning_tokens,
                cost_nanos=cost,
                cost_source=source,
                price_id=price_id,
                latency_ms=e.latency_ms,
                is_error=e.is_error,
                cache_hit=e.cache_hit,
            )
        out["naive"] = len(batches[0]) / (time.perf_counter() - started)

        # costmon's ingest service, batch after batch (validation is in the HTTP figures).
        started = time.perf_counter()
        for batch in batches[1:4]:
            services.usage_record_batch(tenant=bench, events=batch)
        out["service"] = 3000 / (time.perf_counter() - started)

        # Raw COPY of the same rows into a copy of the events table with the same indexes.
        table = UsageEvent._meta.db_table
        columns = rows.EVENT_COLUMNS
        dims_all = dimensions.dimension_ids(
            tenant=bench, wanted=dimensions.dimension_keys([e for b in batches[4:] for e in b])
        )
        event_rows = [
            rows.event_row(
                tenant_id=bench.pk,
                event=e,
                dims=dims_all,
                priced=rows.price_event(catalog, e),
                api_key_id=0,
            )
            for e in (e for b in batches[4:] for e in b)
        ]
        with transaction.atomic():
            tagsets.with_tag_set_ids(event_rows)
        copied = [[row[c] for c in columns] for row in event_rows]
        with transaction.atomic(), raw_cursor(connection) as cursor:
            cursor.execute(
                f"CREATE TEMP TABLE bench_copy (LIKE {table} INCLUDING ALL) ON COMMIT DROP"
            )
            started = time.perf_counter()
            with cursor.copy(f"COPY bench_copy ({', '.join(columns)}) FROM STDIN") as copy:
                for values in copied:
                    copy.write_row(values)
            out["copy"] = len(copied) / (time.perf_counter() - started)
    return out


def ratio_rows(context: Context) -> list[Row]:
    b = context.baseline
    return [
        Row(
            "naive baseline: one ORM insert per event (in process)",
            f"{b['naive']:,.0f} events/s",
            "",
            None,
        ),
        Row("costmon's ingest service (in process)", f"{b['service']:,.0f} events/s", "", None),
        Row("raw PostgreSQL COPY of the same rows", f"{b['copy']:,.0f} events/s", "", None),
        Row(
            "service: speed-up over the naive baseline",
            f"{b['service'] / b['naive']:.1f}x",
            "",
            None,
        ),
        Row("service: fraction of the COPY rate", f"{b['service'] / b['copy']:.0%}", "", None),
    ]


# --- storage ---------------------------------------------------------------------------------


def storage_rows(context: Context) -> list[Row]:
    from django.db import connection

    from costmon.core.tenancy import unscoped
    from usage.models import HourlyRollup, ModelHourlyRollup, TagSet, UsageEvent

    say("measuring storage")
    events = UsageEvent._meta.db_table
    with unscoped(), connection.cursor() as cursor:
        # Over the partition tree: on PostgreSQL the events live in monthly partitions, and a
        # partitioned table's own size is 0 (a plain table is its own tree).
        cursor.execute(
            "SELECT sum(pg_total_relation_size(relid)), sum(pg_relation_size(relid)) "
            "FROM pg_partition_tree(%s)",
            [events],
        )
        total, heap = (int(v or 0) for v in cursor.fetchone())
        # The tag-set dictionary the events refer to counts as theirs.
        cursor.execute("SELECT pg_total_relation_size(%s)", [TagSet._meta.db_table])
        tag_sets = int(cursor.fetchone()[0])
        total += tag_sets
        rollups = []
        for model in (HourlyRollup, ModelHourlyRollup):
            table = model._meta.db_table
            cursor.execute(
                f"SELECT pg_total_relation_size(%s), (SELECT count(*) FROM {table})", [table]
            )
            rollups.append(cursor.fetchone())
    n = max(context.events_total, 1)
    per_event = total / n
    (hourly_bytes, hourly_rows), (model_bytes, model_rows) = rollups
    return [
        Row(
            f"storage per raw event, indexes included ({n:,} events)",
            f"{per_event:,.1f} bytes ({per_event * 1e6 / 2**20:,.0f} MB per million)",
            "<= 200 bytes",
            per_event <= 200,
        ),
        Row("  of which the table itself", f"{heap / n:,.0f} bytes", "", None),
        Row("  of which the tag-set dictionary", f"{tag_sets / n:,.1f} bytes", "", None),
        Row(
            "hourly rollups, every dimension (budgets, per-user views)",
            f"{hourly_rows:,} rows, {hourly_bytes / n:,.0f} bytes per event",
            "",
            None,
        ),
        Row(
            "hourly rollups by model (dashboards, metrics API)",
            f"{model_rows:,} rows, {model_bytes / n:,.0f} bytes per event",
            "",
            None,
        ),
    ]


# --- over HTTP ---------------------------------------------------------------------------------


def naive_rows(
    context: Context,
    *,
    port: int,
    clients: int,
    single_clients: int,
    singles: list[bytes],
) -> tuple[list[Row], float, float]:
    """The naive endpoint over HTTP: its rows, its single-event rate and its batch rate."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {context.ingest_key}"}
    say(f"naive endpoint: {NAIVE_BATCHES} batches of 1,000 events, {clients} clients")
    bodies = [
        json.dumps([_event_json(e) for e in batch]).encode()
        for batch in _fresh_batches(1000, NAIVE_BATCHES, stream=904)
    ]
    s = drive(
        port, method="POST", path="/api/v1/usage/", headers=headers, bodies=bodies, clients=clients
    )
    expect_ok("naive batch ingest", s)
    batch_rate = len(bodies) * 1000 / s.elapsed
    batch_p99 = pct(s.latencies_ms, 99)
    say(f"naive endpoint: {len(singles)} single events, {single_clients} clients")
    s = drive(
        port,
        method="POST",
        path="/api/v1/usage/",
        headers=headers,
        bodies=singles,
        clients=single_clients,
    )
    expect_ok("naive single-event ingest", s)
    single_rate = len(singles) / s.elapsed
    rows = [
        Row(
            f"naive DRF endpoint over HTTP: batches of 1,000, {clients} clients",
            f"{batch_rate:,.0f} events/s (p99 {batch_p99:,.0f} ms)",
            "",
            None,
        ),
        Row(
            f"naive DRF endpoint over HTTP: single events, {single_clients} clients",
            f"{single_rate:,.0f} requests/s (client p50 {pct(s.latencies_ms, 50):.1f} ms)",
            "",
            None,
        ),
    ]
    return rows, single_rate, batch_rate


def http_rows(
    context: Context,
    scale: Scale,
    *,
    port: int,
    naive_port: int,
    clients: int,
    single_clients: int,
) -> list[Row]:
    rows: list[Row] = []
    auth = {"Content-Type": "application/json"}
    naive_singles = [
        json.dumps(_event_json(e)).encode()
        for batch in _fresh_batches(scale.singles, 1, stream=905)
        for e in batch
    ]
    more, naive_single_rate, naive_batch_rate = naive_rows(
        context,
        port=naive_port,
        clients=clients,
        single_clients=single_clients,
        singles=naive_singles,
    )
    rows += more

    # Batch ingest: new events, 1,000 per request, from several clients at once.
    say(f"batch ingest: {scale.batches} requests of 1,000 events, {clients} clients")
    bodies = [
        json.dumps([_event_json(e) for e in batch]).encode()
        for batch in _fresh_batches(1000, scale.batches, stream=902)
    ]
    headers = {**auth, "Authorization": f"Bearer {context.ingest_key}"}
    warm = drive(
        port,
        method="POST",
        path="/api/v1/usage/",
        headers=headers,
        bodies=bodies[:clients],
        clients=clients,
    )
    expect_ok("batch ingest", warm)
    s = drive(
        port,
        method="POST",
        path="/api/v1/usage/",
        headers=headers,
        bodies=bodies[clients:],
        clients=clients,
    )
    expect_ok("batch ingest", s)
    rate = (len(bodies) - clients) * 1000 / s.elapsed
    p99 = pct(s.latencies_ms, 99)
    rows.append(
        Row(
            f"batch ingest over HTTP, 1,000 events per request, {clients} clients",
            f"{rate:,.0f} events/s",
            ">= 20,000 events/s",
            rate >= 20_000,
        )
    )
    rows.append(
        Row("  speed-up over the naive endpoint", f"{rate / naive_batch_rate:.1f}x", "", None)
    )
    rows.append(
        Row(
            "  request p99 (client)",
            f"{p99:,.0f} ms (p50 {pct(s.latencies_ms, 50):,.0f} ms, server p50 {pct(s.server_ms, 50):,.0f} ms)",
            "< 250 ms",
            p99 < 250,
        )
    )

    # Single-event ingest.
    say(f"single-event ingest: {scale.singles} requests, {single_clients} clients")
    singles = [
        json.dumps(_event_json(e)).encode()
        for batch in _fresh_batches(scale.singles, 1, stream=903)
        for e in batch
    ]
    s = drive(
        port,
        method="POST",
        path="/api/v1/usage/",
        headers=headers,
        bodies=singles,
        clients=single_clients,
    )
    expect_ok("single-event ingest", s)
    rate = len(singles) / s.elapsed
    p50 = pct(s.server_ms, 50)
    rows.append(
        Row(
            f"single-event ingest, {single_clients} clients",
            f"{rate:,.0f} requests/s (client p50 {pct(s.latencies_ms, 50):.1f} ms)",
            ">= 1,000 requests/s",
            rate >= 1000,
        )
    )
    rows.append(
        Row(
            "  vs the naive endpoint, same run",
            f"{rate / naive_single_rate:.2f}x",
            ">= 2x",
            rate >= 2 * naive_single_rate,
        )
    )
    rows.append(
        Row(
            "  server time p50",
            f"{p50:.2f} ms (p99 {pct(s.server_ms, 99):.2f} ms)",
            "< 5 ms",
            p50 < 5,
        )
    )

    # The pre-flight check: three budgets and two rate limits apply.
    say(f"pre-flight check: {scale.checks} requests, {clients} clients")
    check = (
        '{"end_user": "user-%03d", "provider": "openai", "model": "gpt-4o", "operation": "chat", '
        '"estimated_input_tokens": 1200, "estimated_output_tokens": 300}'
    )
    checks = [(check % (i % 500)).encode() for i in range(scale.checks)]
    headers = {**auth, "Authorization": f"Bearer {context.check_key}"}
    drive(
        port,
        method="POST",
        path="/api/v1/check/",
        headers=headers,
        bodies=checks[: clients * 20],
        clients=clients,
    )
    s = drive(
        port, method="POST", path="/api/v1/check/", headers=headers, bodies=checks, clients=clients
    )
    expect_ok("check", s, allowed=(200,))
    rate = len(checks) / s.elapsed
    p50, p99 = pct(s.server_ms, 50), pct(s.server_ms, 99)
    rows.append(
        Row(
            f"pre-flight check (3 budgets, 2 rate limits), {clients} clients",
            f"{rate:,.0f} checks/s",
            ">= 1,500 checks/s",
            rate >= 1500,
        )
    )
    rows.append(Row("  server time p50", f"{p50:.2f} ms", "< 2 ms", p50 < 2))
    rows.append(Row("  server time p99", f"{p99:.2f} ms", "< 10 ms", p99 < 10))

    # Reads over the data set: one at a time, so each figure is the request's own.
    views = scale.page_views
    say(f"dashboard overview and metrics API over {context.events_total:,} events")
    page = drive(
        port,
        method="GET",
        path=f"/t/{context.dataset_slug}/",
        headers={"Cookie": context.session_cookie},
        bodies=[b""] * (views + 1),
        clients=1,
    )
    expect_ok("dashboard", page, allowed=(200,))
    first, rest = page.server_ms[0], page.server_ms[1:]
    p50 = pct(rest, 50)
    rows.append(
        Row(
            f"dashboard overview, this month ({context.events_total:,} events in the database)",
            f"{p50:,.0f} ms p50 (first view {first:,.0f} ms)",
            "< 500 ms",
            p50 < 500 and first < 500,
        )
    )
    headers = {"Authorization": f"Bearer {context.read_key}"}
    for path, label in (
        ("/api/v1/metrics/?period=month&group_by=model", "metrics API, month by model"),
        ("/api/v1/metrics/?period=month&group_by=end_user", "metrics API, month by end user"),
    ):
        s = drive(
            port, method="GET", path=path, headers=headers, bodies=[b""] * (views + 1), clients=1
        )
        expect_ok(label, s, allowed=(200,))
        first, p50 = s.server_ms[0], pct(s.server_ms[1:], 50)
        rows.append(
            Row(
                label,
                f"{p50:,.0f} ms p50 (first {first:,.0f} ms)",
                "< 200 ms",
                p50 < 200 and first < 200,
            )
        )
    return rows


def _event_json(e: Any) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "occurred_at": e.occurred_at.isoformat(),
        "provider": e.provider,
        "model": e.model,
        "operation": e.operation,
        "end_user": e.end_user,
        "session_id": e.session_id,
        "tags": e.tags,
        "input_tokens": e.input_tokens,
        "output_tokens": e.output_tokens,
        "cached_input_tokens": e.cached_input_tokens,
        "cache_write_tokens": e.cache_write_tokens,
        "reasoning_tokens": e.reasoning_tokens,
        "latency_ms": e.latency_ms,
        "status": "error" if e.is_error else "success",
        "cache_hit": e.cache_hit,
    }


# --- the report ------------------------------------------------------------------------------


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
        + (f" ({args.scale} scale)" if args.scale == "medium" else ""),
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Data set: {scale.tenants} tenants x "
        f"{scale.events:,} events over {scale.days} days, {scale.users:,} end users each"
        + (
            f" (seeded in {context.seed_seconds:,.0f} s)"
            if context.seed_seconds is not None
            else " (reused)"
        )
        + f". gunicorn: {args.workers} workers (costmon.gunicorn_conf; the naive endpoint: sync); "
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


if __name__ == "__main__":
    raise SystemExit(main())
