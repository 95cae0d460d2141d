"""The ClickHouse connections: the only module that imports clickhouse_driver (an
import-linter contract says so). Native protocol only: Debian's 18.16 and current releases both
speak it, and clickhouse-connect's HTTP client fails against 18.16.

One client per shard per thread (clickhouse-driver's client is not thread-safe); a failure to
reach a server, or an error from it, comes out as `StoreUnavailable` or `StoreError`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from usage.eventstore.base import StoreUnavailable

# Seconds: a server that does not answer fails the request soon (503), not after a minute.
CONNECT_TIMEOUT = 3
SEND_RECEIVE_TIMEOUT = 60


@dataclass(frozen=True)
class Shard:
    host: str
    port: int
    database: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_shards(url: str, extra: str = "") -> list[Shard]:
    """`clickhouse://host:9000/costmon` and a comma-separated list of further `host:port`
    addresses (`COSTMON_CLICKHOUSE_SHARDS`): shard 0 is the URL's server, the others follow in
    the order listed. Every shard holds the same database name."""
    parts = urlsplit(url)
    if parts.scheme != "clickhouse" or not parts.hostname:
        raise ValueError(f"Not a clickhouse://host:port/database URL: {url!r}")
    database = parts.path.strip("/") or "costmon"
    shards = [Shard(parts.hostname, parts.port or 9000, database)]
    for address in (a.strip() for a in extra.split(",")):
        if not address:
            continue
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"Not a host:port shard address: {address!r}")
        shards.append(Shard(host, int(port), database))
    return shards


class Connections:
    """Clients of the shards, one set per thread."""

    def __init__(self, shards: Sequence[Shard]) -> None:
        self.shards = list(shards)
        self._local = threading.local()

    def _client(self, index: int, *, database: bool = True) -> Client:
        clients: dict[tuple[int, bool], Client] = self._local.__dict__.setdefault("clients", {})
        key = (index, database)
        if key not in clients:
            shard = self.shards[index]
            clients[key] = Client(
                host=shard.host,
                port=shard.port,
                database=shard.database if database else "default",
                connect_timeout=CONNECT_TIMEOUT,
                send_receive_timeout=SEND_RECEIVE_TIMEOUT,
                settings={"strings_as_bytes": False},
            )
        return clients[key]

    def execute(
        self,
        index: int,
        sql: str,
        params: Any = None,
        *,
        database: bool = True,
        columnar: bool = False,
    ) -> list[tuple[Any, ...]]:
        """Run one statement on shard `index`; rows of a SELECT, or [] . `columnar`: an
        insert's `params` are its columns, not its rows."""
        client = self._client(index, database=database)
        with self._reachable(index, client):
            return client.execute(sql, params, columnar=columnar)  # type: ignore[no-any-return]

    def execute_iter(self, index: int, sql: str, params: Any = None) -> Any:
        """Rows of a SELECT as they stream in (exports)."""
        client = self._client(index)
        with self._reachable(index, client):
            yield from client.execute_iter(sql, params)

    @contextlib.contextmanager
    def _reachable(self, index: int, client: Any) -> Iterator[None]:
        """A lost connection to shard `index` as `StoreUnavailable` (the API's 503)."""
        try:
            yield
        except (ch_errors.NetworkError, ch_errors.SocketTimeoutError, OSError, EOFError) as exc:
            client.disconnect()
            address = self.shards[index].address
            raise StoreUnavailable(
                f"The ClickHouse event store at {address} cannot be reached ({exc})."
            ) from exc

    def close(self) -> None:
        for client in self._local.__dict__.get("clients", {}).values():
            client.disconnect()
        self._local.__dict__["clients"] = {}
