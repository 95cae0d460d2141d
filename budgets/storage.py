"""Where the budgets app depends on the database engine, and nowhere else: the tenant's locks
(PostgreSQL advisory locks; on SQLite, the embedded default with one writer, a process lock or
nothing) and the bulk delete of settled reservation holds."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

from django.db import connection, transaction
from django.db.models import Q

from budgets.models import ReservationHold
from usage.storage import ingest_lock as ingest_lock  # usage's lock, taken here by budgets

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
    rows deleted. Call in the tenant's context."""
    holds = ReservationHold.objects.for_tenant(tenant_id)
    if _postgresql():
        # Two array parameters: a batch of thousands of events costs one short statement.
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {ReservationHold._meta.db_table} WHERE tenant_id = %s "  # noqa: S608
                "AND (reservation_id = ANY(%s) OR event_id = ANY(%s))",
                [tenant_id, list(reservation_ids), list(event_ids)],
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
