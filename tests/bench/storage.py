"""Bytes per stored event (tests/bench/run.py)."""

from __future__ import annotations

from tests.bench.harness import Context, Row, say


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
            key="storage",
        ),
        Row("  of which the table itself", f"{heap / n:,.0f} bytes", "", None, key="table"),
        Row(
            "  of which the tag-set dictionary",
            f"{tag_sets / n:,.1f} bytes",
            "",
            None,
            key="tag sets",
        ),
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
