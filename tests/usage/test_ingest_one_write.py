"""A small group's transaction goes to PostgreSQL in one write (`usage.transactions._OneWrite`):
the server sees nothing of it until the client syncs, so it wakes once for BEGIN, the lock, the
insert, the receivers' writes and COMMIT. A big batch keeps psycopg's pipeline, which sends each
statement as it is executed."""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import DatabaseError, connection, connections

from costmon.core.tenancy import tenant_context
from tests.helpers import event, requires_postgresql
from usage import transactions
from usage.ingest import parse_batch
from usage.models import HourlyRollup, UsageEvent
from usage.services import ONE_WRITE_MAX_EVENTS, usage_record_batch
from usage.signals import batch_committing

pytestmark = [
    requires_postgresql,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("prices", "unscoped"),
]


@pytest.fixture
def observer() -> Iterator[Any]:
    """A second connection to the test database, that looks at the default one's backend."""
    other = connections.create_connection("default")
    other.ensure_connection()
    yield other.connection
    other.close()


def server_transaction_started(observer: Any) -> bool:
    """Whether the default connection's backend holds the tenant's ingest lock within half a
    second: it has received the transaction's one-trip call, which takes the lock first.
    pg_locks shows every session's locks to any role (pg_stat_activity hides another role's
    transaction)."""
    pid = connection.connection.info.backend_pid
    deadline = time.monotonic() + 0.5
    while True:
        row = observer.execute(
            "SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'advisory'", [pid]
        ).fetchone()
        if row[0] or time.monotonic() > deadline:
            return bool(row[0])
        time.sleep(0.01)


def seen_in_transaction(observer: Any, tenant: Any, ids: list[str]) -> list[bool]:
    """Store the events; while their transaction's receivers run (after the insert was
    executed, before COMMIT), whether the server has begun that transaction."""
    seen: list[bool] = []

    def look(sender: Any, **kwargs: Any) -> None:
        seen.append(server_transaction_started(observer))

    batch_committing.connect(look, dispatch_uid="test-one-write")
    try:
        usage_record_batch(tenant=tenant, events=parse_batch([event(event_id=i) for i in ids]))
    finally:
        batch_committing.disconnect(dispatch_uid="test-one-write")
    return seen


def test_a_small_group_reaches_the_server_in_one_write(acme, outsider, observer):
    usage_record_batch(tenant=acme, events=parse_batch([event(event_id="warm")]))
    assert seen_in_transaction(observer, acme, ["e1", "e2", "e3"]) == [False]
    # Stored and committed all the same, for acme only.
    assert UsageEvent.objects.for_tenant(acme).count() == 4
    assert HourlyRollup.objects.for_tenant(acme).get().calls == 4
    assert not UsageEvent.objects.for_tenant(outsider).exists()
    assert not HourlyRollup.objects.for_tenant(outsider).exists()


def test_the_setting_turns_one_write_off(acme, observer, settings):
    usage_record_batch(tenant=acme, events=parse_batch([event(event_id="warm")]))
    settings.COSTMON_INGEST_ONE_WRITE = False
    assert seen_in_transaction(observer, acme, ["e1"]) == [True]
    assert UsageEvent.objects.for_tenant(acme).count() == 2


def test_a_big_batch_is_streamed_as_psycopg_sends_it(acme, observer):
    ids = [f"b{i}" for i in range(ONE_WRITE_MAX_EVENTS + 1)]
    assert seen_in_transaction(observer, acme, ids) == [True]
    assert UsageEvent.objects.for_tenant(acme).count() == len(ids)


def test_reading_an_answer_sends_what_waits_first(acme, outsider):
    """A statement whose answer is read before the end (an ORM query) sends the statements
    queued before it, and the transaction goes on as one."""
    usage_record_batch(tenant=acme, events=parse_batch([event(event_id="e1")]))
    done: list[int] = []

    def run() -> None:
        try:
            with tenant_context(acme), transactions.write_transaction(one_write=True):
                UsageEvent.objects.for_tenant(acme).filter(event_id="e1").update(input_tokens=7)
                done.append(UsageEvent.objects.for_tenant(acme).filter(input_tokens=7).count())
        finally:
            connection.close()

    # In a thread: were the queued statements never sent, the read would wait forever.
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert done == [1]
    assert UsageEvent.objects.for_tenant(acme).get().input_tokens == 7
    assert not UsageEvent.objects.for_tenant(outsider).exists()


def test_a_failed_one_write_transaction_leaves_nothing_and_the_connection_works(acme):
    usage_record_batch(tenant=acme, events=parse_batch([event(event_id="e1")]))
    stored = UsageEvent.objects.for_tenant(acme).get()
    with (
        pytest.raises(DatabaseError),
        transactions.write_transaction(one_write=True),
        connection.cursor() as cursor,
    ):
        cursor.execute("UPDATE usage_usageevent SET input_tokens = 7 WHERE event_id = %s", ["e1"])
        cursor.execute("SELECT 1 / 0")
    assert UsageEvent.objects.for_tenant(acme).get().input_tokens == stored.input_tokens != 7
    # The connection is usable, and the next group stores in one write again.
    assert usage_record_batch(tenant=acme, events=parse_batch([event(event_id="e2")]))
    assert UsageEvent.objects.for_tenant(acme).count() == 2


def test_a_statement_error_read_while_sending_is_the_one_raised(acme):
    """A statement's error often comes back while the rest of the write is still being sent;
    then the statements after it answer "pipeline aborted" when the pipeline ends. The error
    raised must be the statement's own: ingest tells a resend by its code."""
    for after in (0, 3, 100):
        with (
            pytest.raises(DatabaseError) as raised,
            transactions.write_transaction(one_write=True),
            connection.cursor() as cursor,
        ):
            cursor.execute("SELECT 1 / 0")
            for _ in range(after):
                cursor.execute("SELECT 1")
        assert getattr(raised.value.__cause__, "sqlstate", None) == "22012", (after, raised.value)


def test_resends_in_one_write_are_reported_duplicates(acme, outsider):
    ids = [f"r{i}" for i in range(10)]
    for i in ids:
        usage_record_batch(tenant=acme, events=parse_batch([event(event_id=i)]))
    for i in ids:
        (result,) = usage_record_batch(tenant=acme, events=parse_batch([event(event_id=i)]))
        assert result.duplicate
    assert UsageEvent.objects.for_tenant(acme).count() == len(ids)
    assert HourlyRollup.objects.for_tenant(acme).get().calls == len(ids)
    assert not UsageEvent.objects.for_tenant(outsider).exists()


def test_a_pipeline_that_cannot_start_is_not_left_on_the_connection():
    """Entering fails on a closed connection; the connection must not keep the one-write
    pipeline, or psycopg would take its next statements for pipelined ones."""
    raw = psycopg.connect(connection.connection.info.dsn)
    raw.close()
    with pytest.raises(psycopg.OperationalError), transactions._pipeline(raw, one_write=True):
        pass  # pragma: no cover
    assert raw._pipeline is None


@pytest.fixture
def writes(monkeypatch) -> dict[str, int]:
    """How often a pipeline sent: by one write of libpq's buffer (`_OneWrite`), or by psycopg's
    own sending, a poll and a write per statement."""
    counted = {"one write": 0, "psycopg": 0}
    one_write = getattr(transactions, "psycopg_send", None)
    streamed = psycopg._pipeline_base.pipeline_communicate

    def sent(pgconn: Any) -> Any:
        counted["one write"] += 1
        return one_write(pgconn)  # type: ignore[misc]

    def communicated(pgconn: Any, commands: Any) -> Any:
        counted["psycopg"] += 1
        return streamed(pgconn, commands)

    monkeypatch.setattr(transactions, "psycopg_send", sent, raising=False)
    monkeypatch.setattr(psycopg._pipeline_base, "pipeline_communicate", communicated)
    return counted


def test_the_statements_of_a_small_group_are_written_together(acme, outsider, writes):
    usage_record_batch(tenant=acme, events=parse_batch([event(event_id="warm")]))
    writes.update({"one write": 0, "psycopg": 0})
    usage_record_batch(tenant=acme, events=parse_batch([event(event_id="e1")]))
    assert writes == {"one write": 1, "psycopg": 0}
    ids = [f"b{i}" for i in range(ONE_WRITE_MAX_EVENTS + 1)]
    usage_record_batch(tenant=acme, events=parse_batch([event(event_id=i) for i in ids]))
    assert writes["one write"] == 1 and writes["psycopg"] > 0  # a big batch: psycopg's own
    assert UsageEvent.objects.for_tenant(acme).count() == len(ids) + 2
    assert not UsageEvent.objects.for_tenant(outsider).exists()


def test_a_write_bigger_than_the_buffers_goes_through(acme):
    """Statements past libpq's 64 KB and the sockets' buffers, with answers as big: writing
    them all before reading an answer must not leave both ends waiting for each other."""
    text = "x" * 4000
    with (
        transactions.write_transaction(one_write=True),
        connection.cursor() as cursor,
    ):
        for _ in range(1500):  # 6 MB each way
            cursor.execute("SELECT %s::text", [text])
        cursor.execute("SELECT length(%s::text)", [text])
        assert cursor.fetchone() == (4000,)


@pytest.fixture
def syncs(monkeypatch) -> list[int | None]:
    """The connections (libpq pointers) synced through `transactions.PIPELINE_SYNC`."""
    synced: list[int | None] = []
    sync = transactions.PIPELINE_SYNC
    assert sync is not None  # Linux, one libpq loaded: the sync releases the GIL

    def counted(pgconn_ptr: int | None) -> int:
        synced.append(pgconn_ptr)
        return sync(pgconn_ptr)

    monkeypatch.setattr(transactions, "PIPELINE_SYNC", counted)
    return synced


def test_the_sync_that_writes_a_small_group_releases_the_gil(acme, outsider, syncs):
    """libpq's PQpipelineSync writes the group to the socket; called through ctypes' CDLL (not
    PyDLL, whose calls hold the GIL), the process's other threads run meanwhile."""
    found: Any = transactions._pipeline_sync_without_the_gil()
    assert not found._flags_ & ctypes._FUNCFLAG_PYTHONAPI  # type: ignore[attr-defined]
    usage_record_batch(tenant=acme, events=parse_batch([event(event_id="warm")]))
    syncs.clear()
    usage_record_batch(tenant=acme, events=parse_batch([event(event_id="e1")]))
    assert syncs == [connection.connection.pgconn.pgconn_ptr]  # one write, one sync
    assert UsageEvent.objects.for_tenant(acme).count() == 2
    assert HourlyRollup.objects.for_tenant(acme).get().calls == 2
    assert not UsageEvent.objects.for_tenant(outsider).exists()


@pytest.fixture
def admin() -> Iterator[Any]:
    """A connection as the tests' session user, a superuser, without the default connection's
    options (they set the application's role, which may not end another backend)."""
    with psycopg.connect(connection.connection.info.dsn, options="", autocommit=True) as conn:
        yield conn


def test_a_connection_lost_at_the_sync_stores_nothing(acme, outsider, admin, monkeypatch):
    """The server's end goes away just before the sync writes the group: an error, nothing
    stored, and the next batch is stored on a new connection."""
    usage_record_batch(tenant=acme, events=parse_batch([event(event_id="warm")]))
    sync = transactions.PIPELINE_SYNC
    assert sync is not None

    def lost(pgconn_ptr: int | None) -> int:
        pid = connection.connection.info.backend_pid
        assert admin.execute("SELECT pg_terminate_backend(%s, 5000)", [pid]).fetchone() == (True,)
        return sync(pgconn_ptr)

    monkeypatch.setattr(transactions, "PIPELINE_SYNC", lost)
    with pytest.raises(DatabaseError):
        usage_record_batch(tenant=acme, events=parse_batch([event(event_id="e1")]))
    monkeypatch.undo()
    connection.close()  # as the committer does after a failed group (close_old_connections)
    assert list(UsageEvent.objects.for_tenant(acme).values_list("event_id", flat=True)) == ["warm"]
    assert HourlyRollup.objects.for_tenant(acme).get().calls == 1
    usage_record_batch(tenant=acme, events=parse_batch([event(event_id="e1")]))
    assert UsageEvent.objects.for_tenant(acme).count() == 2
    assert not UsageEvent.objects.for_tenant(outsider).exists()


def test_without_the_ctypes_sync_psycopg_syncs(acme, outsider, monkeypatch, writes):
    """Where libpq cannot be told for sure (another system, two copies loaded), psycopg's own
    call syncs, in the same one write."""
    monkeypatch.setattr(transactions, "PIPELINE_SYNC", None)
    usage_record_batch(tenant=acme, events=parse_batch([event(event_id="warm")]))
    writes.update({"one write": 0, "psycopg": 0})
    usage_record_batch(tenant=acme, events=parse_batch([event(event_id="e1")]))
    assert writes == {"one write": 1, "psycopg": 0}
    assert UsageEvent.objects.for_tenant(acme).count() == 2
    assert not UsageEvent.objects.for_tenant(outsider).exists()
