from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from costmon.core.models import Tenant
from usage.eventstore.base import StoreUnavailable
from usage.eventstore.chrebuild import RollupReport, rollups_rebuild
from usage.eventstore.clickhouse import ClickHouseStore
from usage.eventstore.current import event_store
from usage.management.tenants import moment_option, tenants_chosen


class Command(BaseCommand):
    help = (
        "Recompute the ClickHouse event store's hourly rollups from its events and add the "
        "difference (after ClickHouse stopped abnormally with the buffer on, or an insert that "
        "failed between the events and their sums). Idempotent; months whose events retention "
        "dropped keep their rollups."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--tenant", help="one tenant's slug (default: every tenant)")
        parser.add_argument("--since", help="ISO date or time (UTC unless given): from this hour")
        parser.add_argument("--until", help="ISO date or time (UTC unless given): to this hour")

    def handle(self, *args: Any, **options: Any) -> None:
        store = event_store()
        if not isinstance(store, ClickHouseStore):
            raise CommandError(
                "Only the ClickHouse event store keeps rollups of its own: set "
                "COSTMON_EVENT_STORE_URL=clickhouse://host:9000/database."
            )
        since = moment_option(options["since"], "--since")
        until = moment_option(options["until"], "--until")
        if since and until and since >= until:
            raise CommandError("--since must be before --until.")
        tenants = tenants_chosen(options["tenant"])
        started = time.monotonic()

        def progress(tenant: Tenant, month: int, report: RollupReport) -> None:
            self.stdout.write(
                f"{tenant.slug} {month // 100}-{month % 100:02d}: {report.months_rebuilt} months "
                f"rebuilt, {report.months_kept} kept (no events), {report.keys_changed} keys "
                f"changed ({time.monotonic() - started:.1f} s)"
            )

        total = RollupReport()
        try:
            for tenant in tenants:
                report = rollups_rebuild(store, tenant, since=since, until=until, progress=progress)
                for name, value in report.__dict__.items():
                    setattr(total, name, getattr(total, name) + value)
        except StoreUnavailable as exc:
            raise CommandError(f"{exc} Nothing is lost; run the command again.") from None
        self.stdout.write(
            f"Done: {len(tenants)} tenants, {total.months_rebuilt} months rebuilt, "
            f"{total.months_kept} kept (no events), {total.keys_changed} keys changed."
        )
