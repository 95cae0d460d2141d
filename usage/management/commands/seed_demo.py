from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from django.utils import timezone

from costmon.core.exceptions import DomainError
from costmon.core.models import Tenant
from costmon.core.money import format_usd
from costmon.core.periods import tenant_zone
from costmon.core.services import tenant_create
from costmon.core.tenancy import tenant_context, unscoped
from usage.bulk import BulkReport, usage_bulk_load
from usage.demo import demo_events
from usage.maintenance import usage_tenant_reset
from usage.models import ModelPrice, UsageEvent
from usage.prices import prices_sync, read_price_file
from usage.storage import parallel_writers_supported, usage_analyze

PRICE_FILE = Path(__file__).resolve().parents[2] / "data" / "prices.json"

# Events generated so far by all the worker processes of a parallel run.
_progress: Any = None


class Command(BaseCommand):
    help = (
        "Fill demo tenants (demo, demo-2, ...) with realistic usage, deterministic for a --seed. "
        "A tenant that already has usage is kept as it is; --reset starts the tenants over."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--events", type=int, default=20_000, help="events per tenant")
        parser.add_argument("--days", type=int, default=30, help="spread over the days ending now")
        parser.add_argument("--tenants", type=int, default=1, help="demo, demo-2, ...")
        parser.add_argument(
            "--users", type=int, default=300, help="end users per tenant (a few do most calls)"
        )
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument(
            "--jobs",
            type=int,
            default=1,
            help="tenants seeded at once, each in its own process (PostgreSQL; e.g. the number "
            "of cores)",
        )
        parser.add_argument(
            "--reset",
            action="store_true",
            help="delete the demo tenants' events, rollups and dimensions first",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count, days, tenants = options["events"], options["days"], options["tenants"]
        sizes = (
            ("--events", count),
            ("--days", days),
            ("--tenants", tenants),
            ("--users", options["users"]),
            ("--jobs", options["jobs"]),
        )
        for name, value in sizes:
            if value < 1:
                raise CommandError(f"{name} must be at least 1, got {value}.")
        self._load_catalog_if_empty()
        end = timezone.now()
        plan = []
        for index in range(tenants):
            tenant = self._tenant(index)
            if options["reset"]:
                with tenant_context(tenant):
                    self._reset(tenant)
            elif kept := self._events_kept(tenant):
                # Events are keyed by (id, time) and the window ends now: seeding again on
                # another day would add a second, shifted copy of the same stream.
                self.stdout.write(
                    f"{tenant.slug}: already has {kept:,} events, kept (--reset starts it over)."
                )
                continue
            plan.append(
                Job(
                    tenant=tenant,
                    count=count,
                    days=days,
                    end=end,
                    seed=options["seed"],
                    stream=index,
                    users=options["users"],
                )
            )
        jobs = min(options["jobs"], tenants)
        if jobs > 1 and parallel_writers_supported():
            self._seed_parallel(plan, jobs=jobs)
        else:
            for job in plan:
                self._seed(job)
        # Fresh statistics, so the first queries over the new rows get good plans.
        usage_analyze()

    def _events_kept(self, tenant: Tenant) -> int:
        with tenant_context(tenant):
            return UsageEvent.objects.for_tenant(tenant).count()

    def _load_catalog_if_empty(self) -> None:
        with unscoped():
            if ModelPrice.objects.unscoped().filter(tenant__isnull=True).exists():
                return
            try:
                sync = prices_sync(price_list=read_price_file(str(PRICE_FILE)))
            except DomainError as exc:
                raise CommandError(exc.message) from None
        self.stdout.write(
            f"The price catalog was empty: loaded {sync.added} prices from {PRICE_FILE.name}."
        )

    def _tenant(self, index: int) -> Tenant:
        slug, name = ("demo", "Demo") if index == 0 else (f"demo-{index + 1}", f"Demo {index + 1}")
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is not None:
            return tenant
        try:
            tenant = tenant_create(slug=slug, name=name)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        self.stdout.write(f"Created tenant {slug}.")
        return tenant

    def _reset(self, tenant: Tenant) -> None:
        events, rollups = usage_tenant_reset(tenant=tenant)
        self.stdout.write(f"{tenant.slug}: deleted {events:,} events and {rollups:,} rollup rows.")

    def _seed(self, job: Job) -> None:
        started = last_report = time.monotonic()
        done = 0

        def progress(n: int) -> None:
            nonlocal done, last_report
            done += n
            now = time.monotonic()
            if now - last_report >= 1 or done == job.count:
                last_report = now
                rate = done / max(now - started, 1e-6)
                self.stderr.write(
                    f"  {job.tenant.slug}: {done:,}/{job.count:,} events ({rate:,.0f} events/s)"
                )

        report = job.run(progress=progress)
        self._summary(job, report, elapsed=time.monotonic() - started)

    def _seed_parallel(self, plan: list[Job], *, jobs: int) -> None:
        global _progress
        context = multiprocessing.get_context("fork")
        _progress = context.Value("q", 0)
        total = sum(job.count for job in plan)
        started = time.monotonic()
        connections.close_all()  # each process opens its own connection
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = [(job, pool.submit(_run_job, job)) for job in plan]
            pending = {future for _, future in futures}
            while pending:
                time.sleep(1)
                pending = {f for f in pending if not f.done()}
                done = _progress.value
                rate = done / max(time.monotonic() - started, 1e-6)
                self.stderr.write(
                    f"  {len(plan) - len(pending)}/{len(plan)} tenants, "
                    f"{done:,}/{total:,} events ({rate:,.0f} events/s)"
                )
            for job, future in futures:
                self._summary(job, future.result(), elapsed=time.monotonic() - started)
        elapsed = time.monotonic() - started
        self.stdout.write(
            f"{total:,} events over {len(plan)} tenants in {elapsed:.1f}s "
            f"({total / max(elapsed, 1e-6):,.0f} events/s, {jobs} processes)."
        )

    def _summary(self, job: Job, report: BulkReport, *, elapsed: float) -> None:
        self.stdout.write(
            f"{job.tenant.slug}: {report.inserted:,} events recorded "
            f"({report.duplicates:,} were already there), ${format_usd(report.cost_nanos)} of "
            f"spend, {report.unpriced:,} unpriced, over {job.days} days; {elapsed:.1f}s, "
            f"{job.count / max(elapsed, 1e-6):,.0f} events/s."
        )


@dataclass(frozen=True)
class Job:
    """One tenant's share of a seeding run."""

    tenant: Tenant
    count: int
    days: int
    end: datetime
    seed: int
    stream: int
    users: int

    def run(self, *, progress: Any = None) -> BulkReport:
        events = demo_events(
            count=self.count,
            days=self.days,
            end=self.end,
            seed=self.seed,
            stream=self.stream,
            users=self.users,
            tz=tenant_zone(self.tenant),
        )
        return usage_bulk_load(tenant=self.tenant, events=events, progress=progress)


def _run_job(job: Job) -> BulkReport:
    """A worker process's entry point: seed one tenant, counting progress for the parent."""

    def progress(n: int) -> None:
        with _progress.get_lock():
            _progress.value += n

    try:
        return job.run(progress=progress)
    finally:
        connections.close_all()
