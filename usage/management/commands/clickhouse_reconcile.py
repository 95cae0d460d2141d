from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from usage.eventstore.base import StoreUnavailable
from usage.eventstore.clickhouse import ClickHouseStore
from usage.eventstore.current import event_store
from usage.management.tenants import moment_option, tenants_chosen
from usage.storereconcile import StoreReconcileReport, store_reconcile


class Command(BaseCommand):
    help = (
        "Repair PostgreSQL's rollups (by model, by tag) of the hours they are short of the "
        "ClickHouse store's, as a PostgreSQL COMMIT lost after ClickHouse took a batch leaves "
        "them, and have the budget counters rebuilt. What the periodic task does over the last "
        "COSTMON_CLICKHOUSE_RECONCILE_HOURS hours, by hand over any. Idempotent."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--tenant", help="one tenant's slug (default: every tenant)")
        window = parser.add_mutually_exclusive_group()
        window.add_argument(
            "--hours", type=int, help="the last this many hours (default: the setting's)"
        )
        window.add_argument("--since", help="ISO date or time (UTC unless given): from this hour")

    def handle(self, *args: Any, **options: Any) -> None:
        store = event_store()
        if not isinstance(store, ClickHouseStore):
            raise CommandError(
                "Only the ClickHouse event store needs it: set "
                "COSTMON_EVENT_STORE_URL=clickhouse://host:9000/database."
            )
        hours = options["hours"]
        if hours is None:
            hours = settings.COSTMON_CLICKHOUSE_RECONCILE_HOURS
        if hours < 1:
            raise CommandError("--hours must be 1 or more.")
        since = moment_option(options["since"], "--since") or (
            timezone.now() - timedelta(hours=hours)
        )
        tenant = tenants_chosen(options["tenant"])[0] if options["tenant"] else None
        started = time.monotonic()
        self.stdout.write(f"Comparing the hours from {since:%Y-%m-%d %H}:00 UTC ...")

        def progress(tenant: Any, repaired: list[datetime]) -> None:
            where = (
                f"{len(repaired)} hours repaired ({repaired[0]:%Y-%m-%d %H}:00 to "
                f"{repaired[-1]:%Y-%m-%d %H}:00 UTC)"
                if repaired
                else "nothing short once locked (a batch was in flight)"
            )
            self.stdout.write(f"{tenant.slug}: {where} ({time.monotonic() - started:.1f} s)")

        try:
            report: StoreReconcileReport = store_reconcile(
                store=store, since=since, tenant=tenant, progress=progress
            )
        except StoreUnavailable as exc:
            raise CommandError(f"{exc} Nothing is lost; run the command again.") from None
        kept = (
            f"; {report.hours_kept} hours where PostgreSQL holds more left alone"
            if report.hours_kept
            else ""
        )
        self.stdout.write(
            f"Done: {report.tenants_repaired} tenants, {report.hours_repaired} hours repaired{kept}."
        )
