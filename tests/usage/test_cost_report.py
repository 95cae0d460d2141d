from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
import time_machine
from django.core.management import CommandError, call_command

from costmon.core.services import tenant_create
from tests.helpers import event
from usage.ingest import parse_batch
from usage.reports import align_money
from usage.services import usage_record_batch

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
NOW = "2026-11-21T12:00:00Z"

# acme's November, priced with the `prices` fixture (haiku $1/$5, gpt-4o-mini $0.15/$0.60):
#   a  11-20 haiku        chat       user-1  450 in, 180 out          $0.00135
#   b  11-20 gpt-4o-mini  chat       user-2  1500 in, 500 out         $0.000525
#   c  11-21 haiku        summarize  user-1  1000 in, 200 out         $0.002
#   d  11-21 gpt-4o-mini  classify   user-3  300 in, 10 out, cache hit  $0
#   e  11-21 haiku        chat       user-2  100 in, error            $0.0001
#   f  11-21 llama-ft     chat       user-3  400 in, 100 out, unpriced  $0
# and g on 10-31 (haiku, 1000 in: $0.001), outside the month.
ACME_EVENTS = [
    event(
        event_id="a",
        occurred_at="2026-11-20T10:15:00Z",
        end_user="user-1",
        input_tokens=450,
        output_tokens=180,
        latency_ms=900,
    ),
    event(
        event_id="b",
        occurred_at="2026-11-20T11:00:00Z",
        provider="openai",
        model="gpt-4o-mini",
        end_user="user-2",
        input_tokens=1500,
        output_tokens=500,
        latency_ms=700,
    ),
    event(
        event_id="c",
        occurred_at="2026-11-21T09:00:00Z",
        operation="summarize",
        end_user="user-1",
        input_tokens=1000,
        output_tokens=200,
    ),
    event(
        event_id="d",
        occurred_at="2026-11-21T09:30:00Z",
        provider="openai",
        model="gpt-4o-mini",
        operation="classify",
        end_user="user-3",
        input_tokens=300,
        output_tokens=10,
        cache_hit=True,
    ),
    event(
        event_id="e",
        occurred_at="2026-11-21T10:00:00Z",
        end_user="user-2",
        input_tokens=100,
        output_tokens=0,
        status="error",
    ),
    event(
        event_id="f",
        occurred_at="2026-11-21T10:30:00Z",
        provider="fireworks",
        model="llama-3.3-70b-support-ft",
        end_user="user-3",
        input_tokens=400,
        output_tokens=100,
    ),
    event(
        event_id="g",
        occurred_at="2026-10-31T23:00:00Z",
        end_user="user-1",
        input_tokens=1000,
        output_tokens=0,
    ),
]
# globex spends $2.50 the same day on a model acme never uses.
GLOBEX_EVENTS = [
    event(
        event_id="a",
        occurred_at="2026-11-20T10:15:00Z",
        provider="openai",
        model="gpt-4o",
        operation="secret-project",
        end_user="globex-ceo",
        input_tokens=1_000_000,
        output_tokens=0,
    ),
]


@pytest.fixture(autouse=True)
def _frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def usage(acme, outsider):
    usage_record_batch(tenant=acme, events=parse_batch(ACME_EVENTS))
    usage_record_batch(tenant=outsider, events=parse_batch(GLOBEX_EVENTS))


def report(*args: str) -> str:
    out = io.StringIO()
    call_command("cost_report", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def json_report(*args: str) -> list[dict[str, Any]]:
    return json.loads(report(*args, "--format", "json"))["tenants"]


def sections(text: str) -> dict[str, list[list[str]]]:
    """A table report's sections: title -> rows split on whitespace (headers first)."""
    found: dict[str, list[list[str]]] = {}
    current: list[list[str]] | None = None
    for line in text.splitlines():
        if not line.strip():
            current = None
        elif not line.startswith(" "):
            current = found.setdefault(line, [])
        elif current is not None:
            current.append(line.split())
    return found


def test_the_table_shows_exact_totals_for_the_month(usage):
    text = report("--period", "month", "--tenant", "acme")
    assert text.splitlines()[0] == "acme (Acme Corp): this month, 2026-11-01 to 2026-11-30 (UTC)"
    totals = {line[:20].strip(): line[20:].strip() for line in text.splitlines()[2:10]}
    assert totals == {
        "Cost": "$0.003975",
        "Calls": "6",
        "Input tokens": "3,750",
        "Output tokens": "990",
        "Cache hit rate": "16.7%",
        "Errors": "1",
        "Unpriced calls": "1",
        "Avg cost per call": "$0.0006625",
    }


def test_the_table_breaks_spend_down_with_shares(usage):
    found = sections(report("--tenant", "acme"))  # the month by default
    days = found["By day"]
    assert days[0] == ["Day", "Cost", "Share", "Calls"]
    assert days[1] == ["2026-11-01", "$0", "0.0%", "0"]
    # Days still to come are not listed.
    assert days[-2:] == [
        ["2026-11-20", "$0.001875", "47.2%", "2"],
        ["2026-11-21", "$0.0021", "52.8%", "4"],
    ]
    assert found["By provider"] == [
        ["Provider", "Cost", "Share", "Calls", "Input", "tokens", "Output", "tokens", "Errors"],
        ["anthropic", "$0.00345", "86.8%", "3", "1,550", "380", "1"],
        ["openai", "$0.000525", "13.2%", "2", "1,800", "510", "0"],
        ["fireworks", "$0", "0.0%", "1", "400", "100", "0"],
    ]
    assert [r[:4] for r in found["By model"][1:]] == [
        ["claude-haiku-4-5", "$0.00345", "86.8%", "3"],
        ["gpt-4o-mini", "$0.000525", "13.2%", "2"],
        ["llama-3.3-70b-support-ft", "$0", "0.0%", "1"],
    ]
    assert [r[:4] for r in found["By operation"][1:]] == [
        ["summarize", "$0.002", "50.3%", "1"],
        ["chat", "$0.001975", "49.7%", "4"],
        ["classify", "$0", "0.0%", "1"],
    ]
    assert [r[:4] for r in found["Top 10 end users"][1:]] == [
        ["user-1", "$0.00335", "84.3%", "2"],
        ["user-2", "$0.000625", "15.7%", "2"],
        ["user-3", "$0", "0.0%", "2"],
    ]


def test_the_table_lines_amounts_up_on_the_decimal_point(usage):
    assert align_money(["$12.5", "$0.00135", "$0"]) == ["$12.5    ", " $0.00135", " $0      "]
    text = report("--tenant", "acme")
    lines = text.split("By provider\n")[1].split("\n\n")[0].splitlines()
    anthropic, openai, fireworks = lines[1:]
    assert anthropic.index(".") == openai.index(".") == fireworks.index("$0") + 2
    # The widest amount ends under the end of its heading.
    assert openai.index("$0.000525") + len("$0.000525") == lines[0].index("Cost") + len("Cost")


def test_csv_has_one_section_per_breakdown(usage):
    rows = list(csv.DictReader(io.StringIO(report("--tenant", "acme", "--format", "csv"))))
    assert {r["tenant"] for r in rows} == {"acme"}
    assert {r["start"] for r in rows} == {"2026-11-01T00:00:00Z"}
    by_section: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_section.setdefault(r["section"], []).append(r)
    assert list(by_section) == ["total", "day", "provider", "model", "operation", "end_user"]
    (total,) = by_section["total"]
    assert {
        k: total[k]
        for k in (
            "cost_usd",
            "calls",
            "input_tokens",
            "output_tokens",
            "cache_hits",
            "cache_hit_rate",
            "errors",
            "unpriced_calls",
            "avg_cost_usd",
            "share",
        )
    } == {
        "cost_usd": "0.003975",
        "calls": "6",
        "input_tokens": "3750",
        "output_tokens": "990",
        "cache_hits": "1",
        "cache_hit_rate": "0.1667",
        "errors": "1",
        "unpriced_calls": "1",
        "avg_cost_usd": "0.0006625",
        "share": "",
    }
    assert [(r["key"], r["cost_usd"], r["share"], r["calls"]) for r in by_section["day"][-2:]] == [
        ("2026-11-20", "0.001875", "0.4717", "2"),
        ("2026-11-21", "0.0021", "0.5283", "4"),
    ]
    assert len(by_section["day"]) == 21
    providers = by_section["provider"]
    assert [(r["key"], r["cost_usd"], r["share"], r["unpriced_calls"]) for r in providers] == [
        ("anthropic", "0.00345", "0.8679", "0"),
        ("openai", "0.000525", "0.1321", "0"),
        ("fireworks", "0", "0.0000", "1"),
    ]
    assert [(r["key"], r["cost_usd"], r["share"]) for r in by_section["end_user"]] == [
        ("user-1", "0.00335", "0.8428"),
        ("user-2", "0.000625", "0.1572"),
        ("user-3", "0", "0.0000"),
    ]


def test_json_is_one_document_with_the_metrics_api_shapes(usage):
    document = json.loads(report("--tenant", "acme", "--format", "json"))
    assert document["generated_at"] == "2026-11-21T12:00:00Z"
    (acme,) = document["tenants"]
    assert {k: acme[k] for k in ("tenant", "name", "start", "end", "period", "time_zone")} == {
        "tenant": "acme",
        "name": "Acme Corp",
        "start": "2026-11-01T00:00:00Z",
        "end": "2026-12-01T00:00:00Z",
        "period": "month",
        "time_zone": "UTC",
    }
    assert acme["total"] == {
        "cost_usd": "0.003975",
        "calls": 6,
        "input_tokens": 3750,
        "output_tokens": 990,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cache_hits": 1,
        "cache_hit_rate": 0.1667,
        "prompt_cache_rate": 0.0,
        "errors": 1,
        "error_rate": 0.1667,
        "unpriced_calls": 1,
        "avg_cost_usd": "0.0006625",
        "avg_latency_ms": 800,
    }
    assert acme["by_day"][-1] == {
        "day": "2026-11-21",
        "cost_usd": "0.0021",
        "share": 0.5283,
        "calls": 4,
    }
    assert [(r["key"], r["cost_usd"], r["share"]) for r in acme["by_provider"]] == [
        ("anthropic", "0.00345", 0.8679),
        ("openai", "0.000525", 0.1321),
        ("fireworks", "0", 0.0),
    ]
    assert [(r["key"], r["cost_usd"], r["calls"]) for r in acme["by_operation"]] == [
        ("summarize", "0.002", 1),
        ("chat", "0.001975", 4),
        ("classify", "0", 1),
    ]
    assert [r["key"] for r in acme["by_model"]] == [
        "claude-haiku-4-5",
        "gpt-4o-mini",
        "llama-3.3-70b-support-ft",
    ]
    assert [(r["key"], r["cost_usd"], r["share"]) for r in acme["top_end_users"]] == [
        ("user-1", "0.00335", 0.8428),
        ("user-2", "0.000625", 0.1572),
        ("user-3", "0", 0.0),
    ]


def test_it_hides_other_tenants_spend(usage):
    for fmt in ("table", "csv", "json"):
        text = report("--tenant", "acme", "--format", fmt)
        for secret in ("globex", "gpt-4o\n", "gpt-4o ", "gpt-4o,", '"gpt-4o"', "secret-project"):
            assert secret not in text, (fmt, secret)
        assert "2.5" not in text


def test_without_tenant_every_tenant_gets_its_own_report(usage):
    tenants = json_report()
    assert [(t["tenant"], t["total"]["cost_usd"], t["total"]["calls"]) for t in tenants] == [
        ("acme", "0.003975", 6),
        ("globex", "2.5", 1),
    ]
    text = report()
    assert "acme (Acme Corp): this month" in text
    assert "globex (Globex (outsider)): this month" in text


def test_a_custom_range_includes_the_end_date_whole(usage):
    (acme,) = json_report("--tenant", "acme", "--start", "2026-10-31", "--end", "2026-11-20")
    assert (acme["period"], acme["start"], acme["end"]) == (
        "custom",
        "2026-10-31T00:00:00Z",
        "2026-11-21T00:00:00Z",
    )
    assert (acme["total"]["cost_usd"], acme["total"]["calls"]) == ("0.002875", 3)
    assert report("--tenant", "acme", "--start", "2026-10-31", "--end", "2026-11-20").startswith(
        "acme (Acme Corp): 2026-10-31 to 2026-11-20 (UTC)\n"
    )


def test_the_day_and_week_periods(usage):
    (day,) = json_report("--tenant", "acme", "--period", "day")
    assert (day["total"]["cost_usd"], day["total"]["calls"]) == ("0.0021", 4)
    (week,) = json_report("--tenant", "acme", "--period", "week")
    assert (week["start"], week["end"]) == ("2026-11-16T00:00:00Z", "2026-11-23T00:00:00Z")
    assert (week["total"]["cost_usd"], week["total"]["calls"]) == ("0.003975", 6)
    assert [d["day"] for d in week["by_day"]] == [f"2026-11-{d}" for d in range(16, 22)]


def test_a_tenant_without_usage_gets_zeros(acme):
    text = report("--tenant", "acme")
    assert "  Cost               $0\n" in text
    assert "  Cache hit rate     -\n" in text
    assert "By provider\n  (no usage)" in text


def test_a_tenant_in_another_time_zone_gets_its_own_calendar(usage):
    paris = tenant_create(slug="paris", timezone_name="Europe/Paris")
    # 23:30 UTC on the 20th is already the 21st in Paris.
    late = parse_batch([event(occurred_at="2026-11-20T23:30:00Z")])
    usage_record_batch(tenant=paris, events=late)
    (day,) = json_report("--tenant", "paris", "--period", "day")
    assert (day["start"], day["time_zone"]) == ("2026-11-20T23:00:00Z", "Europe/Paris")
    assert (day["total"]["cost_usd"], day["by_day"]) == (
        "0.00135",
        [{"day": "2026-11-21", "cost_usd": "0.00135", "share": 1.0, "calls": 1}],
    )


@pytest.mark.parametrize(
    ("args", "options", "message"),
    [
        ((), {"tenant": "nope"}, "No tenant 'nope'."),
        (
            (),
            {"period": "year"},
            "Unknown period 'year'; use day, week or month (or --start and --end).",
        ),
        (("--period", "year"), {}, "invalid choice: 'year'"),
        ((), {"format": "xml"}, "Unknown format 'xml'; use table, csv or json."),
        (("--end", "2026-11-20"), {}, "Give --start with --end."),
        (
            ("--period", "day", "--start", "2026-11-01"),
            {},
            "Give either --period or --start/--end, not both.",
        ),
        (
            ("--start", "last tuesday"),
            {},
            "--start must be a date (2026-11-01) or an ISO 8601 date-time.",
        ),
        (("--start", "2026-11-20", "--end", "2026-11-01"), {}, "--end must be after start."),
    ],
)
def test_bad_input_is_a_command_error_that_says_what_to_do(acme, args, options, message):
    with pytest.raises(CommandError) as excinfo:
        call_command("cost_report", *args, stdout=io.StringIO(), stderr=io.StringIO(), **options)
    assert message in str(excinfo.value)
