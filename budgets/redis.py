"""The Redis connection behind counters, rate limits and reservations.

Redis only speeds things up: every caller has a PostgreSQL path for when this returns None
(no Redis configured, or Redis failed in the last few seconds: the breaker keeps a dead Redis
from costing a connection timeout on every request).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import redis
import structlog
from django.conf import settings

log = structlog.get_logger(__name__)

_BREAKER_SECONDS = 5.0
_state = threading.local()
_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()
_down_until = 0.0

RedisError = (redis.RedisError, OSError)


def client() -> redis.Redis | None:
    url = settings.REDIS_URL
    if not url or time.monotonic() < _down_until:
        return None
    with _clients_lock:
        found = _clients.get(url)
        if found is None:
            found = _clients[url] = redis.Redis.from_url(
                url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=30
            )
    return found


def failed(exc: BaseException) -> None:
    """Record a failure: Redis is skipped for a few seconds."""
    global _down_until
    _down_until = time.monotonic() + _BREAKER_SECONDS
    log.warning("redis_unavailable", error=str(exc), retry_in_s=_BREAKER_SECONDS)


def reset_breaker() -> None:
    global _down_until
    _down_until = 0.0


def script(source: str) -> Any:
    """A Lua script registered once per connection pool (EVALSHA; redis-py loads it into a
    server that does not know it). Called with no KEYS (our scripts read theirs from ARGV)."""

    class _Script:
        def __init__(self) -> None:
            self._by_client: dict[int, Any] = {}

        def __call__(self, r: redis.Redis, args: list[Any]) -> Any:
            registered = self._by_client.get(id(r))
            if registered is None:
                registered = self._by_client[id(r)] = r.register_script(source)
            try:
                # The command itself: redis-py's `Script` goes through four more calls and
                # copies the arguments twice, for each check and each ingest group.
                return r.execute_command("EVALSHA", registered.sha, 0, *args)
            except redis.exceptions.NoScriptError:
                return registered(args=args)  # loads the script, then EVALSHA again

    return _Script()


def script_file(name: str) -> Any:
    """`script()` of `budgets/lua/<name>.lua` (its KEYS, ARGV and reply are documented there)."""
    return script((Path(__file__).parent / "lua" / f"{name}.lua").read_text(encoding="utf-8"))
