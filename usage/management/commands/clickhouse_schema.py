from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from usage.eventstore.chrows import buffer_sql, table_sql
from usage.eventstore.clickhouse import ClickHouseStore
from usage.eventstore.current import event_store


class Command(BaseCommand):
    help = (
        "Create the ClickHouse event store's database, events table and its buffer on every shard "
        "(COSTMON_EVENT_STORE_URL and COSTMON_CLICKHOUSE_SHARDS); safe to run again. "
        "--print shows the statement instead."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--print", action="store_true", help="print the CREATE TABLE statements only"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        store = event_store()
        if not isinstance(store, ClickHouseStore):
            raise CommandError(
                "COSTMON_EVENT_STORE_URL is not a clickhouse:// URL: the events are in PostgreSQL."
            )
        if options["print"]:
            self.stdout.write(table_sql(store.shards[0].database))
            self.stdout.write(buffer_sql(store.shards[0].database))
            return
        store.create_schema()
        for shard in store.shards:
            self.stdout.write(f"{shard.address}/{shard.database}: usage_events (buffered) ready")
