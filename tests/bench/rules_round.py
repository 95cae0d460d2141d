"""One round of the every-minute alert rules for many small tenants, sent through beat's task
to real Celery workers: the wall time until every tenant's round finished.

    .venv/bin/python tests/bench/rules_round.py                   # 1,000 tenants, 2 workers
    .venv/bin/python tests/bench/rules_round.py --tenants 50      # a quick look
    .venv/bin/python tests/bench/rules_round.py --reuse           # keep the tenants built
    .venv/bin/python tests/bench/rules_round.py --database costmon_bench --existing
                                            # the tenants of another data set (tests/bench/run.py's)

It builds N small tenants in a scratch PostgreSQL database (`costmon_rules_bench`, made again
unless `--reuse` finds one of the same size): each with the demo's seven rule kinds (spend,
budget, projected, spike, cache hit rate, error rate, unpriced; every tenth tenant's spend
rule fires), a tenant budget and a per-user budget, and a little usage (30 events over 8
days, through the ingest service). It then starts `--workers` Celery workers (one process
each, as `--concurrency 1` on this two-core machine) on the Redis broker, sends
`alerts.tasks.evaluate_frequent_rules` through the broker as beat does, and waits until every
tenant due has finished its round (`RuleRound.finished_at`). Three rounds:
- first: every tenant is new, so every one is due;
- full: every tenant due again (its `due_at` passed, as at midnight), caches warm;
- incremental: new usage in 10% of the tenants, the rest skipped.
With `--existing`, the tenants already in `--database` (the benchmark's data set, say) get the
same rules and budgets instead (once), and keep their usage. For each round: the wall time from sending beat's task to the last tenant's finish, and the time of
a tenant's round (median, p95) as the workers measured it. Then, unless `--no-serial`, the
old way for comparison: one process evaluating every tenant in turn (`alert_rules_evaluate`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from costmon.web.management.launcher import ChildExited, ProcessGroup, StopRequested  # noqa: E402
from tests.bench.harness import PG_ADMIN, say, scratch_database  # noqa: E402

PYTHON = sys.executable
EVENTS_PER_TENANT = 30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--database", default="costmon_rules_bench", help="scratch database")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14"),
        help="scratch Redis database (broker and counters; flushed)",
    )
    parser.add_argument("--reuse", action="store_true", help="keep tenants of the same number")
    parser.add_argument(
        "--existing",
        action="store_true",
        help="use the tenants already in --database (rules and budgets added once)",
    )
    parser.add_argument("--no-serial", action="store_true", help="skip the one-process round")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a round may take")
    args = parser.parse_args(argv)

    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.database}"
    os.environ["REDIS_URL"] = args.redis_url
    os.environ["DATABASE_ROLE"] = "costmon_app"  # row-level security on, as in production
    os.environ.setdefault("SECRET_KEY", "benchmark-only")
    os.environ["DJANGO_SETTINGS_MODULE"] = "costmon.settings"
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["CELERY_TASK_ALWAYS_EAGER"] = "false"

    fresh = (
        False if args.existing else prepare_database(args.database, args.tenants, reuse=args.reuse)
    )
    import django

    django.setup()
    if args.existing:
        args.tenants = equip_existing()
    else:
        build(args.tenants, fresh=fresh)
    results: list[tuple[str, Round]] = []
    try:
        with ProcessGroup(grace=30) as children:
            start_workers(children, args.workers)
            results.append(("first (all new)", run_round(args.tenants, args.timeout, children)))
            force_all_due()
            results.append(("full (all due)", run_round(args.tenants, args.timeout, children)))
            changed = add_usage(fraction=0.1)
            results.append(
                ("incremental (10% new usage)", run_round(changed, args.timeout, children))
            )
    except StopRequested as stop:
        say(f"stopped: {stop.name} received; the workers are stopped")
        return 128 + stop.signum
    except ChildExited as exited:
        say(f"stopped: {exited}")
        return 1
    serial = None if args.no_serial else serial_round()
    print(report(results, serial, args))
    return 0


# --- the data ----------------------------------------------------------------------------------


def prepare_database(name: str, tenants: int, *, reuse: bool) -> bool:
    """Make the scratch database; True when it must be built."""
    return scratch_database(name, f"rules:{tenants}x{EVENTS_PER_TENANT}", reuse=reuse)


RULES: list[dict[str, Any]] = [
    {"kind": "spend", "period": "day", "threshold_usd": "10"},
    {"kind": "budget"},
    {"kind": "projected", "threshold_usd": "100"},
    {"kind": "spike"},
    {"kind": "cache_hit_rate"},
    {"kind": "error_rate"},
    {"kind": "unpriced", "severity": "info"},
]


def build(tenants: int, *, fresh: bool) -> None:
    import psycopg
    import redis
    from django.conf import settings
    from django.core.management import call_command
    from django.utils import timezone

    from alerts.models import Alert, RuleRound
    from costmon.core.services import tenant_create
    from costmon.core.tenancy import tenant_context, unscoped
    from usage import catalog
    from usage.demo import demo_events
    from usage.services import usage_record_batch

    redis.Redis.from_url(settings.REDIS_URL).flushdb()  # no old messages or counters
    # Kept tenants too: their tables must be this code's (a no-op when they are).
    call_command("migrate", verbosity=0)
    if fresh:
        say("loading the price catalog")
        call_command("load_prices", verbosity=0, stdout=sys.stderr)  # the report alone on stdout
        say(f"building {tenants:,} tenants: 7 rules, 2 budgets, {EVENTS_PER_TENANT} events each")
        started = time.perf_counter()
        end = timezone.now()
        for i in range(tenants):
            with unscoped():
                tenant = tenant_create(slug=f"bench-{i:05d}", name=f"Bench {i}")
                equip(tenant, fires=i % 10 == 0)  # every tenth tenant's spend rule fires
            events = list(demo_events(count=EVENTS_PER_TENANT, days=8, end=end, stream=i, users=20))
            with tenant_context(tenant):
                usage_record_batch(tenant=tenant, events=events)
            if (i + 1) % 50 == 0 or i + 1 == tenants:
                catalog.clear_local()  # a price catalog is kept per tenant: not 1,000 of them
                took = time.perf_counter() - started
                left = took / (i + 1) * (tenants - i - 1)
                say(
                    f"  {i + 1:,} of {tenants:,} tenants built ({took:.0f} s, about {left:.0f} s left)"
                )
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            name = settings.DATABASES["default"]["NAME"]
            conn.execute(f"COMMENT ON DATABASE \"{name}\" IS 'rules:{tenants}x{EVENTS_PER_TENANT}'")
    with unscoped():
        # Every run starts from tenants never evaluated.
        RuleRound.objects.unscoped().delete()
        Alert.objects.unscoped().delete()
    sweep()


def equip_existing() -> int:
    """Give every tenant of the database the rules and budgets `build` gives its own (once);
    how many tenants there are."""
    from alerts.models import Alert, AlertRule, RuleRound
    from costmon.core.models import Tenant
    from costmon.core.tenancy import unscoped

    with unscoped():
        tenants = list(Tenant.objects.order_by("pk"))
        for i, tenant in enumerate(tenants):
            if not AlertRule.objects.unscoped().filter(tenant=tenant).exists():
                equip(tenant, fires=i % 10 == 0)
        RuleRound.objects.unscoped().delete()
        Alert.objects.unscoped().delete()
    say(f"{len(tenants):,} existing tenants, each with 7 rules and 2 budgets")
    sweep()
    return len(tenants)


def equip(tenant: Any, *, fires: bool) -> None:
    """The seven rule kinds and two budgets (with `fires`, the spend rule fires)."""
    from alerts.models import AlertRule
    from budgets.services import budget_create

    budget_create(tenant=tenant, data={"name": "Monthly", "limit_usd": "50"})
    budget_create(
        tenant=tenant,
        data={"name": "Each user", "scope": "every_end_user", "period": "day", "limit_usd": "5"},
    )
    for fields in RULES:
        rule = dict(fields, name=f"{fields['kind']} rule")
        if rule["kind"] == "spend" and fires:
            rule["threshold_usd"] = "0.0001"
        AlertRule.objects.create(tenant=tenant, **rule)


def sweep() -> None:
    """What beat's sweeper does every 20 seconds: the counter updates ingest left, applied
    and removed (a tenant with pending updates is due, so they would make every tenant due)."""
    from budgets.updates import counter_updates_sweep

    counter_updates_sweep(min_age_seconds=0)


def force_all_due() -> None:
    """Every tenant's time-driven due moment has passed, as at midnight."""
    from django.utils import timezone

    from alerts.models import RuleRound
    from costmon.core.tenancy import unscoped

    with unscoped():
        RuleRound.objects.unscoped().update(due_at=timezone.now())


def add_usage(*, fraction: float) -> int:
    """A batch of new usage for every tenth tenant; how many tenants got one."""
    from django.utils import timezone

    from costmon.core.models import Tenant
    from costmon.core.tenancy import tenant_context, unscoped
    from usage.demo import demo_events
    from usage.services import usage_record_batch

    with unscoped():
        tenants = list(Tenant.objects.order_by("pk"))
    chosen = tenants[:: round(1 / fraction)]
    end = timezone.now()
    for n, tenant in enumerate(chosen):
        # A seed of its own: events new to a data set that was reused.
        events = list(
            demo_events(count=5, days=1, end=end, seed=int(end.timestamp()), stream=n, users=20)
        )
        with tenant_context(tenant):
            usage_record_batch(tenant=tenant, events=events)
    sweep()
    say(f"new usage for {len(chosen)} tenants")
    return len(chosen)


# --- the workers and the rounds ------------------------------------------------------------------


def start_workers(children: ProcessGroup, workers: int) -> None:
    from costmon.celery import app

    for i in range(workers):
        children.start(
            f"Celery worker {i + 1}",
            [
                PYTHON,
                "-m",
                "celery",
                "-A",
                "costmon",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                "1",
                "-n",
                f"rules-bench-{i + 1}@%h",
                "--loglevel",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=sys.stderr,  # the banner: this script's output is the report alone
        )
    deadline = time.monotonic() + 120
    while len(app.control.ping(timeout=1)) < workers:
        children.check()
        if time.monotonic() > deadline:
            raise SystemExit("the workers did not answer within 120 s")
    say(f"{workers} Celery workers up")


class Round:
    def __init__(self, wall: float, tenants: int, per_tenant_ms: list[float], cpu: float) -> None:
        self.wall = wall
        self.tenants = tenants
        self.per_tenant_ms = per_tenant_ms
        self.cpu = cpu  # seconds: the workers and their PostgreSQL backends

    @property
    def cpu_per_tenant(self) -> str:
        return f"{self.cpu / max(1, self.tenants) * 1000:.0f} ms"

    def cell(self, p: float) -> str:
        ordered = sorted(self.per_tenant_ms)
        if not ordered:
            return "-"
        return f"{ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]:.0f} ms"


_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # after the command name, from field 3


def cpu_seconds(children: ProcessGroup) -> float:
    """CPU time used so far by the workers (their pool processes included) and by the
    PostgreSQL backends serving the scratch database (this process's own excluded). A
    backend that closed meanwhile takes its time with it: about, not exact."""
    from django.db import connection

    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
    pids = {c.pid for c in children.children}
    grown = True
    while grown:
        found = {pid for pid, parent in parents.items() if parent in pids} - pids
        grown = bool(found)
        pids |= found
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        pids |= {row[0] for row in cursor.fetchall()}
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def run_round(expected: int, timeout: float, children: ProcessGroup) -> Round:
    from django.db import connection
    from django.utils import timezone

    from alerts.models import RuleRound
    from alerts.tasks import evaluate_frequent_rules
    from costmon.core.tenancy import unscoped

    time.sleep(1)  # a round's start is told by `started_at`: not the previous round's
    cpu_before = cpu_seconds(children)
    sent = timezone.now()
    evaluate_frequent_rules.delay()  # beat's task, run by a worker
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    with unscoped():
        done = RuleRound.objects.unscoped().filter(cadence="frequent", finished_at__gte=sent)
        while (count := done.count()) < expected:
            children.check()
            if time.monotonic() > deadline:
                raise SystemExit(f"only {count} of {expected} rounds finished in {timeout:.0f} s")
            if time.monotonic() - last_report > 5:
                say(f"  {count:,} of {expected:,} tenants' rounds finished")
                last_report = time.monotonic()
            time.sleep(0.1)
        time.sleep(2)  # nothing beyond the expected ones
        rows = list(done.values_list("started_at", "finished_at"))
    cpu = cpu_seconds(children) - cpu_before
    connection.close()
    finished = max(f for _, f in rows)
    result = Round(
        wall=(finished - sent).total_seconds(),
        tenants=len(rows),
        per_tenant_ms=[(f - s) / timedelta(milliseconds=1) for s, f in rows],
        cpu=cpu,
    )
    say(
        f"round: {result.tenants:,} tenants in {result.wall:.1f} s, "
        f"{result.cpu_per_tenant} of CPU a tenant"
    )
    return result


def serial_round() -> tuple[float, int]:
    """The old way: every tenant in turn in one process."""
    from django.utils import timezone

    from alerts.rounds import FREQUENT, KINDS
    from alerts.services import alert_rules_evaluate

    say("the old way: one process evaluates every tenant in turn")
    started = time.perf_counter()
    report = alert_rules_evaluate(kinds=KINDS[FREQUENT], now=timezone.now())
    return time.perf_counter() - started, report.rules


def report(results: list[tuple[str, Round]], serial: tuple[float, int] | None, args: Any) -> str:
    lines = [
        f"Rules round, {args.tenants:,} tenants of {args.database} (7 rules, 2 budgets, "
        + ("their own usage" if args.existing else f"{EVENTS_PER_TENANT} events each")
        + f"), {args.workers} Celery workers",
        "",
        "| round | tenants evaluated | wall time | a tenant's round: median | p95 "
        "| CPU a tenant (workers + PostgreSQL) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results:
        lines.append(
            f"| {name} | {r.tenants:,} | {r.wall:.1f} s | {r.cell(50)} | {r.cell(95)} "
            f"| {r.cpu_per_tenant} |"
        )
    if serial is not None:
        seconds, rules = serial
        lines.append(
            f"| one process, every tenant in turn (before; {rules:,} rules) | {args.tenants:,} "
            f"| {seconds:.1f} s | {seconds / max(1, args.tenants) * 1000:.0f} ms (mean) | | |"
        )
    load = os.getloadavg()
    lines.append("")
    lines.append(
        f"Goal: {args.tenants:,} tenants within 60 s with {args.workers} workers. "
        f"Load average at the end: {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} "
        f"on {os.cpu_count()} cores."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
