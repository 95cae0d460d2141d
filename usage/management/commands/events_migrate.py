from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from costmon.core.models import Tenant
from usage.eventstore.clickhouse import ClickHouseStore
from usage.eventstore.current import event_store
from usage.eventstore.migrate import CHUNK, MigrateReport, events_migrate
from usage.management.tenants import tenants_chosen


class Command(BaseCommand):
    help = (
        "Copy the raw events kept in PostgreSQL into the ClickHouse event store named by "
        "COSTMON_EVENT_STORE_URL (and COSTMON_CLICKHOUSE_SHARDS). Idempotent and resumable: "
        "run it again after a stop, and once more after switching, to copy what arrived meanwhile."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--to", required=True, choices=["clickhouse"])
        parser.add_argument("--tenant", help="one tenant's slug (default: every tenant)")
        parser.add_argument("--chunk", type=int, default=CHUNK, help="events per read")

    def handle(self, *args: Any, **options: Any) -> None:
        store = event_store()
        if not isinstance(store, ClickHouseStore):
            raise CommandError(
                "Set COSTMON_EVENT_STORE_URL=clickhouse://host:9000/database for this command "
                "(and run `manage.py clickhouse_schema` first)."
            )
        if options["chunk"] < 1:
            raise CommandError("--chunk must be at least 1.")
        tenants = tenants_chosen(options["tenant"])
        store.create_schema()
        started = time.monotonic()

        def progress(tenant: Tenant, report: MigrateReport) -> None:
            rate = report.examined / max(time.monotonic() - started, 1e-6)
            self.stdout.write(
                f"{tenant.slug}: {report.examined} events read, {report.copied} copied "
                f"({rate:,.0f} events/s)"
            )

        report = events_migrate(
            store=store, tenants=tenants, chunk=options["chunk"], progress=progress
        )
        self.stdout.write(
            f"Done: {report.examined} events read, {report.copied} copied, "
            f"{report.days_skipped} tenant-days already complete."
        )
        self.stdout.write(f"The store's rollups: {report.rollup_keys} keys changed.")
