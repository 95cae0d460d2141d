"""The in-memory queue and the one background thread that sends it to costmon in batches.

The application's side (`enqueue`) takes a lock, appends to a deque and maybe wakes the thread:
microseconds, whatever costmon is doing. The thread sends up to `batch_size` events per request,
at the latest `flush_interval` seconds after an event was queued. A batch that got no answer, or
429 or 5xx, is sent again after a growing delay with the same event ids: costmon drops the
duplicates, so nothing is counted twice. A batch costmon refuses (4xx) is not sent again.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

from costmon_client._http import NETWORK_ERRORS, HttpResponse, Transport, retry_after_seconds

logger = logging.getLogger("costmon_client")

USAGE_PATH = "/api/v1/usage/"
MAX_BATCH_SIZE = 1000  # costmon takes up to 5,000 by default; smaller requests fail less
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_DROP_WARNING_EVERY = 60.0  # seconds between two "queue full" warnings


@dataclass(frozen=True)
class SenderStats:
    """Counts since the client started; `queued` and `in_flight` are the present state."""

    queued: int
    in_flight: int
    sent: int  # accepted by costmon (its duplicates included)
    duplicates: int  # accepted, but costmon already had the event id: counted once
    rejected: int  # refused by costmon (4xx), logged and not sent again
    dropped: int  # never sent: the queue was full, or the client closed before costmon answered
    retries: int  # failed attempts that were tried again
    last_error: str | None


class Sender:
    def __init__(
        self,
        transport: Transport,
        *,
        batch_size: int,
        flush_interval: float,
        max_queue: int,
        timeout: float,
        retry_delay: float,
        max_retry_delay: float,
        shutdown_timeout: float,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_SIZE or max_queue < 1:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH_SIZE} and max_queue at least 1")
        self._transport = transport
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_queue = max_queue
        self._timeout = timeout
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self.shutdown_timeout = shutdown_timeout
        self._init_state()
        _live.add(self)

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the thread waits for events here
        self._idle = threading.Condition(self._lock)  # flush() waits for an empty queue here
        self._backoff = threading.Condition(self._lock)  # the thread waits to retry here
        self._queue: deque[dict[str, Any]] = deque()
        self._in_flight = 0
        self._flushing = 0
        self._closing = False
        self._close_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._sent = self._duplicates = self._rejected = self._dropped = self._retries = 0
        self._last_error: str | None = None
        self._last_drop_warning = -_DROP_WARNING_EVERY
        self._failing = False

    # --- the application's side ------------------------------------------------------------

    def enqueue(self, event: dict[str, Any]) -> None:
        if self._pid != os.getpid():
            self._after_fork()  # when a fork bypassed os.register_at_fork
        with self._lock:
            if self._closing:
                self._count_drop("the client is closed: usage reported after close() is dropped")
                return
            if len(self._queue) >= self._max_queue:
                self._queue.popleft()  # the oldest goes: the newest matter most to budgets
                self._count_drop(
                    f"the queue is full ({self._max_queue} events; costmon slow or down?): "
                    "dropping the oldest"
                )
            self._queue.append(event)
            if self._thread is None:
                self._start()
            elif len(self._queue) >= self._batch_size:
                self._wake.notify()

    def flush(self, timeout: float) -> bool:
        """Send everything queued now; True when nothing is left queued or in flight."""
        deadline = time.monotonic() + max(timeout, 0.0)
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            if self._thread is None and self._queue and not self._closing:
                self._start()
            self._flushing += 1
            self._wake.notify()
            self._backoff.notify()
            try:
                while self._queue or self._in_flight:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._thread is None:
                        return False
                    self._idle.wait(remaining)
                return True
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = None) -> bool:
        """Send what is queued (for at most `timeout` seconds), then stop the thread.
        True when nothing was left unsent."""
        timeout = self.shutdown_timeout if timeout is None else timeout
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            dropped_before = self._dropped
            if not self._closing:
                self._closing = True
                self._close_deadline = time.monotonic() + max(timeout, 0.0)
            self._wake.notify_all()
            self._backoff.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(timeout, 0.0))
        with self._lock:
            return not self._queue and not self._in_flight and self._dropped == dropped_before

    def stats(self) -> SenderStats:
        with self._lock:
            return SenderStats(
                queued=len(self._queue),
                in_flight=self._in_flight,
                sent=self._sent,
                duplicates=self._duplicates,
                rejected=self._rejected,
                dropped=self._dropped,
                retries=self._retries,
                last_error=self._last_error,
            )

    def _count_drop(self, why: str) -> None:
        """Count one dropped event; warn at most once a minute (holding the lock)."""
        self._dropped += 1
        now = time.monotonic()
        if now - self._last_drop_warning >= _DROP_WARNING_EVERY:
            self._last_drop_warning = now
            logger.warning("costmon: %s; %d events dropped so far", why, self._dropped)

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="costmon-sender", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # at interpreter shutdown no thread can start any more
            logger.warning("costmon: cannot start the sender thread; events stay queued")
            return
        self._thread = thread

    def _after_fork(self) -> None:
        """In a forked child: the parent's thread is gone, and its queue and counts are the
        parent's."""
        self._init_state()
        self._transport.reset()

    # --- the background thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                batch = self._next_batch()
                if batch is None:
                    self._thread = None
                    self._idle.notify_all()
                    return
            try:
                self._deliver(batch)
            except Exception:
                # A bug here must not stop the thread: the next batches still go.
                logger.exception(
                    "costmon: unexpected error sending a batch; %d dropped", len(batch)
                )
                with self._lock:
                    self._dropped += len(batch)
            with self._lock:
                self._in_flight = 0
                self._idle.notify_all()

    def _next_batch(self) -> list[dict[str, Any]] | None:
        """Wait (holding the lock) until a batch is due; None when closing with nothing left."""
        due: float | None = None
        while True:
            if self._closing and time.monotonic() >= self._close_deadline and self._queue:
                self._drop_queue("the client closed before they could be sent")
            if self._queue:
                now = time.monotonic()
                if due is None:
                    due = now + self._flush_interval
                if (
                    len(self._queue) >= self._batch_size
                    or self._closing
                    or self._flushing
                    or now >= due
                ):
                    size = min(self._batch_size, len(self._queue))
                    batch = [self._queue.popleft() for _ in range(size)]
                    self._in_flight = size
                    return batch
                self._wake.wait(due - now)
            else:
                if self._closing:
                    return None
                due = None
                self._idle.notify_all()
                self._wake.wait()

    def _drop_queue(self, why: str) -> None:
        count = len(self._queue)
        self._queue.clear()
        self._dropped += count
        logger.warning("costmon: %d events dropped: %s", count, why)

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        """Send one batch until costmon has it, refuses it, or the client closes."""
        pending = batch
        attempt = 0
        while pending:
            try:
                response = self._transport.post_json(USAGE_PATH, pending, timeout=self._timeout)
            except NETWORK_ERRORS as exc:
                hint = None
                problem = f"costmon unreachable: {exc.__class__.__name__}: {exc}"
            else:
                if response.status in (200, 201):
                    self._accepted(pending, response)
                    return
                if response.status in _RETRY_STATUSES:
                    hint = _retry_after(response)
                    problem = f"costmon answered {response.status}"
                else:
                    pending = self._refused(pending, response)
                    continue
            if not self._wait_to_retry(attempt, hint, problem, len(pending)):
                return
            attempt += 1

    def _accepted(self, events: list[dict[str, Any]], response: HttpResponse) -> None:
        duplicates = 0
        try:
            duplicates = sum(1 for e in response.json()["events"] if e.get("duplicate"))
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.debug("costmon: unexpected reply to a batch: %r", response.body[:200])
        with self._lock:
            self._sent += len(events)
            self._duplicates += duplicates
            if self._failing:
                self._failing = False
                logger.info("costmon: reachable again; sending the queued events")

    def _refused(
        self, events: list[dict[str, Any]], response: HttpResponse
    ) -> list[dict[str, Any]]:
        """A 4xx: drop what costmon refuses and return the events worth sending again."""
        if response.status == 413 and len(events) > 1:
            half = len(events) // 2
            logger.info("costmon: batch too large; sending it in two halves")
            self._deliver(events[:half])
            return events[half:]
        errors: list[dict[str, Any]] = []
        try:
            body = response.json()
            errors = [e for e in body.get("errors", []) if isinstance(e, dict)]
        except (ValueError, AttributeError):
            body = response.body[:500]
        bad = {e.get("index") for e in errors}
        if (
            response.status == 400
            and bad
            and all(isinstance(i, int) and 0 <= i < len(events) for i in bad)
        ):
            # costmon stores nothing of a batch with a bad event: send the good ones again.
            for error in errors:
                event = events[error["index"]]
                logger.warning(
                    "costmon refused event %s: %s: %s",
                    event.get("event_id"),
                    error.get("field"),
                    error.get("message"),
                )
            with self._lock:
                self._rejected += len(bad)
                self._last_error = f"costmon refused {len(bad)} events ({response.status})"
            return [e for i, e in enumerate(events) if i not in bad]
        if response.status in (401, 403):
            logger.error(
                "costmon refused the API key (%s): %d events dropped; check the key and its "
                "ingest scope",
                response.status,
                len(events),
            )
        else:
            logger.warning(
                "costmon refused a batch of %d events (%s): %r", len(events), response.status, body
            )
        with self._lock:
            self._rejected += len(events)
            self._last_error = f"costmon refused a batch ({response.status})"
        return []

    def _wait_to_retry(self, attempt: int, hint: float | None, problem: str, count: int) -> bool:
        """Sleep before the next attempt; False when the client closed and time is up."""
        delay = min(self._max_retry_delay, self._retry_delay * 2**attempt)
        delay *= random.uniform(0.5, 1.0)  # clients that failed together retry apart
        if hint is not None:
            delay = max(delay, min(hint, self._max_retry_delay))
        with self._lock:
            self._retries += 1
            self._last_error = problem
            if not self._failing:
                self._failing = True
                logger.warning("costmon: %s; retrying %d events in the background", problem, count)
            else:
                logger.debug("costmon: %s; retry %d in %.2fs", problem, attempt + 1, delay)
            if self._closing:
                remaining = self._close_deadline - time.monotonic()
                if remaining <= 0:
                    self._dropped += count
                    logger.warning(
                        "costmon: %d events dropped: costmon did not take them before close (%s)",
                        count,
                        problem,
                    )
                    return False
                delay = min(delay, remaining)
            self._backoff.wait(delay)  # flush() and close() cut it short
            return True


def _retry_after(response: HttpResponse) -> float | None:
    return retry_after_seconds(response.headers)


# --- process-wide: flush at exit, forget the parent's state after fork ---------------------------

_live: weakref.WeakSet[Sender] = weakref.WeakSet()


def _close_all() -> None:
    for sender in list(_live):
        try:
            sender.close()
        except Exception:
            logger.exception("costmon: error while flushing at exit")


def _after_fork_in_child() -> None:
    for sender in list(_live):
        sender._after_fork()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_after_fork_in_child)
