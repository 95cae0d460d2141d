"""Group commit: concurrent small ingest requests of one process stored together.

With threaded workers (gunicorn's gthread, `costmon.gunicorn_conf`), each request thread hands
its validated events to the process's committer threads and waits. A committer takes every
request waiting, and stores each tenant's (and API key's) events with one `usage_record_batch`:
one transaction, one commit, one rollup upsert and one budgets counter update for all of them.
Then it wakes each request with its own results, in its own order. So a 201 still means stored
durably, priced and counted; only the round trips are shared. Two requests with the same
event_id in one group are answered as if one came after the other: the first stored, the
second a duplicate.

A process runs `COSTMON_INGEST_COMMITTERS` committers on one queue (one unless set). Most of a
group's time is spent waiting for PostgreSQL and Redis; with more committers the next group
starts while one waits, but groups get smaller, so each request costs more CPU. On 2 cores
with the database on the same machine, two committers halved the server p50 while other
work loaded the machine, and doubled it when the benchmark had the machine to itself (paced
at 450 requests/s: 6.2-6.9 ms with one, 12.1-13.5 ms with two; docs/benchmark.md). A
deployment whose database is across a network (each round trip a wait, not CPU) may set
more. Groups of one process then commit at once, as two processes' do: the rollups are
locked in one order (`usage.rollup_writes`), and each committer has its own connection.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import structlog
from django.conf import settings
from django.db import close_old_connections, connections

from costmon.core.marks import Marks, marks_deferred
from costmon.core.models import Tenant
from usage.ingest import EventIn
from usage.services import EventResult, usage_record_batch

log = structlog.get_logger(__name__)

# Requests with more events than this are stored by their own thread: a batch is a group.
GROUPED_MAX_EVENTS = 20
# The most events one group stores: a group's transaction stays short.
GROUP_MAX_EVENTS = 1000
# How often the committer looks whether its database connection is still good.
_CONNECTION_CHECK_SECONDS = 5.0
# The most often the committers run the marks their groups left (a Redis round trip each time):
# the kept sums a late event changed are forgotten within this long of its commit.
MARKS_SECONDS = 0.25


@dataclass(slots=True)
class _Waiting:
    tenant: Tenant
    api_key_id: int | None
    events: Sequence[EventIn]
    future: Future[list[EventResult]] = field(default_factory=Future)


class GroupCommitter:
    """One per process; its threads start on the first request (and again after a fork).
    `threads`: how many committers take from its queue (None: COSTMON_INGEST_COMMITTERS)."""

    def __init__(
        self,
        *,
        max_events: int = GROUP_MAX_EVENTS,
        marks_seconds: float = MARKS_SECONDS,
        threads: int | None = None,
    ) -> None:
        self.max_events = max_events
        self.marks_seconds = marks_seconds
        self.threads = threads
        self.marks = Marks()  # left by the groups stored, for `run_marks`
        self._marked = -math.inf  # when `run_marks` last ran (time.monotonic)
        self._marks_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._pid = 0

    def record(
        self, *, tenant: Tenant, events: Sequence[EventIn], api_key_id: int | None
    ) -> list[EventResult]:
        """As `usage_record_batch`, stored with whatever other requests wait at the moment."""
        waiting = _Waiting(tenant, api_key_id, events)
        # Queued under the lock `shutdown` takes: before its stop marks (the committers that
        # stop store it first), or after, on the queue of the committers started here; never
        # on a queue whose committers have ended, where it would wait forever.
        with self._lock:
            self._start_committers()
            self._queue.put(waiting)
        return waiting.future.result()

    def shutdown(self) -> None:
        """End the committer threads once the requests already waiting are stored (each closes
        its database connections); the next request starts new ones, on a queue of their own
        (were it the old one, a new committer could take an old one's stop mark)."""
        with self._lock:
            if self._pid != os.getpid():
                return
            threads = [t for t in self._threads if t.is_alive()]
            for _ in threads:
                self._queue.put(None)  # one each, after every request: a committer ends on it
            self._queue = queue.SimpleQueue()
            self._threads = []
        for thread in threads:
            thread.join()

    def _start_committers(self) -> None:
        """Start the committers missing (all after a fork or a shutdown), on the current queue.
        Under `_lock`."""
        if self._pid == os.getpid() and self._threads and all(t.is_alive() for t in self._threads):
            return
        if self._pid != os.getpid():
            self._queue = queue.SimpleQueue()  # a fork's copy holds nobody's requests
            self._threads = []
            self._pid = os.getpid()
        self._threads = [t for t in self._threads if t.is_alive()]
        wanted = self.threads or settings.COSTMON_INGEST_COMMITTERS
        while len(self._threads) < wanted:
            thread = threading.Thread(
                target=self._run,
                args=(self._queue,),
                name=f"ingest-group-commit-{len(self._threads)}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def _run(self, requests: queue.SimpleQueue[_Waiting | None]) -> None:
        checked = time.monotonic()
        while True:
            first = self._next(requests)
            if first is None:
                self.run_marks()
                connections.close_all()
                return
            waiting, count, stop = [first], len(first.events), False
            while count < self.max_events:
                try:
                    more = requests.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                waiting.append(more)
                count += len(more.events)
            try:
                failed = self.commit(waiting)
            except BaseException as exc:  # the thread ends: nobody may wait for it forever
                for w in waiting:
                    if not w.future.done():
                        w.future.set_exception(exc)
                raise
            if self.marks and time.monotonic() - self._marked >= self.marks_seconds:
                self.run_marks()
            if stop:
                self.run_marks()
                connections.close_all()
                return
            if failed or time.monotonic() - checked > _CONNECTION_CHECK_SECONDS:
                # As Django does between requests: drop a connection that broke or aged out.
                close_old_connections()
                checked = time.monotonic()

    def _next(self, requests: queue.SimpleQueue[_Waiting | None]) -> _Waiting | None:
        """The next request waiting; with marks left, the wait ends in time to run them."""
        while self.marks:
            due = self._marked + self.marks_seconds - time.monotonic()
            try:
                return requests.get(timeout=max(due, 0.001))
            except queue.Empty:
                self.run_marks()
        return requests.get()

    def run_marks(self) -> None:
        """Run the marks the groups stored so far left (all committed); one committer at a
        time (the others' groups add theirs meanwhile, for the next run)."""
        with self._marks_lock:
            self._marked = time.monotonic()
            self.marks.run()

    def commit(self, waiting: list[_Waiting]) -> bool:
        """Store the requests waiting, a group per tenant and key; True if any failed. The
        groups' marks of cached sums wait in `marks`."""
        groups: dict[tuple[int, int | None], list[_Waiting]] = {}
        for w in waiting:
            groups.setdefault((w.tenant.pk, w.api_key_id), []).append(w)
        failed = False
        with marks_deferred(self.marks):
            for group in groups.values():
                failed |= self._commit_group(group)
        return failed

    def _commit_group(self, group: list[_Waiting]) -> bool:
        try:
            results = usage_record_batch(
                tenant=group[0].tenant,
                events=[e for w in group for e in w.events],
                api_key_id=group[0].api_key_id,
            )
        except Exception as exc:  # noqa: BLE001 - answered to the requests that wait
            if len(group) == 1:
                group[0].future.set_exception(exc)
                return True
            log.info("ingest_group_retried", requests=len(group), error=type(exc).__name__)
            for w in group:
                self._commit_group([w])
            return True
        start = 0
        for w in group:
            w.future.set_result(results[start : start + len(w.events)])
            start += len(w.events)
        return False


_COMMITTER = GroupCommitter()


def committer() -> GroupCommitter:
    """This process's committer (tests shut it down to close its database connection)."""
    return _COMMITTER


def record_events(
    *, tenant: Tenant, events: Sequence[EventIn], api_key_id: int | None
) -> list[EventResult]:
    """Store a request's validated events: grouped with other requests' when that is on and
    the request is small, else by this thread. The results are `usage_record_batch`'s."""
    if settings.COSTMON_INGEST_GROUP_COMMIT and len(events) <= GROUPED_MAX_EVENTS:
        return _COMMITTER.record(tenant=tenant, events=events, api_key_id=api_key_id)
    return usage_record_batch(tenant=tenant, events=events, api_key_id=api_key_id)
