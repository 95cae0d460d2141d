from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import time_machine

from alerts.models import AlertRule, Channel
from alerts.services import channel_save
from costmon.core.models import Tenant
from costmon.core.tenancy import unscoped

NOW = "2026-11-21T12:00:00Z"  # Saturday


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server on loopback that records what it is sent."""

    url: str
    requests: list[Received] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def receiver(settings: Any) -> Iterator[Receiver]:
    settings.COSTMON_ALLOW_PRIVATE_WEBHOOKS = True
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            state.requests.append(Received(self.path, dict(self.headers), self.rfile.read(length)))
            self.send_response(state.status)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def frozen() -> Iterator[Any]:
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def webhook(acme: Tenant, receiver: Receiver) -> Channel:
    with unscoped():  # set-up, as staff would in admin
        return channel_save(
            channel=Channel(
                tenant=acme,
                name="ops hook",
                kind="webhook",
                config={"url": receiver.url, "secret": "s3cret-s3cret-s3cret"},
            )
        )


def make_rule(tenant: Tenant, channels: list[Channel], **fields: Any) -> AlertRule:
    fields.setdefault("name", f"{fields['kind']} rule")
    with unscoped():
        rule = AlertRule.objects.create(tenant=tenant, **fields)
        rule.channels.set(channels)
    return rule
