from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from usage.eventstore.base import StoreUnavailable
from usage.eventstore.clickhouse import ClickHouseStore
from usage.eventstore.current import event_store
from usage.eventstore.rebalance import CHUNK, Move, Rebalance, RebalanceReport, moves, old_shards
from usage.management.tenants import tenants_chosen


class Command(BaseCommand):
    help = (
        "After adding ClickHouse shards: copy each tenant whose shard changes from its old "
        "server (--from-shards, the list as it was) to its new one (the current settings). "
        "Idempotent and resumable; --delete-moved then removes them from their old servers."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--from-shards",
            required=True,
            help="the shards before the change: host:port[,host:port...], shard 0 first",
        )
        parser.add_argument("--tenant", help="one tenant's slug (default: every tenant)")
        parser.add_argument("--chunk", type=int, default=CHUNK, help="rows per read")
        parser.add_argument(
            "--delete-moved",
            action="store_true",
            help="then delete the moved tenants' rows from their old servers",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        store = event_store()
        if not isinstance(store, ClickHouseStore):
            raise CommandError(
                "Set COSTMON_EVENT_STORE_URL=clickhouse://host:9000/database (and "
                "COSTMON_CLICKHOUSE_SHARDS) to the new shard list for this command."
            )
        if options["chunk"] < 1:
            raise CommandError("--chunk must be at least 1.")
        try:
            old = old_shards(options["from_shards"], store.shards[0].database)
        except ValueError as exc:
            raise CommandError(f"--from-shards: {exc}") from None
        tenants = tenants_chosen(options["tenant"])
        move_list = moves(old, store.shards, tenants)
        self.stdout.write(
            f"{len(move_list)} of {len(tenants)} tenants change shard "
            f"({len(old)} shards before, {len(store.shards)} now)."
        )
        started = time.monotonic()

        def progress(move: Move, report: RebalanceReport) -> None:
            rate = report.read / max(time.monotonic() - started, 1e-6)
            self.stdout.write(
                f"{move.tenant.slug} ({move.source_address} -> {move.target_address}): "
                f"{report.read} rows read, {report.copied} copied ({rate:,.0f} rows/s)"
            )

        rebalance = Rebalance(store, old, chunk=options["chunk"], progress=progress)
        try:
            store.create_schema()
            report = rebalance.run(move_list, delete=options["delete_moved"])
        except StoreUnavailable as exc:
            raise CommandError(f"{exc} Nothing is lost; run the command again.") from None
        self.stdout.write(
            f"Done: {report.tenants_moved} tenants moved, {report.read} rows read, "
            f"{report.copied} copied, {report.months_skipped} tenant-months already complete."
        )
        self.stdout.write(f"The store's rollups: {report.rollup_keys} keys changed.")
        if options["delete_moved"]:
            self.stdout.write(f"Deleted {len(report.deleted)} tenants from their old shards.")
        names = {t.pk: t.slug for t in tenants}
        if report.pending:
            pending = ", ".join(names[pk] for pk in report.pending)
            self.stdout.write(f"Deletion still running on their old shard (a mutation): {pending}")
        if report.kept:
            kept = ", ".join(names[pk] for pk in report.kept)
            raise CommandError(
                f"Not deleted (rows reached their old shard during the run; run again): {kept}"
            )
