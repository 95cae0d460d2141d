"""PostgreSQL: the raw events table in monthly partitions (declarative, by range of occurred_at).

A partition holds one UTC calendar month, named `usage_usageevent_pYYYYMM`. They are created
ahead by beat (`usage.tasks.create_event_partitions`: this month and the next two) and on demand
for any month a batch or the bulk loader brings, in the writer's transaction, so no event is
ever rejected for lack of a partition (there is no DEFAULT partition: rows in it would keep
their month from being created or dropped later without a scan). Retention drops whole
partitions that end before its cutoff (`drop_partitions_before`): no row is ever deleted.

SQLite (the embedded default) has no partitions: these functions are only called on
PostgreSQL (`usage.storage` decides).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from costmon.core.rls import policy_sql

TABLE = "usage_usageevent"
# (PARTITION_LOCK_NAMESPACE, YYYYMM) as a transaction advisory lock: one creator per month.
PARTITION_LOCK_NAMESPACE = 7402


def month_start(moment: datetime) -> datetime:
    """The first instant of the moment's UTC month."""
    m = moment.astimezone(UTC)
    return datetime(m.year, m.month, 1, tzinfo=UTC)


def next_month(month: datetime) -> datetime:
    return datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)


def partition_name(month: datetime) -> str:
    return f"{TABLE}_p{month.year:04d}{month.month:02d}"


def partition_month(name: str) -> datetime | None:
    """The month of a partition's name (None: not one of ours)."""
    suffix = name.removeprefix(f"{TABLE}_p")
    if len(suffix) != 6 or not suffix.isdigit():
        return None
    return datetime(int(suffix[:4]), int(suffix[4:]), 1, tzinfo=UTC)


def partition_exists(cursor: Any, month: datetime) -> bool:
    # A query of pg_class, not to_regclass(): that one reads the backend's catalog cache,
    # which an advisory lock does not refresh, so it can miss a partition another transaction
    # has just committed (two seeding processes, the same new month: "already exists").
    cursor.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.relname = %s AND n.nspname = current_schema())",
        [partition_name(month)],
    )
    return bool(cursor.fetchone()[0])


def create_partition(cursor: Any, month: datetime) -> bool:
    """Create and attach the month's partition unless it exists; whether it was created.

    A plain table first, then ATTACH: attaching takes only a SHARE UPDATE EXCLUSIVE lock on
    the events table (reads and inserts go on), where CREATE TABLE ... PARTITION OF would take
    an exclusive one until the transaction ends. The new table gets the same row-level
    security as the events table, so it fails closed when read directly too.
    """
    name = partition_name(month)
    cursor.execute(
        "SELECT pg_advisory_xact_lock(%s, %s)",
        [PARTITION_LOCK_NAMESPACE, month.year * 100 + month.month],
    )
    if partition_exists(cursor, month):  # created by another transaction meanwhile
        return False
    start, end = month.isoformat(), next_month(month).isoformat()
    statements = [
        f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)",
        f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES FROM ('{start}') TO ('{end}')",
        f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {name} FORCE ROW LEVEL SECURITY",
        *policy_sql(name, shared_rows=False),
    ]
    for statement in statements:
        cursor.execute(statement)
    return True


def partitions(cursor: Any) -> list[tuple[str, datetime]]:
    """The events table's partitions (name, month), oldest first."""
    cursor.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(%s)",
        [TABLE],
    )
    found = [(name, partition_month(name)) for (name,) in cursor.fetchall()]
    return sorted((name, month) for name, month in found if month is not None)


def drop_partitions_before(
    cursor: Any, cutoff: datetime, *, concurrently: bool
) -> list[tuple[str, int]]:
    """Drop every partition whose month ends at or before `cutoff`: (name, rows) of each.

    Whole months only: a month that ends after the cutoff is kept entirely. The rows are
    counted first (for the log; run unscoped, as row-level security would hide them), then each
    partition is detached and dropped. `concurrently` (outside a transaction only): DETACH ...
    CONCURRENTLY, which never blocks reads or inserts on the events table; otherwise a plain
    DETACH, which holds the table exclusively until the transaction ends (brief: no rows move).
    """
    old = [name for name, month in partitions(cursor) if next_month(month) <= cutoff]
    counts = []
    for name in old:
        cursor.execute(f"SELECT count(*) FROM {name}")  # noqa: S608 - our own partition name
        counts.append((name, int(cursor.fetchone()[0])))
    if not concurrently:
        # Rows written earlier in this transaction (tests, a caller's own transaction) have
        # their deferred foreign key checks pending, and a table with pending checks cannot be
        # dropped: run them now, then defer again (Django's foreign keys are INITIALLY DEFERRED).
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    how = " CONCURRENTLY" if concurrently else ""
    for name in old:
        cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {name}{how}")
        cursor.execute(f"DROP TABLE {name}")
    if not concurrently:
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
    return counts


class KnownMonths:
    """The months whose partition this process knows to exist, so a batch of this month's
    events costs no catalog query. A month is trusted only until retention could drop it (its
    end plus the retention period); after that it is checked again.

    A month this process created is trusted once its transaction commits (`remember` from an
    on-commit hook); until then, and forever if it rolled back, it is checked again.
    """

    def __init__(self) -> None:
        self._until: dict[datetime, float] = {}
        self.created_here: set[datetime] = set()

    def missing(self, months: Iterable[datetime]) -> list[datetime]:
        now = time.time()
        return sorted(m for m in set(months) if self._until.get(m, 0.0) <= now)

    def remember(self, month: datetime, retention_days: int) -> None:
        if retention_days:
            until = (next_month(month) + timedelta(days=retention_days)).timestamp()
        else:
            until = float("inf")
        self._until[month] = until
        self.created_here.discard(month)

    def forget(self) -> None:
        self._until.clear()
