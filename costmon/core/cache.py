"""The shared cache (Redis in production) as an accelerator that may be away, and the one
per-process cache checked against versions kept there (`VersionedCache`).

Callers use these when the cache only speeds things up: a Redis outage must not fail a
request that PostgreSQL can still answer. Failures are logged, never raised.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from threading import Lock, RLock
from typing import Any, Generic, TypeVar

import structlog
from django.conf import settings
from django.core.cache import cache

log = structlog.get_logger(__name__)
K = TypeVar("K")
V = TypeVar("V")


# This thread's writes waiting for the end of a `cache_writes_together` block, or None.
_together = threading.local()


@contextlib.contextmanager
def cache_writes_together() -> Iterator[None]:
    """`cache_set` in the block queues its write; the writes go at the block's end, in one
    round trip (a pipeline) when the cache is Redis: an ingest batch's receivers mark several
    cached sums stale. A read of the cache through this module first sends what is queued."""
    if getattr(_together, "writes", None) is not None:
        yield  # nested: the outer block sends them
        return
    _together.writes = []
    try:
        yield
    finally:
        _send_queued()
        _together.writes = None


def _send_queued() -> None:
    writes: list[tuple[str, Any, float | None]] | None = getattr(_together, "writes", None)
    if not writes:
        return
    _together.writes = []
    try:
        client = getattr(cache, "client", None)  # django-redis: one pipeline for them all
        if len(writes) > 1 and client is not None and hasattr(client, "get_client"):
            pipe = client.get_client(write=True).pipeline(transaction=False)
            for key, value, timeout in writes:
                cache.set(key, value, timeout, client=pipe)  # type: ignore[call-arg]
            pipe.execute()
        else:
            for key, value, timeout in writes:
                cache.set(key, value, timeout)
    except Exception as exc:  # noqa: BLE001
        log.warning("cache_unavailable", op="set", error=str(exc))


def cache_get(key: str) -> Any:
    _send_queued()
    try:
        return cache.get(key)
    except Exception as exc:  # noqa: BLE001 - any client error means "not cached"
        log.warning("cache_unavailable", op="get", error=str(exc))
        return None


def cache_set(key: str, value: Any, timeout: float | None) -> None:
    writes = getattr(_together, "writes", None)
    if writes is not None:
        writes.append((key, value, timeout))
        return
    try:
        cache.set(key, value, timeout)
    except Exception as exc:  # noqa: BLE001
        log.warning("cache_unavailable", op="set", error=str(exc))


def cache_delete(key: str) -> None:
    _send_queued()
    try:
        cache.delete(key)
    except Exception as exc:  # noqa: BLE001
        log.warning("cache_unavailable", op="delete", error=str(exc))


def cache_get_many(keys: list[str]) -> tuple[Any, ...] | None:
    """The values of `keys` in order (None for a missing one) in one round trip; None if the
    cache is away."""
    _send_queued()
    try:
        found = cache.get_many(keys)
    except Exception as exc:  # noqa: BLE001
        log.warning("cache_unavailable", op="get_many", error=str(exc))
        return None
    return tuple(found.get(k) for k in keys)


def cache_add(key: str, value: Any) -> None:
    """Set `key` only if it is not set yet, without expiry."""
    _send_queued()
    try:
        cache.add(key, value, None)
    except Exception as exc:  # noqa: BLE001
        log.warning("cache_unavailable", op="add", error=str(exc))


@dataclass
class _Entry(Generic[V]):
    value: V
    versions: tuple[Any, ...] | None  # the shared versions it was loaded under
    expires: float  # without the shared cache: when to load again
    checked: float  # when the shared versions were last compared


class VersionedCache(Generic[K, V]):
    """Values kept per process (a tenant's prices, its budget settings, an API key's principal)
    that a write anywhere can invalidate at once.

    Each value is loaded under the current versions of its `version_keys` in the shared cache
    (Redis); a write calls `bump`, which stamps new versions. A process trusts its copy for
    COSTMON_SHARED_RECHECK_MS, then compares versions in one round trip and loads again only
    if they moved. Without a shared cache (the embedded default) a copy lives `ttl()` seconds.
    Versions missing from the shared cache (first use, or Redis restarted empty) are stamped,
    so every process agrees from then on. If loading fails with an error in `keep_on`, the
    process keeps answering with the copy it has (a database outage), if it has one.
    """

    def __init__(
        self,
        *,
        version_keys: Callable[[K], Sequence[str]],
        load: Callable[[K], V],
        ttl: Callable[[], float],
        keep_on: tuple[type[BaseException], ...] = (),
        max_entries: int = 100_000,
    ) -> None:
        self._version_keys = version_keys
        self._load = load
        self._ttl = ttl
        self._keep_on = keep_on
        self._max_entries = max_entries
        self._lock = Lock()
        self._local: dict[K, _Entry[V]] = {}
        # One lock per key being loaded: threads that miss the same key together (a worker's
        # threads after a price change) wait for one load instead of each running it.
        self._loading: dict[K, RLock] = {}

    def get(self, key: K) -> V:
        shared = bool(settings.REDIS_URL)
        now = time.monotonic()
        with self._lock:
            hit = self._local.get(key)
        if (
            shared
            and hit is not None
            and now - hit.checked < settings.COSTMON_SHARED_RECHECK_MS / 1000
        ):
            return hit.value  # compared with the shared versions a moment ago
        keys = list(self._version_keys(key))
        versions = cache_get_many(keys) if shared else None
        if versions is not None and None in versions:
            for name, version in zip(keys, versions, strict=True):
                if version is None:
                    cache_add(name, uuid.uuid4().hex)
            versions = cache_get_many(keys)
        if (
            hit is not None
            and hit.versions == versions
            and (hit.expires > now or versions is not None)
        ):
            hit.checked = now
            return hit.value
        with self._lock:
            loading = self._loading.setdefault(key, RLock())
        try:
            with loading:
                with self._lock:
                    fresh = self._local.get(key)
                if (
                    fresh is not None
                    and fresh is not hit
                    and fresh.versions == versions
                    and (fresh.expires > now or versions is not None)
                ):
                    return fresh.value  # loaded by another thread while this one waited
                try:
                    value = self._load(key)
                except self._keep_on:
                    if hit is None:
                        raise
                    return hit.value
                with self._lock:
                    if len(self._local) >= self._max_entries:
                        self._local.clear()
                    self._local[key] = _Entry(value, versions, now + self._ttl(), now)
                return value
        finally:
            with self._lock:
                if self._loading.get(key) is loading:
                    del self._loading[key]

    def bump(self, *version_keys: str) -> None:
        """After a write: new versions for these shared keys, and this process forgets its
        copies at once (other processes reload within COSTMON_SHARED_RECHECK_MS)."""
        for name in version_keys:
            cache_set(name, uuid.uuid4().hex, None)
        self.forget()

    def forget(self, key: K | None = None) -> None:
        with self._lock:
            if key is None:
                self._local.clear()
            else:
                self._local.pop(key, None)
