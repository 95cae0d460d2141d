"""What the web processes observe themselves: request latency and events ingested.

With `PROMETHEUS_MULTIPROC_DIR` set (settings do so whenever /metrics is on), prometheus_client
keeps each process's values in memory-mapped files there and a scrape sums every process's
files, so any process can answer for all of them. An observation is a write to that mapped
memory, a few microseconds, with no network round trip.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from prometheus_client import Counter, Histogram

# Batches go up to thousands of events; a check should take a few milliseconds.
_INGEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# registry=None: the scrape builds its own registry (see collector.scrape).
INGEST_SECONDS = Histogram(
    "costmon_ingest_duration_seconds",
    "Server time of POST /api/v1/usage/ (authentication included), by response code.",
    ["code"],
    buckets=_INGEST_BUCKETS,
    registry=None,
)
CHECK_SECONDS = Histogram(
    "costmon_check_duration_seconds",
    "Server time of POST /api/v1/check/ (authentication included), by response code.",
    ["code"],
    buckets=_CHECK_BUCKETS,
    registry=None,
)
EVENTS_INGESTED = Counter(
    "costmon_ingest_events",
    "Usage events received by POST /api/v1/usage/ since the server started: "
    "recorded (new) or duplicate (an event id already stored).",
    ["outcome"],
    registry=None,
)

INSTRUMENTS = (INGEST_SECONDS, CHECK_SECONDS, EVENTS_INGESTED)


class _Result(Protocol):
    @property
    def duplicate(self) -> bool: ...


def timed(histogram: Histogram, *, method: str = "POST") -> Callable[[Any], Any]:
    """Decorate an API view's `dispatch`: observe the server time of each `method` request,
    labelled with the response's status code."""

    def decorator(dispatch: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(dispatch)
        def wrapper(view: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            if request.method != method:
                return dispatch(view, request, *args, **kwargs)
            started = time.perf_counter()
            code = 500  # unless a response comes back
            try:
                response = dispatch(view, request, *args, **kwargs)
                code = response.status_code
                return response
            finally:
                histogram.labels(code=str(code)).observe(time.perf_counter() - started)

        return wrapper

    return decorator


def events_ingested(results: Sequence[_Result]) -> None:
    duplicates = sum(1 for r in results if r.duplicate)
    if len(results) > duplicates:
        EVENTS_INGESTED.labels(outcome="recorded").inc(len(results) - duplicates)
    if duplicates:
        EVENTS_INGESTED.labels(outcome="duplicate").inc(duplicates)
