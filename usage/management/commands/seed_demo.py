from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from costmon.exceptions import DomainError
from costmon.models import Tenant
from costmon.services import tenant_create
from costmon.tenancy import tenant_context, unscoped
from usage.demo import batches, demo_events
from usage.models import CostSource, ModelPrice
from usage.pricing import format_usd
from usage.selectors import tenant_zone
from usage.services import prices_load, read_price_file, usage_record_batch, usage_tenant_reset

PRICE_FILE = Path(__file__).resolve().parents[2] / "data" / "prices.json"
BATCH_SIZE = 1000


class Command(BaseCommand):
    help = (
        "Fill demo tenants (demo, demo-2, ...) with realistic usage. Deterministic: running it "
        "again with the same --seed adds nothing; --reset starts the tenants over."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--events", type=int, default=20_000, help="events per tenant")
        parser.add_argument("--days", type=int, default=30, help="spread over the days ending now")
        parser.add_argument("--tenants", type=int, default=1, help="demo, demo-2, ...")
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument(
            "--reset",
            action="store_true",
            help="delete the demo tenants' events, rollups and dimensions first",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count, days, tenants = options["events"], options["days"], options["tenants"]
        for name, value in (("--events", count), ("--days", days), ("--tenants", tenants)):
            if value < 1:
                raise CommandError(f"{name} must be at least 1, got {value}.")
        self._load_catalog_if_empty()
        end = timezone.now()
        for index in range(tenants):
            tenant = self._tenant(index)
            with tenant_context(tenant):
                if options["reset"]:
                    self._reset(tenant)
                self._seed(
                    tenant, count=count, days=days, end=end, seed=options["seed"], stream=index
                )

    def _load_catalog_if_empty(self) -> None:
        with unscoped():
            if ModelPrice.objects.unscoped().filter(tenant__isnull=True).exists():
                return
            try:
                report = prices_load(rows=read_price_file(str(PRICE_FILE)))
            except DomainError as exc:
                raise CommandError(exc.message) from None
        self.stdout.write(
            f"The price catalog was empty: loaded {report.created} prices from {PRICE_FILE.name}."
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
        events, rollups, dimensions = usage_tenant_reset(tenant=tenant)
        self.stdout.write(
            f"{tenant.slug}: deleted {events:,} events, {rollups:,} rollup rows and "
            f"{dimensions:,} dimensions."
        )

    def _seed(
        self, tenant: Tenant, *, count: int, days: int, end: datetime, seed: int, stream: int
    ) -> None:
        events = demo_events(
            count=count, days=days, end=end, seed=seed, stream=stream, tz=tenant_zone(tenant)
        )
        started = last_report = time.monotonic()
        done = recorded = duplicates = unpriced = cost = 0
        for batch in batches(events, BATCH_SIZE):
            for result in usage_record_batch(tenant=tenant, events=batch):
                if result.duplicate:
                    duplicates += 1
                    continue
                recorded += 1
                cost += result.cost_nanos
                unpriced += result.cost_source == CostSource.UNPRICED
            done += len(batch)
            now = time.monotonic()
            if now - last_report >= 1 or done == count:
                last_report = now
                rate = done / max(now - started, 1e-6)
                self.stderr.write(
                    f"  {tenant.slug}: {done:,}/{count:,} events ({rate:,.0f} events/s)"
                )
        elapsed = time.monotonic() - started
        self.stdout.write(
            f"{tenant.slug}: {recorded:,} events recorded ({duplicates:,} were already there), "
            f"${format_usd(cost)} of spend, {unpriced:,} unpriced, over {days} days; "
            f"{elapsed:.1f}s, {count / max(elapsed, 1e-6):,.0f} events/s."
        )
