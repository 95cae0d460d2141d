"""Every bad input answers a 4xx that names the problem, never a 500: nesting depth, invalid
Unicode, control characters in names, impossible and out-of-range dates, NUL in read filters.
And the names people really send (any script, emoji, quotes, `/ % ? #`) are all accepted."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
import time_machine

from budgets.models import Budget, EmergencyStop
from tests.helpers import event, post_usage
from usage.models import UsageEvent

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "unscoped")]

NOW = "2026-11-21T12:00:00Z"
DEEP_LIST = "[" * 1000 + "]" * 1000
DEEP_OBJECT = '{"a":' * 1000 + "1" + "}" * 1000
DEPTH_MESSAGE = "The JSON body nests arrays and objects more than 32 levels deep."
WRITE_PATHS = (
    "/api/v1/usage/",
    "/api/v1/check/",
    "/api/v1/budgets/",
    "/api/v1/alert-rules/",
    "/api/v1/channels/",
    "/api/v1/emergency-stop/",
)
# Names people send: every script, emoji, quotes, and the characters URLs care about.
GOOD_NAMES = (
    "Zoë Ångström",
    "用户-42",
    "مستخدم عربي",  # right to left
    "עברית\u200f",  # with a right-to-left mark
    "emoji 🦊🚀",
    "quote\"s and 'single'",
    "path/with/slashes",
    "100% sure?",
    "#hash & <angle>",
    "  inner  spaces  ",
    "back\\slash",
    "..",
)
# (character, how a message names it)
REFUSED = (
    ("\n", "a line feed (U+000A)"),
    ("\t", "a tab (U+0009)"),
    ("\r", "a carriage return (U+000D)"),
    ("\x00", "NUL (U+0000)"),
    ("\x1b", "a control character (U+001B)"),
    ("\x7f", "a control character (U+007F)"),
    ("\x85", "a control character (U+0085)"),
    ("\u2028", "a line separator (U+2028)"),
)
NAME_FIELDS = ("provider", "model", "operation", "end_user", "session_id", "event_id")


@pytest.fixture(autouse=True)
def _frozen_clock() -> Any:
    with time_machine.travel(NOW, tick=False):
        yield


def raw_post(client: Any, path: str, body: str | bytes) -> Any:
    return client.generic("POST", path, body, content_type="application/json")


def stored() -> int:
    return UsageEvent.objects.unscoped().count()


def only_error(response: Any) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
    data = response.json()
    assert len(data["errors"]) == 1, data
    return data["errors"][0]


# --- bodies: depth, Unicode, numbers ----------------------------------------------------------


@pytest.mark.parametrize("path", WRITE_PATHS)
@pytest.mark.parametrize("body", [DEEP_LIST, DEEP_OBJECT], ids=["list", "object"])
def test_json_nested_a_thousand_deep_is_a_400_everywhere(admin_client_key, path, body):
    response = raw_post(admin_client_key, path, body)
    assert response.status_code == 400
    assert response.json() == {
        "detail": DEPTH_MESSAGE,
        "errors": [{"field": None, "message": DEPTH_MESSAGE}],
    }


@pytest.mark.parametrize("path", ["/api/v1/budgets/", "/api/v1/channels/"])
def test_json_just_past_the_depth_limit_is_refused_and_at_it_accepted_as_json(
    admin_client_key, path
):
    nested = {"name": "n", "limit_usd": "1", "kind": "slack", "config": {}}
    inner: Any = "x"
    for _ in range(31):
        inner = [inner]
    nested["extra"] = inner  # 32 levels with the body itself
    response = admin_client_key.post(path, nested, format="json")
    assert DEPTH_MESSAGE not in response.content.decode()
    nested["extra"] = [inner]
    response = admin_client_key.post(path, nested, format="json")
    assert response.status_code == 400
    assert response.json()["detail"] == DEPTH_MESSAGE


@pytest.mark.parametrize(
    "field", [*NAME_FIELDS, "tags.team", "tags", "prompt_hash", "reservation_id", "occurred_at"]
)
def test_a_lone_surrogate_in_any_string_of_an_event_is_a_400_naming_it(ingest_client, field):
    body = event(tags={"team": "search"})
    if field == "tags":
        body["tags"] = {"\ud800": "x"}
        expected = "tags.\\ud800"  # the key as its escape: a reply cannot hold a lone surrogate
    elif field.startswith("tags."):
        body["tags"] = {"team": "\ud800"}
        expected = field
    else:
        body[field] = "a\ud800b"
        expected = field
    response = raw_post(ingest_client, "/api/v1/usage/", json.dumps([body]))
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert {
        "index": 0,
        "field": expected,
        "message": (
            "Must be valid Unicode: a lone surrogate (U+D800) at position "
            f"{1 if field in (*NAME_FIELDS, 'prompt_hash', 'reservation_id', 'occurred_at') else 0} "
            "is not a character."
        ),
    } in errors
    assert stored() == 0


def test_an_escaped_surrogate_pair_is_an_emoji_and_is_accepted(ingest_client):
    body = json.dumps([event(end_user="fox 🦊")])  # ensure_ascii: "fox \ud83e\udd8a"
    assert "\\ud83e\\udd8a" in body
    response = raw_post(ingest_client, "/api/v1/usage/", body)
    assert response.status_code == 201, response.content
    assert UsageEvent.objects.unscoped().get().end_user.value == "fox 🦊"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/check/", '{"end_user": "\\udc00"}', "end_user"),
        ("/api/v1/check/", '{"tags": {"team": "\\udbff"}}', "tags.team"),
        ("/api/v1/budgets/", '{"name": "\\ud800", "limit_usd": "1"}', "name"),
        (
            "/api/v1/channels/",
            '{"name": "c", "kind": "email", "config": {"to": ["\\ud800"]}}',
            "config.to.0",
        ),
        ("/api/v1/alert-rules/", '{"name": "\\ud800", "kind": "spend"}', "name"),
        ("/api/v1/emergency-stop/", '{"action": "trip", "reason": "\\ud800"}', "reason"),
    ],
)
def test_a_lone_surrogate_is_a_400_on_every_api(admin_client_key, path, body, field):
    error = only_error(raw_post(admin_client_key, path, body))
    assert error["field"] == field
    assert "lone surrogate" in error["message"]
    assert not EmergencyStop.objects.unscoped().exists()


def test_a_body_that_is_not_utf8_is_a_400(ingest_client):
    error = only_error(raw_post(ingest_client, "/api/v1/usage/", b'{"model": "caf\xe9"}'))
    assert error["message"] == (
        "The body is not UTF-8 (byte 0xe9 at position 14); send JSON encoded as UTF-8."
    )


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json_numbers(ingest_client, admin_client_key, constant):
    body = json.dumps(event()).replace("450", constant)
    error = only_error(raw_post(ingest_client, "/api/v1/usage/", body))
    assert error["message"] == f"Malformed JSON: {constant} is not a JSON number"
    budget = f'{{"name": "b", "limit_usd": {constant}}}'
    assert (
        "is not a JSON number"
        in only_error(raw_post(admin_client_key, "/api/v1/budgets/", budget))["message"]
    )
    assert not Budget.objects.unscoped().exists()


def test_a_token_count_with_a_huge_exponent_is_refused_at_once(ingest_client):
    started = time.perf_counter()
    body = json.dumps(event()).replace("450", "1e999999999")
    error = only_error(raw_post(ingest_client, "/api/v1/usage/", body))
    assert time.perf_counter() - started < 2
    assert (error["field"], error["message"]) == (
        "input_tokens",
        "1E+999999999 tokens is more than 100,000,000 for one call; check the units.",
    )


# --- names: which characters --------------------------------------------------------------------


@pytest.mark.parametrize("field", [*NAME_FIELDS, "tag key", "tag value"])
@pytest.mark.parametrize(("char", "named"), REFUSED, ids=[repr(c) for c, _ in REFUSED])
def test_a_control_character_in_a_name_is_a_400_naming_the_field(ingest_client, field, char, named):
    body = event()
    if field == "tag key":
        body["tags"], where, at = {f"te{char}am": "search"}, f"tags.te{char}am", 2
    elif field == "tag value":
        body["tags"], where, at = {"team": f"se{char}arch"}, "tags.team", 2
    else:
        body[field], where, at = f"ab{char}", field, 2
    response = post_usage(ingest_client, [event(event_id="fine"), body])
    assert response.status_code == 400
    assert {
        "index": 1,
        "field": where,
        "message": f"Must not contain control characters or line breaks: {named} at position {at}.",
    } in response.json()["errors"]
    assert stored() == 0


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_names_people_send_are_accepted_and_kept_exactly(ingest_client, read_client, name):
    body = event(
        event_id=f"id {name}",
        model=name,
        operation=name,
        end_user=name,
        session_id=name,
        tags={name: name},
    )
    response = post_usage(ingest_client, body)
    assert response.status_code == 201, response.content
    [stored_event] = read_client.get("/api/v1/usage/").json()["results"]
    kept = name.strip()  # surrounding spaces are trimmed from names, as before
    assert (
        stored_event["event_id"],
        stored_event["model"],
        stored_event["operation"],
        stored_event["end_user"],
        stored_event["session_id"],
        stored_event["tags"],
    ) == (f"id {name}".strip(), kept, kept, kept, kept, {name: name})
    # ... and can be read back by the same name.
    for param in ("model", "end_user", "operation", "session_id"):
        page = read_client.get("/api/v1/usage/", {param: kept}).json()["results"]
        assert len(page) == 1, param
    assert len(read_client.get("/api/v1/usage/", {"tag": f"{name}:{name}"}).json()["results"]) == 1
    metrics = read_client.get(
        "/api/v1/metrics/", {"period": "month", "group_by": f"tag:{name}"}
    ).json()
    assert [row["key"] for row in metrics["breakdown"]] == [name]


def test_the_check_refuses_control_characters_in_names(ingest_client):
    response = ingest_client.post(
        "/api/v1/check/", {"end_user": "a\nb", "model": "gpt-4o"}, format="json"
    )
    assert response.status_code == 400
    assert response.json() == {
        "errors": [
            {
                "index": 0,
                "field": "end_user",
                "message": "Must not contain control characters or line breaks: a line feed "
                "(U+000A) at position 1.",
            }
        ]
    }


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/budgets/", {"name": "a\nb", "limit_usd": "1"}, "name"),
        (
            "/api/v1/budgets/",
            {"name": "b", "limit_usd": "1", "scope": "end_user", "scope_value": "u\t1"},
            "scope_value",
        ),
        ("/api/v1/alert-rules/", {"name": "r\r", "kind": "spend"}, "name"),
        ("/api/v1/channels/", {"name": "c\x00", "kind": "email", "config": {"to": []}}, "name"),
        ("/api/v1/emergency-stop/", {"action": "trip", "reason": "bell \x07"}, "reason"),
    ],
)
def test_control_characters_in_names_are_refused_on_every_api(admin_client_key, path, body, field):
    error = only_error(admin_client_key.post(path, body, format="json"))
    assert error["field"] == field
    assert error["message"].startswith("Must not contain control characters")
    assert not Budget.objects.unscoped().exists()


def test_an_emergency_stop_reason_may_hold_line_breaks_and_tabs(admin_client_key):
    reason = "agent loop\n\tsee the incident doc"
    response = admin_client_key.post(
        "/api/v1/emergency-stop/", {"action": "trip", "reason": reason}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["stop"]["reason"] == reason


# --- dates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "reason"),
    [
        ("2026-02-30T00:00:00Z", "day is out of range for month"),
        ("2026-11-20T10:15:60Z", "second must be in 0..59"),
        ("2026-11-20T24:00:00Z", "hour must be in 0..23"),
        ("2026-11-20T10:15:00+25:00", "a UTC offset must be less than 24 hours"),
        ("2026-13-01T00:00:00Z", "month must be in 1..12"),
    ],
)
def test_an_impossible_occurred_at_is_a_400(ingest_client, when, reason):
    error = only_error(post_usage(ingest_client, event(occurred_at=when)))
    assert error == {
        "index": 0,
        "field": "occurred_at",
        "message": f"{when} is not a valid date-time ({reason}).",
    }


@pytest.mark.parametrize(
    ("when", "message"),
    [
        (
            "9999-12-31T23:59:59-05:00",
            "9999-12-31T23:59:59-05:00 is in the future (server time is 2026-11-21T12:00:00Z).",
        ),
        ("0001-01-01T00:00:00+05:00", "Must be after 2000-01-01."),
        ("not a date", "Must be an ISO 8601 date-time, e.g. 2026-11-23T14:05:00Z."),
    ],
)
def test_an_out_of_range_occurred_at_is_a_400(ingest_client, when, message):
    error = only_error(post_usage(ingest_client, event(occurred_at=when)))
    assert (error["field"], error["message"]) == ("occurred_at", message)


READ_PATHS = ("/api/v1/metrics/", "/api/v1/usage/")


@pytest.mark.parametrize("path", READ_PATHS)
@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        (
            "start=9999-12-30&end=9999-12-31",
            "start",
            "start must be between 2000-01-01 and 2099-12-31.",
        ),
        (
            "start=2026-01-01&end=9999-12-31",
            "end",
            "end must be between 2000-01-01 and 2099-12-31.",
        ),
        ("start=2099-12-31", "end", "end must be after start."),
        (
            "start=0001-01-01&end=0001-01-02",
            "start",
            "start must be between 2000-01-01 and 2099-12-31.",
        ),
        (
            "start=9999-12-31T23:59:59-05:00",
            "start",
            "start must be between 2000-01-01 and 2099-12-31.",
        ),
        (
            "start=2026-02-30",
            "start",
            "start must be a date (2026-11-01) or an ISO 8601 date-time (2026-02-30 is not one: "
            "day is out of range for month).",
        ),
        (
            "start=2026-01-01T00:00:00%2B25:00",
            "start",
            "start must be a date (2026-11-01) or an ISO 8601 date-time "
            "(2026-01-01T00:00:00+25:00 is not one: a UTC offset must be less than 24 hours).",
        ),
    ],
)
def test_out_of_range_and_impossible_read_ranges_are_a_400(
    read_client, path, query, field, message
):
    response = read_client.get(f"{path}?{query}")
    assert response.status_code == 400, response.content
    assert response.json() == {
        "detail": message,
        "field": field,
        "errors": [{"field": field, "message": message}],
    }


def test_the_last_day_of_the_range_is_readable(read_client):
    response = read_client.get("/api/v1/metrics/?start=2099-12-01&end=2099-12-31")
    assert response.status_code == 200, response.content
    assert response.json()["end"] == "2100-01-01T00:00:00Z"


@pytest.mark.parametrize(
    "raw",
    [
        "0001-01-01T00:00:00+05:00|5",  # before any event
        "9999-12-31T00:00:00|1",  # no time zone
        "2026-01-01T00:00:00+00:00|99999999999999999999999",  # no such id
        "2026-01-01T00:00:00+00:00|-1",
    ],
)
def test_a_forged_cursor_is_a_400(read_client, raw):
    cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    error = only_error(read_client.get("/api/v1/usage/", {"cursor": cursor}))
    assert error == {
        "field": "cursor",
        "message": "The cursor is not valid; use next_cursor from a previous page.",
    }


# --- NUL in read filters ---------------------------------------------------------------------


@pytest.mark.parametrize("path", [*READ_PATHS, "/api/v1/alerts/", "/api/v1/budgets/"])
@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("end_user", "%00"),
        ("model", "a%00b"),
        ("provider", "%00"),
        ("operation", "x%00"),
        ("tag", "team:%00"),
        ("group_by", "tag:%00"),
        ("session_id", "%00"),
        ("cursor", "%00"),
        ("start", "2026-11-01%00"),
    ],
)
def test_nul_in_a_read_filter_is_a_400_naming_it(read_client, path, param, value):
    error = only_error(read_client.get(f"{path}?{param}={value}"))
    assert error == {
        "field": param,
        "message": f"The {param} parameter holds a NUL character (%00), which no name can hold.",
    }


@pytest.mark.parametrize(
    "query",
    ["end_user=%00", "model=a%00b", "tag=team:%00", "tag=te%00am:x", "by=tag:%00"],
)
def test_nul_in_a_dashboard_filter_shows_a_message_not_an_error(client, owner, query):
    client.force_login(owner)
    post_usage_direct()
    response = client.get(f"/t/acme/?{query}")
    assert response.status_code == 200
    html = response.content.decode()
    assert "NUL character (%00)" in html or "Unknown grouping" in html
    assert 'class="problem"' in html


@pytest.mark.parametrize(
    "path",
    [
        "/t/acme/users/%00/",
        "/t/acme/models/a%00b/",
        "/t/acme/users/?name=%00",
        "/t/acme/models/?name=x%00",
    ],
)
def test_nul_in_a_drill_down_is_a_400(client, owner, path):
    client.force_login(owner)
    response = client.get(path)
    assert response.status_code == 400
    assert response.content == b"No name holds a NUL character (%00).\n"


def test_an_out_of_range_dashboard_period_shows_a_message(client, owner):
    client.force_login(owner)
    post_usage_direct()
    response = client.get("/t/acme/?period=custom&start=9999-12-30&end=9999-12-31")
    assert response.status_code == 200
    assert "start must be between 2000-01-01 and 2099-12-31. Showing last 30 days." in (
        response.content.decode()
    )


def post_usage_direct() -> None:
    """One event for acme, so dashboard pages are not in their empty state."""
    from costmon.core.models import Tenant
    from usage.ingest import parse_batch
    from usage.services import usage_record_batch

    usage_record_batch(
        tenant=Tenant.objects.get(slug="acme"),
        events=parse_batch([event(occurred_at="2026-11-21T09:00:00Z")]),
    )


# --- tag names any shape ---------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["a__contains", "0", "has key", "x__regex"])
def test_a_tag_filter_matches_the_tag_by_its_exact_name(
    ingest_client, read_client, outsider_client, tag
):
    assert (
        post_usage(
            ingest_client,
            [event(event_id="hit", tags={tag: "("}), event(event_id="miss", tags={"other": "("})],
        ).status_code
        == 201
    )
    assert post_usage(outsider_client, event(event_id="theirs", tags={tag: "("})).status_code == 201
    results = read_client.get("/api/v1/usage/", {"tag": f"{tag}:("}).json()["results"]
    assert [e["event_id"] for e in results] == ["hit"]
    metrics = read_client.get("/api/v1/metrics/", {"period": "month", "tag": f"{tag}:("}).json()
    assert metrics["total"]["calls"] == 1


# --- OpenTelemetry: the same rules, span by span ------------------------------------------


def test_an_otlp_span_whose_names_hold_control_characters_is_rejected_with_its_reason(
    ingest_client, read_client
):
    from tests.usage.test_otlp import TRACE, haiku, json_export, json_span, post_json

    body = json_export(
        json_span("0000000000000001", haiku()),
        json_span("0000000000000002", haiku(**{"gen_ai.request.model": "claude\nhaiku"})),
        json_span("0000000000000003", haiku(**{"user.id": "ann\tlee"})),
    )
    response = post_json(ingest_client, body)
    assert response.status_code == 200, response.content
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2"
    message = partial["errorMessage"]
    assert (
        "gen_ai.response.model / gen_ai.request.model: Must not contain control characters or "
        "line breaks: a line feed (U+000A) at position 6" in message
    )
    assert "end_user: Must not contain control characters or line breaks: a tab" in message
    assert [e["event_id"] for e in read_client.get("/api/v1/usage/").json()["results"]] == [
        f"otel-{TRACE}-0000000000000001"
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"resourceSpans": ' + "[" * 2000 + "]" * 2000 + "}", "Malformed JSON"),
        (b'{"resourceSpans": "caf\xe9"}', "Malformed JSON"),
    ],
)
def test_an_otlp_json_body_too_deep_or_not_utf8_is_a_400(ingest_client, body, message):
    from tests.usage.test_otlp import post_json

    response = post_json(ingest_client, body if isinstance(body, bytes) else body.encode())
    assert response.status_code == 400
    assert response.json()["message"].startswith(message)


def test_an_otlp_lone_surrogate_is_a_400_naming_where_it_is(ingest_client, read_client):
    # Protobuf strings are UTF-8: such an export is not an ExportTraceServiceRequest at all.
    from tests.usage.test_otlp import haiku, json_export, json_span, post_json

    body = json.dumps(
        json_export(
            json_span("0000000000000001", haiku()),
            json_span("0000000000000002", haiku(**{"gen_ai.request.model": "x\ud800"})),
        )
    )
    response = post_json(ingest_client, body.encode())
    assert response.status_code == 400
    message = response.json()["message"]
    assert "Unpaired surrogate at ExportTraceServiceRequest.resourceSpans[0]" in message
    assert "spans[1].attributes[2].value.stringValue" in message
    assert read_client.get("/api/v1/usage/").json()["results"] == []


@pytest.mark.parametrize(
    ("end_user", "status"),
    [
        ("C:\\new\\table", 201),  # backslashes before n and t: no line feed, no tab
        ("fox 🦊 and 🚀", 201),  # escaped surrogate pairs
        ("fox 🦊\\", 201),
        ("fox 🦊\n", 400),
        ("\\\n", 400),  # a backslash, then a line feed
    ],
)
def test_escapes_are_read_as_json_reads_them(ingest_client, end_user, status):
    body = json.dumps([event(end_user=end_user)])  # ensure_ascii, as the Python client sends
    response = raw_post(ingest_client, "/api/v1/usage/", body)
    assert response.status_code == status, response.content
    if status == 201:
        assert UsageEvent.objects.unscoped().get().end_user.value == end_user.strip()


def test_a_lone_low_surrogate_after_a_pair_is_refused(ingest_client):
    body = json.dumps([event()]).replace('"user-1"', '"\\ud83e\\udd8a\\udc00"')
    error = only_error(raw_post(ingest_client, "/api/v1/usage/", body))
    assert (error["field"], error["message"]) == (
        "end_user",
        "Must be valid Unicode: a lone surrogate (U+DC00) at position 1 is not a character.",
    )
