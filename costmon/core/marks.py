"""Marks of cached data as out of date that may come a moment after the write that caused them.

Some receivers of a write only mark something cached as out of date: an event that lands in a
past day forgets the dashboard's kept sums of that day (`usage.settled`), one in a settled hour
makes Prometheus's sums stale (`costmon.web.prometheus.totals`). A receiver calls `mark_soon`:
the mark runs at once, unless the thread is inside `marks_deferred`, which hands it to a
`Marks` run later by whoever owns the block. Each mark (by its key) then runs once however many
writes asked for it: usage.grouping's committer stores a stream of small groups and runs their
marks at most every quarter of a second, one Redis round trip for all of them instead of one a
group.

A mark still runs after the write it follows has committed, never before: a reader that sums
in between sees the write, and what it keeps is forgotten by the mark. Only the freshness of
what was kept before the write waits (for the owner's next run).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable, Iterator

import structlog

from costmon.core.cache import cache_writes_together

log = structlog.get_logger(__name__)

_into = threading.local()


class Marks:
    """Marks waiting to run: each key once, with the last function given for it. Threads may
    add while another runs them (a mark added during a run waits for the next)."""

    def __init__(self) -> None:
        self._waiting: dict[Hashable, Callable[[], None]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, key: Hashable, mark: Callable[[], None]) -> None:
        with self._lock:
            self._waiting[key] = mark

    def run(self) -> None:
        """Run every mark waiting (their cache writes in one round trip); a mark that raises is
        logged and the others still run, as the receivers it stands for."""
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        if not waiting:
            return
        with cache_writes_together():
            for key, mark in waiting.items():
                try:
                    mark()
                except Exception:  # a cached sum's freshness, never the write
                    log.error("deferred_mark_failed", key=repr(key), exc_info=True)


@contextlib.contextmanager
def marks_deferred(marks: Marks) -> Iterator[None]:
    """In the block, this thread's `mark_soon` adds to `marks` instead of running."""
    previous = getattr(_into, "marks", None)
    _into.marks = marks
    try:
        yield
    finally:
        _into.marks = previous


def mark_soon(key: Hashable, mark: Callable[[], None]) -> None:
    """Run `mark` now, or in a `marks_deferred` block leave it (once per `key`) to its owner."""
    marks: Marks | None = getattr(_into, "marks", None)
    if marks is None:
        mark()
    else:
        marks.add(key, mark)
