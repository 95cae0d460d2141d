"""Where the budgets app depends on the database engine, and nowhere else: the tenant's locks
(PostgreSQL advisory locks; on SQLite, the embedded default with one writer, a process lock or
nothing), the bulk delete of settled reservation holds, and the insert of an ingest batch's
counter update."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from budgets.models import CounterUpdate, ReservationHold
from costmon.core.tenancy import raw_cursor
from usage.transactions import ingest_lock as ingest_lock  # usage's lock, taken here by budgets

RESERVATION_LOCK_NAMESPACE = 7402
_local_lock = threading.Lock()  # SQLite: serialises this process's checks (one writer anyway)


def _postgresql() -> bool:
    return connection.vendor == "postgresql"


def _key(namespace: int, tenant_id: int) -> list[int]:
    return [namespace, tenant_id % 2_000_000_000]


@contextlib.contextmanager
def reservation_locked_transaction(tenant_id: int) -> Iterator[None]:
    """A transaction holding the tenant's reservation lock until it ends."""
    if not _postgresql():
        with _local_lock, transaction.atomic():
            yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)",
                _key(RESERVATION_LOCK_NAMESPACE, tenant_id),
            )
        yield


@contextlib.contextmanager
def reservation_lock_held(tenant_id: int) -> Iterator[None]:
    """The same lock outside a transaction, for as long as the block runs (the rebuild)."""
    if not _postgresql():
        with _local_lock:
            yield
        return
    key = _key(RESERVATION_LOCK_NAMESPACE, tenant_id)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", key)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", key)


def holds_delete_settled(
    *, tenant_id: int, reservation_ids: Sequence[str], event_ids: Sequence[str]
) -> int:
    """Delete the tenant's holds with one of these reservation ids or event ids; the number of
    rows deleted. Call in the tenant's context.

    PostgreSQL: the statement first takes the tenant's reservation lock (till it ends), so it
    comes wholly before or after a counter rebuild's move of the holds into Redis (which holds
    the lock): after it, the holds are gone here and the caller settles them in Redis."""
    holds = ReservationHold.objects.for_tenant(tenant_id)
    if _postgresql():
        # Two array parameters: a batch of thousands of events costs one short statement.
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {ReservationHold._meta.db_table} WHERE tenant_id = %s "  # noqa: S608
                "AND (SELECT pg_advisory_xact_lock(%s, %s)) IS NOT NULL "
                "AND (reservation_id = ANY(%s) OR event_id = ANY(%s))",
                [
                    tenant_id,
                    *_key(RESERVATION_LOCK_NAMESPACE, tenant_id),
                    list(reservation_ids),
                    list(event_ids),
                ],
            )
            return int(cursor.rowcount)
    if not holds.exists():  # the usual case: nothing held, nothing to match
        return 0
    q = Q()
    if reservation_ids:
        q |= Q(reservation_id__in=list(reservation_ids))
    if event_ids:
        q |= Q(event_id__in=list(event_ids))
    return holds.filter(q)._raw_delete(ReservationHold.objects.db)


def counter_update_insert(tenant_id: int, payload: str) -> Callable[[], int]:
    """Write an ingest batch's counter update; return how to read its id once the transaction
    has committed. PostgreSQL: the id is read after the commit, so the insert rides in the
    ingest pipeline's last round trip (`usage.transactions.write_transaction`) instead of costing
    one of its own. SQLite: the ORM's insert."""
    if not _postgresql():
        row = CounterUpdate.objects.create(tenant_id=tenant_id, payload=payload)
        return lambda: row.pk
    # psycopg's own cursor (the RLS settings synced first, as for any query): no Django
    # cursor wrapper per batch, and the statement is prepared once per connection.
    cursor = raw_cursor(connection)
    cursor.execute(
        f"INSERT INTO {CounterUpdate._meta.db_table} (tenant_id, created_at, payload) "  # noqa: S608 - our table
        "VALUES (%s, %s, %s) RETURNING id",
        [tenant_id, timezone.now(), payload],
        prepare=True,
    )

    def read() -> int:
        with cursor:
            return int(cursor.fetchone()[0])

    return read
