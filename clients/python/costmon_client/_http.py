"""The one HTTP choke point: JSON POSTs to costmon over keep-alive connections, stdlib only.

Each thread keeps its own connection (`http.client` connections are not thread-safe), so the
background sender and the application's `check()` calls never wait for each other.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from costmon_client._version import __version__

USER_AGENT = f"costmon-client-python/{__version__}"

# Errors that mean "costmon did not answer": worth retrying later, never the app's problem.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, timeouts (socket.timeout is TimeoutError)
    http.client.HTTPException,
)
# A kept-alive connection the server has since closed fails in one of these ways before any
# byte of an answer arrives: the request is sent again once on a new connection.
_STALE_CONNECTION = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    http.client.CannotSendRequest,
)


def retry_after_seconds(headers: dict[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait that a `Retry-After` header asks for (delta-seconds or an HTTP date),
    or None without a usable one."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        from decimal import Decimal

        return json.loads(self.body or b"null", parse_float=Decimal)


class Transport:
    """POSTs JSON to one costmon base URL with the API key."""

    def __init__(
        self, base_url: str, api_key: str, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"costmon url must be http(s)://host[:port][/prefix], not {base_url!r}"
            )
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._ssl_context = ssl_context
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._local = threading.local()

    def reset(self) -> None:
        """Forget every connection (after a fork the parent's sockets are not ours)."""
        self._local = threading.local()

    def post_json(self, path: str, payload: Any, *, timeout: float) -> HttpResponse:
        """POST `payload` as JSON; raise one of NETWORK_ERRORS when no answer came back."""
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        reused = conn is not None
        if conn is None:
            conn = self._connect(timeout)
        try:
            return self._exchange(conn, path, body, timeout)
        except _STALE_CONNECTION:
            self._drop(conn)
            if not reused:
                raise
        except BaseException:
            self._drop(conn)
            raise
        conn = self._connect(timeout)
        try:
            return self._exchange(conn, path, body, timeout)
        except BaseException:
            self._drop(conn)
            raise

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._https:
            context = self._ssl_context or ssl.create_default_context()
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=context
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        self._local.conn = conn
        return conn

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None

    def _exchange(
        self, conn: http.client.HTTPConnection, path: str, body: bytes, timeout: float
    ) -> HttpResponse:
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        conn.request("POST", self._prefix + path, body=body, headers=self._headers)
        response = conn.getresponse()
        data = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        if response.will_close:
            self._drop(conn)
        return HttpResponse(status=response.status, headers=headers, body=data)
