from __future__ import annotations

import io
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db.models import Count, Q, Sum

from costmon.core import tenancy
from costmon.core.models import Tenant
from tests.helpers import event
from usage.demo import as_payload, batches, demo_events
from usage.ingest import EventIn, parse_batch
from usage.management.commands.seed_demo import PRICE_FILE
from usage.models import CostSource, Dimension, HourlyRollup, ModelPrice, UsageEvent
from usage.prices import read_price_file
from usage.services import usage_record_batch

# The test bodies read across tenants; the command itself runs with no context (see seed).
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("unscoped")]
NOW = "2026-11-21T12:00:00Z"
END = datetime(2026, 11, 21, 12, tzinfo=UTC)
SUMS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_nanos",
)


@pytest.fixture(autouse=True)
def _frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


def seed(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    with tenancy.no_tenant():  # as from a shell: no tenant context
        call_command("seed_demo", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def event_sums(tenant: Tenant) -> dict[str, Any]:
    return UsageEvent.objects.for_tenant(tenant).aggregate(
        calls=Count("pk"),
        errors=Count("pk", filter=Q(is_error=True)),
        cache_hits=Count("pk", filter=Q(cache_hit=True)),
        unpriced_calls=Count("pk", filter=Q(cost_source=CostSource.UNPRICED)),
        latency_ms_sum=Sum("latency_ms"),
        latency_count=Count("latency_ms"),
        **{name: Sum(name) for name in SUMS},
    )


def rollup_sums(tenant: Tenant) -> dict[str, Any]:
    names = (
        "calls",
        "errors",
        "cache_hits",
        "unpriced_calls",
        "latency_ms_sum",
        "latency_count",
        *SUMS,
    )
    return HourlyRollup.objects.for_tenant(tenant).aggregate(**{name: Sum(name) for name in names})


def demo() -> Tenant:
    return Tenant.objects.get(slug="demo")


# --- the command ------------------------------------------------------------------------------


def test_a_small_run_records_exactly_the_events_asked_for(db):
    out, err = seed("--events", "500", "--days", "3")
    tenant = demo()
    sums = event_sums(tenant)
    assert sums["calls"] == 500
    assert rollup_sums(tenant) == sums
    assert sums["cost_nanos"] > 0
    assert sums["unpriced_calls"] >= 1
    assert sums["cache_hits"] >= 1
    assert sums["cached_input_tokens"] > 0
    assert sums["latency_count"] == 500
    first, last = (
        UsageEvent.objects.for_tenant(tenant).order_by(f).values_list("occurred_at", flat=True)[0]
        for f in ("occurred_at", "-occurred_at")
    )
    assert END - timedelta(days=3) <= first and last < END
    # The shipped catalog was loaded because the global catalog was empty.
    assert ModelPrice.objects.unscoped().filter(tenant=None, model="claude-sonnet-4-5").exists()
    shipped = len(read_price_file(str(PRICE_FILE)).rows)
    assert f"The price catalog was empty: loaded {shipped} prices from prices.json." in out
    assert "Created tenant demo." in out
    assert "demo: 500 events recorded (0 were already there)" in out
    assert "demo: 500/500 events (" in err
    assert "events/s" in err


def test_a_second_run_keeps_the_tenant_as_it_is(db):
    seed("--events", "500", "--days", "3")
    before = event_sums(demo())
    out, _ = seed("--events", "500", "--days", "3")
    assert "demo: already has 500 events, kept (--reset starts it over)." in out
    assert "loaded" not in out and "Created" not in out
    assert event_sums(demo()) == before
    assert rollup_sums(demo()) == before


def test_a_run_on_another_day_adds_no_shifted_copy(db):
    """Events are keyed by (id, occurred_at) and the window ends at the run's time: a second
    run on another day must not add the same stream again at other times."""
    seed("--events", "300", "--days", "2")
    with time_machine.travel("2026-11-24T08:00:00Z", tick=False):
        out, _ = seed("--events", "300", "--days", "2")
    assert "demo: already has 300 events, kept" in out
    assert UsageEvent.objects.for_tenant(demo()).count() == 300


def test_reset_starts_the_tenant_over(db):
    seed("--events", "500", "--days", "3")
    out, _ = seed("--events", "200", "--days", "1", "--seed", "7", "--reset")
    assert "demo: deleted 500 events and" in out
    tenant = demo()
    sums = event_sums(tenant)
    assert sums["calls"] == 200
    assert rollup_sums(tenant) == sums
    events = UsageEvent.objects.for_tenant(tenant)
    assert not events.exclude(event_id__startswith="demo-7-").exists()
    # The dictionary of names stays (processes keep its ids); the old names have no usage.
    users = Dimension.objects.for_tenant(tenant).filter(kind=Dimension.Kind.END_USER)
    assert set(users.values_list("value", flat=True)) >= set(
        events.values_list("end_user__value", flat=True)
    )
    assert (
        not HourlyRollup.objects.for_tenant(tenant)
        .exclude(end_user__value__in=events.values("end_user__value"))
        .exists()
    )


def test_it_leaves_other_tenants_untouched(outsider, prices):
    same_id = parse_batch([event(event_id="demo-42-0-0000000")])
    usage_record_batch(tenant=outsider, events=same_id)

    def state() -> tuple[Any, ...]:
        dimensions = Dimension.objects.for_tenant(outsider).count()
        return event_sums(outsider), rollup_sums(outsider), dimensions

    before = state()
    seed("--events", "500", "--days", "3")
    seed("--events", "500", "--days", "3", "--reset")
    assert state() == before
    assert event_sums(outsider)["calls"] == 1
    # The demo tenant's events with the same id are its own.
    assert UsageEvent.objects.for_tenant(demo()).filter(event_id="demo-42-0-0000000").exists()


def test_the_catalog_is_not_reloaded_when_it_has_prices(prices):
    out, _ = seed("--events", "50", "--days", "1")
    assert "loaded" not in out
    assert ModelPrice.objects.unscoped().count() == len(prices)


def test_several_tenants_get_their_own_data(db):
    out, _ = seed("--events", "300", "--days", "2", "--tenants", "3")
    tenants = list(Tenant.objects.filter(slug__startswith="demo").order_by("slug"))
    assert [(t.slug, t.name) for t in tenants] == [
        ("demo", "Demo"),
        ("demo-2", "Demo 2"),
        ("demo-3", "Demo 3"),
    ]
    costs = set()
    for tenant in tenants:
        sums = event_sums(tenant)
        assert sums["calls"] == 300
        assert rollup_sums(tenant) == sums
        costs.add(sums["cost_nanos"])
        assert f"{tenant.slug}: 300 events recorded" in out
    assert len(costs) == 3


@pytest.mark.parametrize("args", [("--events", "0"), ("--days", "0"), ("--tenants", "-1")])
def test_bad_sizes_are_refused(db, args):
    with pytest.raises(CommandError, match="must be at least 1"):
        seed(*args)
    assert not Tenant.objects.filter(slug="demo").exists()


# --- the generator ----------------------------------------------------------------------------


def generate(count: int = 20_000, **kwargs: Any) -> list[EventIn]:
    return list(demo_events(count=count, days=kwargs.pop("days", 30), end=END, **kwargs))


@pytest.fixture(scope="module")
def month() -> list[EventIn]:
    return generate()


def test_the_generator_is_deterministic(month):
    assert generate(2000, seed=42) == generate(2000, seed=42)
    assert generate(2000, seed=42) != generate(2000, seed=43)
    assert generate(2000, stream=0) != generate(2000, stream=1)
    assert [e.event_id for e in month[:2]] == ["demo-42-0-0000000", "demo-42-0-0000001"]
    assert len({e.event_id for e in month}) == 20_000


def test_generated_events_are_in_range_in_order_and_valid(month):
    times = [e.occurred_at for e in month]
    assert times == sorted(times)
    assert END - timedelta(days=30) <= times[0] and times[-1] < END
    # They survive the ingest validation unchanged.
    payload = [as_payload(e) for e in month[:2000]]
    assert parse_batch(payload, now=END) == month[:2000]


def test_generated_usage_looks_like_a_real_product(month):
    n = len(month)
    assert 0.05 <= sum(e.cache_hit for e in month) / n <= 0.15
    assert 0.01 <= sum(e.is_error for e in month) / n <= 0.02
    assert {e.operation for e in month} == {
        "chat",
        "summarize",
        "classify",
        "embed",
        "rag-answer",
        "agent-step",
    }
    assert {e.model for e in month} >= {
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1-mini",
        "text-embedding-3-small",
        "gemini-2.5-flash",
        "mistral-small",
    }
    assert 0 < sum(e.model == "llama-3.3-70b-support-ft" for e in month) <= n // 100
    prompt_cached = {e.provider for e in month if e.cached_input_tokens}
    assert prompt_cached == {"anthropic", "openai"}
    assert all(e.cached_input_tokens + e.cache_write_tokens <= e.input_tokens for e in month)
    assert {e.tags["env"] for e in month if e.tags} == {"prod", "staging"}
    assert sum(1 for e in month if e.session_id) > n // 3

    # About 300 end users, a few of them heavy.
    users = Counter(e.end_user for e in month)
    assert 280 <= len(users) <= 301
    top5 = sum(c for _, c in users.most_common(5))
    assert top5 > n * 0.3
    assert users.most_common()[-1][1] < 10

    # Busier on weekdays and in working hours; one spike day.
    by_day = Counter(e.occurred_at.date() for e in month)
    weekday = [c for d, c in by_day.items() if d.weekday() < 5]
    weekend = [c for d, c in by_day.items() if d.weekday() >= 5]
    assert sum(weekday) / len(weekday) > 2 * sum(weekend) / len(weekend)
    by_hour = Counter(e.occurred_at.hour for e in month)
    assert by_hour[10] > 5 * by_hour[3]
    (_, spike_calls), (_, second) = by_day.most_common(2)
    assert spike_calls > 2 * second


def test_the_generator_works_from_the_tenants_time_zone(month):
    from zoneinfo import ZoneInfo

    tokyo = ZoneInfo("Asia/Tokyo")
    events = generate(tz=tokyo)
    by_hour = Counter(e.occurred_at.astimezone(tokyo).hour for e in events)
    assert by_hour[10] > 5 * by_hour[3]


def test_batches_split_a_stream():
    stream: Any = iter(range(2500))
    assert [len(b) for b in batches(stream, 1000)] == [1000, 1000, 500]
    assert list(batches([], 1000)) == []
