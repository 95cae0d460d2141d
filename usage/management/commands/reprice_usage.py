from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from costmon.core.exceptions import DomainError
from costmon.core.models import Tenant
from costmon.core.periods import parse_moment, tenant_zone
from usage.eventstore.base import RewriteUnavailable
from usage.eventstore.clickhouse import ClickHouseStore
from usage.eventstore.current import event_store
from usage.maintenance import usage_reprice, usage_reprice_unpriced
from usage.storerewrites import store_rewrites_resume


class Command(BaseCommand):
    help = (
        "Price events again with the current catalog and rebuild their rollups: "
        "--unpriced for events that had no price, or --start/--end after a price correction."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="one tenant's slug (default: every tenant)")
        parser.add_argument("--unpriced", action="store_true", help="only events stored unpriced")
        parser.add_argument("--start", help="date or date-time (tenant's time zone)")
        parser.add_argument("--end", help="exclusive; default now")
        parser.add_argument(
            "--resume",
            action="store_true",
            help="only finish rewrites left pending (ClickHouse store; every run does it first)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        tenants = Tenant.objects.all()
        if options["tenant"]:
            tenants = tenants.filter(slug=options["tenant"])
            if not tenants:
                raise CommandError(f"No tenant {options['tenant']!r}.")
        store = event_store()
        try:
            store.require_rewrites("Re-pricing stored events")
        except RewriteUnavailable as exc:
            raise CommandError(exc.message) from None
        if isinstance(store, ClickHouseStore):
            finished = store_rewrites_resume(store=store)
            if finished or options["resume"]:
                self.stdout.write(f"{finished:,} pending rewrites finished.")
        if options["resume"]:
            return
        if not options["unpriced"] and not options["start"]:
            raise CommandError("Give --unpriced, or --start (and optionally --end).")
        for tenant in tenants:
            if options["unpriced"] and not options["start"]:
                report = usage_reprice_unpriced(tenant=tenant)
            else:
                tz = tenant_zone(tenant)
                try:
                    start = parse_moment(options["start"], tz=tz, name="--start")
                    end = (
                        parse_moment(options["end"], tz=tz, name="--end")
                        if options["end"]
                        else timezone.now()
                    )
                except DomainError as exc:
                    raise CommandError(exc.message) from None

                def progress(done: int, total: int, slug: str = tenant.slug) -> None:
                    self.stderr.write(f"  {slug}: {done:,}/{total:,} events")

                report = usage_reprice(
                    tenant=tenant,
                    start=start,
                    end=end,
                    only_unpriced=options["unpriced"],
                    progress=progress,
                )
            self.stdout.write(
                f"{tenant.slug}: {report.examined:,} examined, {report.changed:,} re-priced, "
                f"{report.still_unpriced:,} still unpriced, {report.hours_rebuilt:,} hours of rollups rebuilt."
            )
