"""The shared cache (Redis in production) as an accelerator that may be away.

Callers use these when the cache only speeds things up: a Redis outage must not fail a
request that PostgreSQL can still answer. Failures are logged, never raised.
"""

from __future__ import annotations

from typing import Any

import structlog
from django.core.cache import cache

log = structlog.get_logger(__name__)


def cache_get(key: str) -> Any:
    try:
        return cache.get(key)
    except Exception as exc:  # noqa: BLE001 - any client error means "not cached"
        log.warning("cache_unavailable", op="get", error=str(exc))
        return None


def cache_set(key: str, value: Any, timeout: float | None) -> None:
    try:
        cache.set(key, value, timeout)
    except Exception as exc:  # noqa: BLE001
        log.warning("cache_unavailable", op="set", error=str(exc))


def cache_delete(key: str) -> None:
    try:
        cache.delete(key)
    except Exception as exc:  # noqa: BLE001
        log.warning("cache_unavailable", op="delete", error=str(exc))


def cache_get_many(keys: list[str]) -> tuple[Any, ...] | None:
    """The values of `keys` in order (None for a missing one) in one round trip; None if the
    cache is away."""
    try:
        found = cache.get_many(keys)
    except Exception as exc:  # noqa: BLE001
        log.warning("cache_unavailable", op="get_many", error=str(exc))
        return None
    return tuple(found.get(k) for k in keys)


def cache_add(key: str, value: Any) -> None:
    """Set `key` only if it is not set yet, without expiry."""
    try:
        cache.add(key, value, None)
    except Exception as exc:  # noqa: BLE001
        log.warning("cache_unavailable", op="add", error=str(exc))
