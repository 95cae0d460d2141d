"""Notification transports against real local servers: an HTTP receiver and an SMTP server.

Nothing here mocks `requests`: every HTTP test goes through `alerts.transports.http.post` to a
ThreadingHTTPServer on 127.0.0.1, so the bytes asserted are the bytes that crossed a socket.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from alerts.transports import (
    TRANSPORTS,
    EmailTransport,
    Message,
    SlackTransport,
    TransportError,
    WebhookTransport,
    get_transport,
)
from alerts.transports import http as http_module
from alerts.transports.webhook import verify_signature

MESSAGE = Message(
    kind="alert",
    tenant="acme",
    title="Spend today is above $10",
    severity="warning",
    text="Spend today is $12.40, above the $10 threshold.",
    figure="$12.40",
    threshold="$10",
    period="2026-11-21",
    link="https://costmon.example.com/alerts/42",
    alert_id=42,
    rule="Daily cap",
    occurred_at="2026-11-21T14:03:00Z",
    details={"spent_usd": "12.40", "limit_usd": "10"},
)


# --- a real local HTTP receiver -------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class LocalServer:
    port: int = 0
    received: list[Received] = field(default_factory=list)
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def respond(
        self,
        status: int,
        body: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.status, self.body, self.headers, self.delay = status, body, headers or {}, delay


def _handler(server: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            server.received.append(Received(self.command, self.path, dict(self.headers), body))
            time.sleep(server.delay)
            try:
                self.send_response(server.status)
                for name, value in server.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)
            except OSError:
                pass  # the client stopped waiting (the timeout test)

        do_GET = do_POST

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def receiver() -> Iterator[LocalServer]:
    server = LocalServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    httpd.daemon_threads = True
    server.port = httpd.server_address[1]
    # A short poll interval: shutdown() waits up to one interval.
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def allow_private(settings: Any) -> None:
    settings.COSTMON_ALLOW_PRIVATE_WEBHOOKS = True


@pytest.fixture
def deny_private(settings: Any) -> None:
    settings.COSTMON_ALLOW_PRIVATE_WEBHOOKS = False


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the HTTP wrapper --------------------------------------------------------------------------


@pytest.mark.usefixtures("allow_private")
def test_post_returns_status_text_and_duration(receiver: LocalServer) -> None:
    code, text, duration_ms = http_module.post(
        receiver.url(), body=b'{"a":1}', headers={"Content-Type": "application/json"}
    )
    assert (code, text) == (200, "ok")
    assert 0 <= duration_ms < 5000
    [request] = receiver.received
    assert (request.method, request.path, request.body) == ("POST", "/hook", b'{"a":1}')
    assert request.headers["Content-Type"] == "application/json"


@pytest.mark.usefixtures("allow_private")
def test_post_truncates_the_response_text_to_1000_characters(receiver: LocalServer) -> None:
    receiver.respond(200, b"x" * 5000)
    _code, text, _ms = http_module.post(receiver.url(), body=b"", headers={})
    assert text == "x" * 1000


@pytest.mark.usefixtures("allow_private")
@pytest.mark.parametrize("status", [404, 410])
def test_a_gone_endpoint_is_a_permanent_error(receiver: LocalServer, status: int) -> None:
    receiver.respond(status, b"no_service")
    with pytest.raises(TransportError) as caught:
        http_module.post(receiver.url(), body=b"{}", headers={})
    assert caught.value.permanent is True
    assert caught.value.response_code == status
    assert f"the endpoint is gone ({status})" in caught.value.message
    assert "no_service" in caught.value.message


@pytest.mark.usefixtures("allow_private")
@pytest.mark.parametrize("status", [400, 401, 403])
def test_a_refused_message_is_a_permanent_error(receiver: LocalServer, status: int) -> None:
    receiver.respond(status, b"invalid_token")
    with pytest.raises(TransportError) as caught:
        http_module.post(receiver.url(), body=b"{}", headers={})
    assert (caught.value.permanent, caught.value.response_code) == (True, status)
    assert "invalid_token" in caught.value.message


@pytest.mark.usefixtures("allow_private")
@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_rate_limits_and_server_errors_are_transient(receiver: LocalServer, status: int) -> None:
    receiver.respond(status, b"try later")
    with pytest.raises(TransportError) as caught:
        http_module.post(receiver.url(), body=b"{}", headers={})
    assert (caught.value.permanent, caught.value.response_code) == (False, status)


@pytest.mark.usefixtures("allow_private")
def test_a_redirect_is_not_followed_and_is_transient(receiver: LocalServer) -> None:
    receiver.respond(302, headers={"Location": receiver.url("/elsewhere")})
    with pytest.raises(TransportError) as caught:
        http_module.post(receiver.url(), body=b"{}", headers={})
    assert (caught.value.permanent, caught.value.response_code) == (False, 302)
    assert "redirects" in caught.value.message
    assert [r.path for r in receiver.received] == ["/hook"]


@pytest.mark.usefixtures("allow_private")
def test_a_slow_endpoint_times_out_as_a_transient_error(
    receiver: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_module, "READ_TIMEOUT", 0.5)
    receiver.respond(200, b"ok", delay=2)
    started = time.monotonic()
    with pytest.raises(TransportError) as caught:
        http_module.post(receiver.url(), body=b"{}", headers={})
    assert time.monotonic() - started < 1.5
    assert caught.value.permanent is False
    assert caught.value.response_code is None
    assert caught.value.message == "timed out after 0.5 s waiting for 127.0.0.1 to answer"


@pytest.mark.usefixtures("allow_private")
def test_a_refused_connection_is_transient_and_readable() -> None:
    with pytest.raises(TransportError) as caught:
        http_module.post(f"http://127.0.0.1:{closed_port()}/", body=b"{}", headers={})
    assert caught.value.permanent is False
    assert caught.value.message == "could not connect to 127.0.0.1: Connection refused"


@pytest.mark.usefixtures("deny_private")
@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:{port}/hook", "127.0.0.1"),
        ("http://localhost:{port}/hook", "localhost: it resolves to "),
        ("http://10.1.2.3/", "10.1.2.3: a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254: a link-local address"),
        ("http://[::1]:{port}/hook", "::1: a loopback address"),
        ("http://0.0.0.0:{port}/hook", "0.0.0.0: an unspecified address"),
        ("http://100.64.0.1/", "100.64.0.1: a non-public address"),
    ],
)
def test_private_addresses_are_refused_before_any_request(
    receiver: LocalServer, url: str, address: str
) -> None:
    with pytest.raises(TransportError) as caught:
        http_module.post(url.format(port=receiver.port), body=b"{}", headers={})
    assert caught.value.permanent is True
    assert address in caught.value.message
    assert "COSTMON_ALLOW_PRIVATE_WEBHOOKS" in caught.value.message
    assert receiver.received == []


@pytest.mark.usefixtures("allow_private")
def test_private_addresses_are_allowed_when_the_setting_is_on(receiver: LocalServer) -> None:
    code, _text, _ms = http_module.post(receiver.url(host="localhost"), body=b"{}", headers={})
    assert code == 200
    assert len(receiver.received) == 1


@pytest.mark.usefixtures("deny_private")
def test_the_address_actually_connected_to_is_checked_too(
    receiver: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name looked public when checked, then pointed at loopback."""
    monkeypatch.setattr(
        http_module, "_resolve", lambda host, port: [ipaddress.ip_address("93.184.216.34")]
    )
    with pytest.raises(TransportError) as caught:
        http_module.post(receiver.url(), body=b"{}", headers={})
    assert caught.value.permanent is True
    assert "127.0.0.1: a loopback address" in caught.value.message
    assert receiver.received == []


@pytest.mark.usefixtures("deny_private")
def test_guarded_connections_still_deliver_to_allowed_addresses(
    receiver: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_module, "_private_kind", lambda address: None)
    code, text, _ms = http_module.post(receiver.url(), body=b"{}", headers={})
    assert (code, text) == (200, "ok")
    assert len(receiver.received) == 1


@pytest.mark.usefixtures("allow_private")
@pytest.mark.parametrize(
    "url", ["ftp://example.com/hook", "file:///etc/passwd", "gopher://example.com/", "example.com"]
)
def test_only_http_and_https_urls_are_sent_to(url: str) -> None:
    with pytest.raises(TransportError) as caught:
        http_module.post(url, body=b"{}", headers={})
    assert caught.value.permanent is True
    assert "only http and https URLs are allowed" in caught.value.message


# --- Slack ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("allow_private")
def test_slack_posts_a_fallback_text_and_blocks(receiver: LocalServer) -> None:
    delivery = SlackTransport({"url": receiver.url("/services/T0/B0/x")}).notify(MESSAGE)

    assert delivery.response_code == 200
    [request] = receiver.received
    assert request.path == "/services/T0/B0/x"
    assert request.headers["Content-Type"] == "application/json"
    payload = json.loads(request.body)
    assert payload["text"] == "[WARNING] acme: Spend today is above $10 — $12.40 (threshold $10)"
    header, section, actions = payload["blocks"]
    assert header["type"] == "header"
    assert header["text"]["text"] == "🟠 Spend today is above $10"
    assert section["text"]["text"] == "Spend today is $12.40, above the $10 threshold."
    assert [f["text"] for f in section["fields"]] == [
        "*Figure*\n$12.40",
        "*Threshold*\n$10",
        "*Period*\n2026-11-21",
        "*Tenant*\nacme",
        "*Rule*\nDaily cap",
    ]
    assert actions["elements"][0]["url"] == "https://costmon.example.com/alerts/42"


@pytest.mark.usefixtures("allow_private")
def test_slack_says_when_an_alert_is_resolved_and_escapes_markup(receiver: LocalServer) -> None:
    resolved = replace(
        MESSAGE,
        kind="resolved",
        severity="critical",
        link=None,
        text="Back under <script>alert(1)</script> & calm",
    )
    SlackTransport({"url": receiver.url()}).notify(resolved)

    payload = json.loads(receiver.received[0].body)
    assert payload["text"] == "[RESOLVED] acme: Spend today is above $10 — $12.40 (threshold $10)"
    header, section = payload["blocks"]  # no link, no button
    assert header["text"]["text"] == "✅ Resolved: Spend today is above $10"
    assert section["text"]["text"] == "Back under &lt;script&gt;alert(1)&lt;/script&gt; &amp; calm"


@pytest.mark.parametrize(
    ("severity", "emoji"), [("critical", "🔴"), ("warning", "🟠"), ("info", "🔵")]
)
def test_slack_header_shows_the_severity(severity: str, emoji: str) -> None:
    from alerts.transports.slack import payload

    header = payload(replace(MESSAGE, severity=severity))["blocks"][0]
    assert header["text"]["text"].startswith(emoji + " ")


@pytest.mark.usefixtures("deny_private")
def test_slack_config_requires_an_https_url() -> None:
    url = "https://hooks.example.test/services/PLACEHOLDER/x"
    assert SlackTransport.validate_config({"url": f"  {url} "}) == {"url": url}
    for bad in [
        {},
        {"url": ""},
        {"url": 5},
        {"url": "not a url"},
        {"url": "ftp://hooks.slack.com/x"},
    ]:
        with pytest.raises(ValidationError) as caught:
            SlackTransport.validate_config(bad)
        assert "url" in caught.value.message_dict
    with pytest.raises(ValidationError, match="https"):
        SlackTransport.validate_config({"url": "http://hooks.example.test/services/PLACEHOLDER/x"})
    with pytest.raises(ValidationError, match="private address"):
        SlackTransport.validate_config({"url": "https://10.0.0.5/hook"})


@pytest.mark.usefixtures("allow_private")
def test_slack_config_accepts_http_when_private_webhooks_are_allowed() -> None:
    url = "http://127.0.0.1:8080/hook"
    assert SlackTransport.validate_config({"url": url}) == {"url": url}


# --- signed webhooks ------------------------------------------------------------------------------


EXPECTED_BODY = (
    b'{"details":{"limit_usd":"10","spent_usd":"12.40"},"figure":"$12.40","id":42,'
    b'"link":"https://costmon.example.com/alerts/42","occurred_at":"2026-11-21T14:03:00Z",'
    b'"period":"2026-11-21","rule":"Daily cap","severity":"warning","tenant":"acme",'
    b'"text":"Spend today is $12.40, above the $10 threshold.","threshold":"$10",'
    b'"title":"Spend today is above $10","type":"costmon.alert"}'
)
SECRET = "s3cret-for-tests-only-0123456789"


@pytest.mark.usefixtures("allow_private")
def test_webhook_posts_the_documented_json_signed_with_the_secret(receiver: LocalServer) -> None:
    before = int(time.time())
    delivery = WebhookTransport({"url": receiver.url(), "secret": SECRET}).notify(MESSAGE)

    assert delivery.response_code == 200
    [request] = receiver.received
    assert request.body == EXPECTED_BODY
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == "costmon-webhooks/1"
    timestamp = request.headers["X-Costmon-Timestamp"]
    assert before <= int(timestamp) <= time.time()
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + EXPECTED_BODY, hashlib.sha256)
    signature = request.headers["X-Costmon-Signature"]
    assert signature == "sha256=" + expected.hexdigest()

    def verify(**changes: Any) -> bool:
        arguments = {
            "secret": SECRET,
            "timestamp": timestamp,
            "body": request.body,
            "signature": signature,
        }
        return verify_signature(**(arguments | changes))

    assert verify() is True
    assert verify(body=request.body.replace(b"12.40", b"1.24")) is False
    assert verify(secret="another-secret-of-enough-length") is False
    assert verify(timestamp=str(int(timestamp) + 1)) is False
    assert verify(signature="sha256=" + "0" * 64) is False
    assert verify(signature="not a signature") is False
    assert verify(now=int(timestamp) + 299) is True
    assert verify(now=int(timestamp) + 301) is False  # a replay, five minutes later
    assert verify(now=int(timestamp) - 301) is False
    assert verify(timestamp="yesterday") is False


@pytest.mark.parametrize(
    ("kind", "event_type"),
    [
        ("alert", "costmon.alert"),
        ("reminder", "costmon.alert.reminder"),
        ("resolved", "costmon.alert.resolved"),
        ("test", "costmon.test"),
    ],
)
def test_webhook_type_follows_the_message_kind(kind: str, event_type: str) -> None:
    from alerts.transports.webhook import body_for

    assert json.loads(body_for(replace(MESSAGE, kind=kind)))["type"] == event_type


def test_webhook_test_message_has_nulls_for_what_it_lacks() -> None:
    from alerts.transports.webhook import body_for

    test_message = Message(
        kind="test", tenant="acme", title="Test", severity="info", text="It works."
    )
    assert body_for(test_message) == (
        b'{"details":{},"figure":null,"id":null,"link":null,"occurred_at":"","period":null,'
        b'"rule":null,"severity":"info","tenant":"acme","text":"It works.","threshold":null,'
        b'"title":"Test","type":"costmon.test"}'
    )


@pytest.mark.usefixtures("allow_private")
def test_webhook_failures_carry_the_response_code(receiver: LocalServer) -> None:
    receiver.respond(410, b"gone")
    with pytest.raises(TransportError) as caught:
        WebhookTransport({"url": receiver.url(), "secret": SECRET}).notify(MESSAGE)
    assert (caught.value.permanent, caught.value.response_code) == (True, 410)


@pytest.mark.usefixtures("deny_private")
def test_webhook_config_generates_a_secret_and_checks_the_url() -> None:
    url = "https://hooks.example.com/costmon"
    generated = WebhookTransport.validate_config({"url": url})
    assert generated["url"] == url
    assert len(generated["secret"]) == 43  # token_urlsafe(32)
    assert WebhookTransport.validate_config({"url": url, "secret": ""})["secret"] != ""
    assert WebhookTransport.validate_config({"url": url, "secret": SECRET}) == {
        "url": url,
        "secret": SECRET,
    }
    with pytest.raises(ValidationError) as caught:
        WebhookTransport.validate_config({"url": url, "secret": "short"})
    assert "secret" in caught.value.message_dict
    for bad in [{}, {"url": "http://hooks.example.com/costmon"}, {"url": "file:///etc/passwd"}]:
        with pytest.raises(ValidationError) as caught:
            WebhookTransport.validate_config(bad)
        assert "url" in caught.value.message_dict


# --- email ----------------------------------------------------------------------------------------


def test_email_sends_text_and_escaped_html(mailoutbox: list[Any], settings: Any) -> None:
    settings.DEFAULT_FROM_EMAIL = "costmon <alerts@costmon.example.com>"
    message = replace(MESSAGE, severity="critical", rule="<script>alert('x')</script>")
    delivery = EmailTransport({"to": ["alice@example.com", "ops@example.com"]}).notify(message)

    assert delivery.response_code is None
    assert delivery.duration_ms >= 0
    [email] = mailoutbox
    assert email.subject == "[costmon] [CRITICAL] acme: Spend today is above $10"
    assert email.to == ["alice@example.com", "ops@example.com"]
    assert email.from_email == "costmon <alerts@costmon.example.com>"
    assert "Spend today is $12.40, above the $10 threshold." in email.body
    assert "Figure:    $12.40" in email.body
    assert "Threshold: $10" in email.body
    assert "Period:    2026-11-21" in email.body
    assert "Open in costmon: https://costmon.example.com/alerts/42" in email.body
    [(html, mimetype)] = email.alternatives
    assert mimetype == "text/html"
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "<script>" not in html
    assert "$12.40" in html and "$10" in html and "2026-11-21" in html
    assert 'href="https://costmon.example.com/alerts/42"' in html
    assert "<style" not in html  # inline styles only: many mail clients drop <style>


def test_email_subject_says_resolved_and_stays_on_one_line(mailoutbox: list[Any]) -> None:
    message = replace(MESSAGE, kind="resolved", title="Spend today\nis above $10", link=None)
    EmailTransport({"to": ["alice@example.com"]}).notify(message)
    [email] = mailoutbox
    assert email.subject == "[costmon] [RESOLVED] acme: Spend today is above $10"
    assert "Open in costmon" not in email.body


def test_email_subject_marks_reminders_and_tests(mailoutbox: list[Any]) -> None:
    EmailTransport({"to": ["alice@example.com"]}).notify(replace(MESSAGE, kind="reminder"))
    EmailTransport({"to": ["alice@example.com"]}).notify(replace(MESSAGE, kind="test"))
    assert [email.subject for email in mailoutbox] == [
        "[costmon] [WARNING] acme: Reminder: Spend today is above $10",
        "[costmon] [WARNING] acme: Test: Spend today is above $10",
    ]


def test_email_config_validation() -> None:
    assert EmailTransport.validate_config({"to": [" alice@example.com ", "ALICE@example.com"]}) == {
        "to": ["alice@example.com"]
    }
    assert EmailTransport.validate_config({"to": "ops@example.com"}) == {"to": ["ops@example.com"]}
    too_many = [f"user{n}@example.com" for n in range(21)]
    for bad, says in [
        ({}, "list of email addresses"),
        ({"to": []}, "at least one"),
        ({"to": [""]}, "at least one"),
        ({"to": ["not-an-address"]}, "'not-an-address' is not a valid email address"),
        ({"to": [3]}, "list of email addresses"),
        ({"to": too_many}, "At most 20"),
    ]:
        with pytest.raises(ValidationError) as caught:
            EmailTransport.validate_config(bad)
        assert says in caught.value.message_dict["to"][0]


def test_an_unreachable_mail_server_is_a_transient_error(settings: Any) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", closed_port(), 2
    with pytest.raises(TransportError) as caught:
        EmailTransport({"to": ["alice@example.com"]}).notify(MESSAGE)
    assert caught.value.permanent is False
    assert "Connection refused" in caught.value.message


class _RefusingSMTP(socketserver.StreamRequestHandler):
    """Just enough SMTP to refuse every recipient with 550."""

    def handle(self) -> None:
        self.wfile.write(b"220 localhost ESMTP\r\n")
        for line in self.rfile:
            verb = line[:4].upper()
            if verb == b"RCPT":
                self.wfile.write(b"550 5.1.1 No such user here\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 Bye\r\n")
                return
            else:
                self.wfile.write(b"250 OK\r\n")


@pytest.fixture
def refusing_smtp() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _RefusingSMTP)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_refused_recipients_are_a_permanent_error(settings: Any, refusing_smtp: int) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", refusing_smtp, 5
    with pytest.raises(TransportError) as caught:
        EmailTransport({"to": ["nobody@example.com"]}).notify(MESSAGE)
    assert caught.value.permanent is True
    assert "refused the recipients: nobody@example.com" in caught.value.message


# --- the registry ---------------------------------------------------------------------------------


def test_registry_knows_each_kind_by_its_own_name() -> None:
    assert sorted(TRANSPORTS) == ["email", "slack", "webhook"]
    assert all(kind == transport.kind for kind, transport in TRANSPORTS.items())
    transport = get_transport("slack", {"url": "https://hooks.example.test/services/PLACEHOLDER/x"})
    assert isinstance(transport, SlackTransport)
    assert transport.config == {"url": "https://hooks.example.test/services/PLACEHOLDER/x"}


def test_an_unknown_kind_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="Unknown channel kind 'pagerduty'"):
        get_transport("pagerduty", {})
