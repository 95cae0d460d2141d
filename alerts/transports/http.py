"""The one outbound HTTP wrapper every HTTP transport uses.

It owns the timeouts, refuses redirects, refuses private and loopback addresses (a webhook URL is
user input: without the guard it reaches the metadata service or the database), and turns every
failure into a `TransportError` a person can read, permanent or worth retrying.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from alerts.transports.base import TransportError

CONNECT_TIMEOUT = 3.0  # seconds
READ_TIMEOUT = 7.0  # seconds
MAX_RESPONSE_CHARS = 1000
# Read no more than this of a response: an endpoint must not fill the worker's memory.
MAX_RESPONSE_BYTES = 4 * MAX_RESPONSE_CHARS
MAX_URL_LENGTH = 2000
USER_AGENT = "costmon/1"
# Answers that will not change on a retry: the channel is misconfigured or gone.
PERMANENT_CODES = {400, 401, 403, 404, 410}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def clean_url(value: Any, *, field: str = "url") -> str:
    """A channel's target URL as entered, or ValidationError({field: what to fix}). https only,
    unless private webhooks are allowed (tests, a local receiver)."""
    allow_private = settings.COSTMON_ALLOW_PRIVATE_WEBHOOKS
    url = value.strip() if isinstance(value, str) else ""
    if not url:
        raise ValidationError({field: "Enter the URL to send alerts to."})
    if len(url) > MAX_URL_LENGTH:
        raise ValidationError(
            {field: f"The URL is too long (at most {MAX_URL_LENGTH} characters)."}
        )
    if url.lower().startswith("http://") and not allow_private:
        raise ValidationError(
            {field: "Use an https:// URL: plain http would send alerts unencrypted."}
        )
    try:
        URLValidator(schemes=["http", "https"] if allow_private else ["https"])(url)
    except ValidationError:
        raise ValidationError({field: "Enter a valid https:// URL."}) from None
    host = urlsplit(url).hostname or ""
    try:
        kind = _private_kind(ipaddress.ip_address(host))
    except ValueError:
        kind = None  # a name: checked when it is resolved, at send time
    if kind and not allow_private:
        raise ValidationError({field: f"{host} is {_a(kind)} address; use a public one."})
    return url


def post(url: str, *, body: bytes, headers: dict[str, str]) -> tuple[int, str, int]:
    """POST `body` to `url`: (status code, response text up to 1000 chars, duration in ms) for a
    2xx answer, a `TransportError` for anything else."""
    host, port = _parse(url)
    allow_private = settings.COSTMON_ALLOW_PRIVATE_WEBHOOKS
    if not allow_private:
        for address in _resolve(host, port):
            _refuse_if_private(address, host)

    started = time.monotonic()
    with requests.Session() as session:
        if not allow_private:
            # The name may resolve differently a moment later (DNS rebinding): check the
            # address each connection actually reached, too.
            session.mount("http://", _GuardedAdapter())
            session.mount("https://", _GuardedAdapter())
        try:
            response = session.post(
                url,
                data=body,
                headers={"User-Agent": USER_AGENT, **headers},
                timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                allow_redirects=False,
                stream=True,
            )
        except requests.ConnectTimeout:
            raise TransportError(
                f"timed out after {CONNECT_TIMEOUT:g} s connecting to {host}"
            ) from None
        except requests.ReadTimeout:
            raise TransportError(
                f"timed out after {READ_TIMEOUT:g} s waiting for {host} to answer"
            ) from None
        except requests.exceptions.SSLError as exc:
            raise TransportError(f"TLS error talking to {host}: {_reason(exc)}") from None
        except requests.ConnectionError as exc:
            raise TransportError(f"could not connect to {host}: {_reason(exc)}") from None
        except requests.RequestException as exc:
            raise TransportError(f"request to {host} failed: {_reason(exc)}") from None
        with response:
            text = _read_text(response)
    duration_ms = int((time.monotonic() - started) * 1000)

    code: int = response.status_code
    if 200 <= code < 300:
        return code, text, duration_ms
    raise _error_for(code, text, host=host, location=response.headers.get("Location", ""))


def _parse(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise TransportError(f"{url!r} is not a valid URL", permanent=True) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise TransportError(
            f"only http and https URLs are allowed, got {scheme or 'no'} scheme", permanent=True
        )
    if not parts.hostname:
        raise TransportError(f"{url!r} has no host name", permanent=True)
    return parts.hostname, port or (443 if scheme == "https" else 80)


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TransportError(f"could not resolve {host}: {exc}") from None
    # IPv6 addresses may carry a zone ("fe80::1%eth0"), which ipaddress does not parse.
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def _private_kind(address: IPAddress) -> str | None:
    """What makes `address` off limits, or None for an ordinary public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    checks = [
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("non-public", not address.is_global),  # e.g. 100.64.0.0/10, carrier-grade NAT
    ]
    return next((kind for kind, hit in checks if hit), None)


def _refuse_if_private(address: IPAddress, host: str) -> None:
    kind = _private_kind(address)
    if kind is None:
        return
    what = (
        f"{_a(kind)} address"
        if str(address) == host
        else f"it resolves to {address}, {_a(kind)} address"
    )
    raise TransportError(
        f"refused to send to {host}: {what} (only public addresses are allowed; "
        "COSTMON_ALLOW_PRIVATE_WEBHOOKS=true lifts this)",
        permanent=True,
    )


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _read_text(response: Any) -> str:
    chunk = b""
    # The status line arrived; a body cut short does not change what it said.
    with contextlib.suppress(requests.RequestException):
        chunk = next(response.iter_content(chunk_size=MAX_RESPONSE_BYTES), b"")
    return chunk.decode(response.encoding or "utf-8", errors="replace")[:MAX_RESPONSE_CHARS]


def _error_for(code: int, text: str, *, host: str, location: str) -> TransportError:
    said = f": {text.strip()[:200]}" if text.strip() else ""
    if 300 <= code < 400:
        target = f" to {location}" if location else ""
        message = f"the URL redirects ({code}){target}; use the final URL instead"
        return TransportError(message, response_code=code)
    if code in (404, 410):
        message = f"the endpoint is gone ({code}): {host} no longer accepts these messages{said}"
        return TransportError(message, permanent=True, response_code=code)
    if code in PERMANENT_CODES:
        message = f"{host} refused the message ({code}), check the URL and credentials{said}"
        return TransportError(message, permanent=True, response_code=code)
    if code == 429:
        return TransportError(f"rate limited by {host} (429){said}", response_code=code)
    if code >= 500:
        return TransportError(f"{host} had a server error ({code}){said}", response_code=code)
    return TransportError(f"{host} answered {code}{said}", response_code=code)


def _reason(exc: Exception) -> str:
    """The innermost readable cause ("Connection refused"), not urllib3's pool repr."""
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    if match:
        return match.group(1).strip()
    cause: BaseException = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    return str(cause) or type(cause).__name__


def _check_peer(sock: socket.socket, host: str) -> None:
    peer = ipaddress.ip_address(str(sock.getpeername()[0]).split("%")[0])
    try:
        _refuse_if_private(peer, host)
    except TransportError:
        sock.close()
        raise


class _GuardedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _check_peer(sock, self.host)
        return sock


class _GuardedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _check_peer(sock, self.host)
        return sock


class _GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPConnectionPool,
            "https": _GuardedHTTPSConnectionPool,
        }
