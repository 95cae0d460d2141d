"""The tenant's ingest lock and the transaction that stores a batch's events, for PostgreSQL and
for SQLite (with `usage.storage`, the only modules of the usage app that ask which database they
talk to).

On PostgreSQL the events' transaction is one psycopg pipeline (`write_transaction`): one round
trip for BEGIN, the lock, the insert, the receivers' writes and COMMIT when nothing reads an
answer before the end (`usage.newevents`), two when the insert's answer is read. SQLite, and any
caller's own transaction, get a plain `atomic` block.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from django.db import connection, transaction
from psycopg.generators import send as psycopg_send

# The tenant's ingest lock: (INGEST_LOCK_NAMESPACE, tenant id) as a PostgreSQL advisory lock.
# Ingest holds it shared; re-pricing, deletes and the budgets app's counter rebuild hold it
# exclusively, so they never see a batch half-way.
INGEST_LOCK_NAMESPACE = 7401

# psycopg.pq.TransactionStatus.IDLE: no transaction open.
_IDLE = 0


class _AbortedAfterRaised(logging.Filter):
    """psycopg warns ("error ignored terminating ...: pipeline aborted") when a pipeline whose
    block raised a statement's error cannot end cleanly. That error is the one raised to the
    caller; the warning only repeats it, on every resend of an event (`usage.newevents`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (
            record.msg == "error ignored terminating %r: %s"
            and len(args) == 2
            and isinstance(args[1], psycopg.errors.PipelineAborted)
        )


logging.getLogger("psycopg").addFilter(_AbortedAfterRaised())


def _postgresql() -> bool:
    return connection.vendor == "postgresql"


# The lock's second key: the tenant id, kept within an int4.
_KEY_MODULUS = 2_000_000_000


def _lock_key(tenant_id: int) -> list[int]:
    return [INGEST_LOCK_NAMESPACE, tenant_id % _KEY_MODULUS]


def shared_lock_sql(tenant_id: str) -> str:
    """SQL that takes the ingest lock shared until the transaction ends, of the tenant whose id
    is the SQL expression `tenant_id` (the one-trip function takes it so, `usage.newevents`)."""
    return (
        f"pg_advisory_xact_lock_shared({INGEST_LOCK_NAMESPACE}, "
        f"mod({tenant_id}, {_KEY_MODULUS})::int4)"
    )


# --- locks ------------------------------------------------------------------------------------


class IngestLock:
    """The tenant's ingest lock as `ingest_lock` holds it: taken at once (a session lock,
    released by `ingest_lock`), or (`deferred`) by `write_transaction` as a transaction-level
    lock, in the same round trip as the transaction's first statements and released by its
    COMMIT or ROLLBACK (no round trip of its own)."""

    __slots__ = ("held", "shared", "tenant_id", "transactional")

    def __init__(self, tenant_id: int, *, shared: bool, transactional: bool = False) -> None:
        self.tenant_id, self.shared, self.held = tenant_id, shared, False
        self.transactional = transactional

    def sql(self, verb: str) -> str:
        kind = "_shared" if self.shared else ""
        scope = "_xact" if self.transactional and verb == "lock" else ""
        return f"SELECT pg_advisory{scope}_{verb}{kind}(%s, %s)"

    def take(self, cursor: Any, *, prepare: bool = False) -> None:
        """`prepare`: `cursor` is psycopg's own (a pipeline's), the statement prepared once
        per connection."""
        if prepare:
            cursor.execute(self.sql("lock"), _lock_key(self.tenant_id), prepare=True)
        else:
            cursor.execute(self.sql("lock"), _lock_key(self.tenant_id))
        self.held = True


@contextlib.contextmanager
def ingest_lock(tenant_id: int, *, shared: bool, deferred: bool = False) -> Iterator[IngestLock]:
    """The tenant's ingest lock. Not `deferred`: for this session, across transactions, until
    the block ends (a rewrite, the counter rebuild, the sweeper hold it exclusively; a bulk
    load shared). `deferred`: taken by the `write_transaction` given the lock, for that
    transaction only (ingest: its COMMIT releases it, so a counter rebuild can run between a
    batch's commit and its counter update; the rebuild's single Redis script and the update's
    marker keep that exact, see `budgets.counters.counters_reconcile`)."""
    lock = IngestLock(tenant_id, shared=shared, transactional=deferred)
    if not _postgresql():
        yield lock  # SQLite serialises writers already
        return
    if not deferred:
        with connection.cursor() as cursor:
            lock.take(cursor)
    try:
        yield lock
    finally:
        if lock.held and not lock.transactional:
            with connection.cursor() as cursor:
                cursor.execute(lock.sql("unlock"), _lock_key(tenant_id))


class _OneWrite(psycopg.Pipeline):
    """A pipeline that sends its statements in one write, when it syncs or must read an answer.

    psycopg's own sends each statement as soon as it is executed, so the server wakes for each
    of a transaction's statements while the client still builds the next. For the few cheap
    statements of a small group of events (BEGIN, the lock, the one-trip insert, the receivers'
    writes, COMMIT) those wake-ups cost more than the overlap wins: with single events paced at
    620 requests/s, sending them together took the server's p50 from 5.32 to 5.08 ms and its
    p90 from 9.59 to 8.29 ms (medians of 8 alternated rounds, docs/benchmark.md). A big batch
    keeps psycopg's pipeline: its insert runs while the process computes the receivers' writes.
    The queued statements then go out in one write of libpq's buffer (`_send_queued`), not one
    write each as psycopg sends them: 750 requests/s, p50 5.31 -> 5.04 ms, p90 8.34 -> 7.83.

    It overrides three of psycopg's private generators: `_enqueue_sync` (a sync is due: the
    next communication sends), `_communicate_gen` (sends only then) and `_fetch_gen` (reading
    an answer sends what is queued first). `ONE_WRITE` is False, and psycopg's pipeline used,
    if a psycopg release lacks them (tests/usage/test_ingest_one_write.py checks the effect).
    The sync that writes the statements is libpq's own call, made with the GIL released where
    possible (`PIPELINE_SYNC`)."""

    _send_due = False
    _synced = False  # what was sent last ended with the sync: the server flushes its answers

    def _enqueue_sync(self) -> None:
        super()._enqueue_sync()
        self._send_due = True

    def _communicate_gen(self) -> Any:
        if not self._send_due:
            return  # queued in psycopg's command queue, sent with the sync
        self._send_due = False
        yield from self._send_queued()
        self._synced = True

    def _fetch_gen(self, *, flush: bool) -> Any:
        if self.command_queue:  # an answer is read before the sync: send what waits first
            yield from self._send_queued()
            self._synced = False
        # psycopg's exit asks the server to flush after its sync too: a message, and a write,
        # more than needed.
        yield from super()._fetch_gen(flush=flush and not self._synced)

    def _send_queued(self) -> Any:
        """Hand every queued statement to libpq, then write its buffer: one write for a small
        group. psycopg's `pipeline_communicate` waits for the socket before each statement and
        writes each one on its own (a poll and a write per statement, the GIL released and
        taken again each time); it also reads the answers come so far, which are all read at
        the end here, the first error kept (a statement's own, not the "pipeline aborted" of
        those after it). Statements queue in libpq's buffer without a write until it is over
        64 KB (ingest's small groups are a few KB); the sync writes the buffer."""
        queue, pgconn = self.command_queue, self.pgconn
        sync = pgconn.pipeline_sync
        while queue:
            command = queue.popleft()
            if PIPELINE_SYNC is not None and command == sync:
                if PIPELINE_SYNC(pgconn.pgconn_ptr) != 1:  # type: ignore[attr-defined]
                    message = pgconn.error_message.decode(errors="replace").strip()
                    raise psycopg.OperationalError(f"failed to sync pipeline: {message}")
            else:
                command()
        yield from psycopg_send(pgconn)


def _pipeline_sync_without_the_gil() -> Callable[[int | None], int] | None:
    """libpq's PQpipelineSync, called through ctypes, which releases the GIL for the call; None
    where that libpq cannot be told for sure (psycopg's own call is made then).

    The sync writes libpq's buffer to the socket. psycopg's binary build makes the call holding
    the GIL, and a write to a local PostgreSQL is not short: the kernel delivers the bytes to
    the server's socket and wakes its process within the write (33 us a group alone), and may
    run that process on the writer's core before the writer. The process's request threads
    wait for the GIL all the while: in py-spy's `--gil` samples of the workers, with single
    events paced at 450 requests/s, a fifth of all the Python time was the committers'
    writes. Without the GIL, 8 alternated rounds at 480 requests/s (`ab_single.py`) gave a
    server p50 of 5.14 ms against 8.18 ms, and 0.2 ms less of gunicorn's CPU a request, on a
    slow moment of the machine; on a faster or a saturated one, within the noise
    (docs/benchmark.md).

    The library is the one libpq mapped into this process (Linux's /proc/self/maps; psycopg's
    binary build brings its own copy), and only if it is the version psycopg reports: calling
    another copy's function on psycopg's connection would be wrong."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            # address, permissions, offset, device, inode, path (if the mapping is a file's)
            mapped = (line.split(maxsplit=5)[5:] for line in maps)
            paths = {
                path[0].rstrip()
                for path in mapped
                if path and os.path.basename(path[0]).startswith(("libpq.so", "libpq-"))
            }
    except OSError:
        return None
    if len(paths) != 1:
        return None
    try:
        libpq = ctypes.CDLL(paths.pop())  # CDLL, not PyDLL: calls release the GIL
        if libpq.PQlibVersion() != psycopg.pq.version():
            return None
        sync = libpq.PQpipelineSync
    except (OSError, AttributeError):
        return None
    sync.argtypes = [ctypes.c_void_p]
    sync.restype = ctypes.c_int
    return sync  # type: ignore[no-any-return]


# None off Linux, or with more than one libpq loaded.
PIPELINE_SYNC = _pipeline_sync_without_the_gil()

ONE_WRITE = all(
    callable(getattr(psycopg.Pipeline, name, None))
    for name in ("_enqueue_sync", "_communicate_gen", "_fetch_gen")
)


@contextlib.contextmanager
def _pipeline(raw: psycopg.Connection[Any], *, one_write: bool) -> Iterator[None]:
    """psycopg's pipeline on `raw`, or (`one_write`) a `_OneWrite` one: `Connection.pipeline`
    uses the pipeline it finds set (its own when nested) and clears it at the end."""
    installed = None
    if one_write and ONE_WRITE and raw._pipeline is None:
        installed = raw._pipeline = _OneWrite(raw)
    try:
        with raw.pipeline():
            yield
    finally:
        if installed is not None and raw._pipeline is installed and installed.level == 0:
            raw._pipeline = None  # psycopg's own clean-up is skipped when entering fails


def pipeline_usable() -> bool:
    """Whether `write_transaction` sends its transaction as one pipeline: PostgreSQL, and not
    inside a caller's transaction (there it is a savepoint of that one)."""
    return _postgresql() and not connection.in_atomic_block


@contextlib.contextmanager
def write_transaction(
    lock: IngestLock | None = None, *, pipeline: bool = True, one_write: bool = False
) -> Iterator[None]:
    """A transaction (Django's `atomic`, so `on_commit` and nested blocks behave as usual) that
    on PostgreSQL costs two round trips when nothing in it reads a result before the end but
    one statement: BEGIN, the lock (if given and not held yet) and the statements up to the
    first read go in the first; the rest and COMMIT in the second (psycopg 3's pipeline mode,
    which sends statements without waiting for each one's answer).

    BEGIN and COMMIT are sent as statements of the pipeline: psycopg would sync the pipeline
    for its own BEGIN and again to change autocommit. A statement in the block that reads its
    result early (an ORM `create`, `fetchone`) costs a round trip more and is otherwise fine.
    Errors of the pipeline are raised when it ends, as Django's database errors; the
    transaction is then rolled back. Inside a caller's transaction, or on SQLite: a plain
    `atomic` block (a savepoint there); so too with `pipeline=False` (a block that must read
    answers as it goes, such as the ClickHouse store's duplicate check under its lock).
    `one_write`: the pipeline's statements go to the server together (`_OneWrite`), for a
    transaction of a few cheap statements."""
    if not (pipeline and pipeline_usable()):
        with transaction.atomic():
            if lock is not None and not lock.held and _postgresql():
                with connection.cursor() as cursor:
                    lock.take(cursor)
            yield
        return
    with transaction.atomic():
        raw = connection.connection
        raw.autocommit = True  # Django's atomic set it off; no statement was sent for that
        try:
            with connection.wrap_database_errors, _pipeline(raw, one_write=one_write):
                statements = psycopg.Cursor(raw)
                statements.execute("BEGIN")
                if lock is not None and not lock.held:
                    lock.take(statements, prepare=True)
                yield
                statements.execute("COMMIT")
        except BaseException:
            if lock is not None and lock.transactional:
                lock.held = False  # released by the rollback: a retry takes it again
            if not raw.closed and raw.info.transaction_status != _IDLE:
                # A broken connection cannot roll back: the error that broke it is the one to
                # raise, and Django closes the connection when its atomic block ends.
                with contextlib.suppress(psycopg.Error):
                    raw.execute("ROLLBACK")
            raise
        finally:
            if not raw.closed and raw.info.transaction_status == _IDLE:
                raw.autocommit = False  # as Django's atomic left it; its COMMIT is then a no-op


def rewrite_lock(tenant_id: int) -> None:
    """Take the tenant's ingest lock exclusively until the current transaction ends (re-pricing,
    deletes, resets: rewrites of stored usage)."""
    if not _postgresql():
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", _lock_key(tenant_id))
