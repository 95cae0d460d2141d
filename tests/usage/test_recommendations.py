"""The overview's recommendations: exact monthly savings for each kind from the last 30 days,
the optional prompt_hash on events, the panel on the page, and an outsider that changes nothing.

Prices (tests/conftest.py): claude-haiku-4-5 $1/$5, gpt-4o $2.50/$10 (cached $1.25),
gpt-4o-mini $0.15/$0.60 (cached $0.075). The default test event (450 in, 180 out on haiku)
costs $0.00135 = 1,350,000 nano-dollars.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
import time_machine

from costmon.core.models import Tenant
from tests.helpers import event, post_usage
from usage import catalog
from usage.models import ModelPrice, UsageEvent
from usage.recommendations import (
    KIND_CACHE_RATE,
    KIND_CHEAPER_MODEL,
    KIND_REPEATED_PROMPTS,
    KIND_TOP_OPERATIONS,
    Recommendation,
    recommendations,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "unscoped")]

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
HAIKU_CALL = 1_350_000


@pytest.fixture(autouse=True)
def _frozen_clock() -> Any:
    with time_machine.travel(NOW, tick=False):
        yield


def by_kind(recs: list[Recommendation]) -> dict[str, list[Recommendation]]:
    out: dict[str, list[Recommendation]] = {}
    for r in recs:
        out.setdefault(r.kind, []).append(r)
    return out


def haiku_calls(n: int, *, hits: int = 0, prefix: str = "h", **extra: Any) -> list[dict[str, Any]]:
    return [
        event(
            event_id=f"{prefix}{i}", occurred_at="2026-11-20T10:00:00Z", cache_hit=i < hits, **extra
        )
        for i in range(n)
    ]


def test_a_low_cache_hit_rate_estimates_the_saving_of_reaching_70_percent(ingest_client, acme):
    # 100 calls, 20 hits (free): 80 paid calls cost $0.108; (0.70 - 0.20) / 0.80 of that.
    assert post_usage(ingest_client, haiku_calls(100, hits=20)).status_code == 201
    recs = by_kind(recommendations(tenant=acme, now=NOW))
    (rec,) = recs[KIND_CACHE_RATE]
    assert rec.saving_nanos == 67_500_000
    assert "20 of 100 calls (20.0%)" in rec.text


def test_the_cache_rate_needs_at_least_100_calls(ingest_client, acme):
    assert post_usage(ingest_client, haiku_calls(99)).status_code == 201
    assert KIND_CACHE_RATE not in by_kind(recommendations(tenant=acme, now=NOW))


def test_a_cache_rate_at_the_target_gets_no_recommendation(ingest_client, acme):
    assert post_usage(ingest_client, haiku_calls(100, hits=70)).status_code == 201
    assert KIND_CACHE_RATE not in by_kind(recommendations(tenant=acme, now=NOW))


def gpt4o_usage(ingest_client: Any) -> None:
    batch = [
        # summarize: 10 calls of 100k input (20k cached) and 10k output on gpt-4o, $0.325 each
        event(
            event_id=f"s{i}",
            provider="openai",
            model="gpt-4o",
            operation="summarize",
            input_tokens=100_000,
            cached_input_tokens=20_000,
            output_tokens=10_000,
        )
        for i in range(10)
    ]
    # tiny: one gpt-4o call of $0.0035, under $1 and under 20% of spend
    batch.append(
        event(
            event_id="tiny",
            provider="openai",
            model="gpt-4o",
            operation="tiny",
            input_tokens=1000,
            output_tokens=100,
        )
    )
    assert post_usage(ingest_client, batch).status_code == 201


def test_an_operation_on_gpt_4o_is_offered_gpt_4o_mini_with_the_exact_saving(ingest_client, acme):
    gpt4o_usage(ingest_client)
    recs = by_kind(recommendations(tenant=acme, now=NOW))
    (rec,) = recs[KIND_CHEAPER_MODEL]
    # $3.25 on gpt-4o; the same tokens on gpt-4o-mini: 10 x $0.0195 = $0.195.
    assert rec.saving_nanos == 3_250_000_000 - 195_000_000
    assert rec.title == "A cheaper model for summarize"
    assert "on gpt-4o-mini (openai) would cost $0.195" in rec.text
    mini = ModelPrice.objects.unscoped().get(model="gpt-4o-mini")
    assert f"list price of $0.15 in / $0.6 out per 1M tokens (catalog row #{mini.pk})" in rec.text
    assert "embedding" not in rec.text


def test_retired_models_snapshots_and_other_modes_are_never_suggested(ingest_client, acme):
    def add(model: str, **fields: object) -> None:
        ModelPrice.objects.create(
            provider="openai",
            model=model,
            effective_from=datetime(2024, 1, 1, tzinfo=UTC),
            input_per_mtok=Decimal("0.01"),
            output_per_mtok=Decimal("0.01"),
            **fields,
        )

    add("gpt-3.5-turbo", deprecation_date=date(2026, 9, 1))  # retired before NOW
    add("gpt-4o-mini-2024-07-18")  # a snapshot of gpt-4o-mini, which the list also has
    add("gpt-image-cheap", mode="image_generation")
    add("text-embedding-cheap", mode="embedding")
    catalog.clear_local()
    gpt4o_usage(ingest_client)
    (rec,) = by_kind(recommendations(tenant=acme, now=NOW))[KIND_CHEAPER_MODEL]
    assert "on gpt-4o-mini (openai)" in rec.text


def test_a_small_operation_qualifies_by_its_share_of_spend(ingest_client, acme):
    batch = [
        event(
            event_id="c1",
            provider="openai",
            model="gpt-4o",
            operation="classify",
            input_tokens=1000,
            output_tokens=100,
        )
    ]
    assert post_usage(ingest_client, batch).status_code == 201
    (rec,) = by_kind(recommendations(tenant=acme, now=NOW))[KIND_CHEAPER_MODEL]
    # $0.0035 on gpt-4o against $0.00021 on gpt-4o-mini
    assert rec.saving_nanos == 3_500_000 - 210_000


def test_no_cheaper_model_when_the_provider_has_none(ingest_client, acme):
    # haiku is the only anthropic model; gpt-4o-mini has only an embedding model below it.
    mini = event(event_id="m1", provider="openai", model="gpt-4o-mini", operation="chat")
    batch = [*haiku_calls(3), mini]
    assert post_usage(ingest_client, batch).status_code == 201
    assert KIND_CHEAPER_MODEL not in by_kind(recommendations(tenant=acme, now=NOW))


def test_the_top_operations_show_their_share_of_spend(ingest_client, acme):
    gpt4o_usage(ingest_client)
    (rec,) = by_kind(recommendations(tenant=acme, now=NOW))[KIND_TOP_OPERATIONS]
    assert rec.saving_nanos is None
    assert "summarize $3.25 (99.9%), tiny $0.0035 (0.1%)" in rec.text
    assert "no saving is estimated" in rec.text


def test_repeated_prompt_hashes_estimate_the_cost_of_the_repeats(
    ingest_client, outsider_client, acme, store
):
    batch = [
        *haiku_calls(3, prefix="a", prompt_hash="aaa"),  # 2 repeats
        *haiku_calls(2, prefix="b", prompt_hash="bbb"),  # 1 repeat
        *haiku_calls(1, prefix="c", prompt_hash="ccc"),  # sent once
        *haiku_calls(2, prefix="n"),  # no hash
        # older than 30 days: not counted
        event(event_id="old", occurred_at="2026-10-20T10:00:00Z", prompt_hash="ccc"),
    ]
    assert post_usage(ingest_client, batch).status_code == 201
    outsider = haiku_calls(5, prefix="o", prompt_hash="ccc")
    assert post_usage(outsider_client, outsider).status_code == 201
    (rec,) = by_kind(recommendations(tenant=acme, now=NOW))[KIND_REPEATED_PROMPTS]
    assert rec.saving_nanos == 3 * HAIKU_CALL
    assert "2 distinct prompts were sent more than once" in rec.text
    assert "(3 repeats)" in rec.text


def test_the_repeats_saving_is_integer_arithmetic(ingest_client, acme, store):
    # Three calls costing 1 nano-dollar in all: 1 x 2 // 3 = 0, never a fraction.
    batch = [
        event(event_id=f"x{i}", prompt_hash="h", cost_usd=c)
        for i, c in enumerate(["0.000000001", "0", "0"])
    ]
    assert post_usage(ingest_client, batch).status_code == 201
    (rec,) = by_kind(recommendations(tenant=acme, now=NOW))[KIND_REPEATED_PROMPTS]
    assert rec.saving_nanos == 0


def test_recommendations_are_sorted_by_saving(ingest_client, acme):
    gpt4o_usage(ingest_client)
    assert post_usage(ingest_client, haiku_calls(2, prompt_hash="same")).status_code == 201
    kinds = [r.kind for r in recommendations(tenant=acme, now=NOW)]
    assert kinds == [KIND_CHEAPER_MODEL, KIND_REPEATED_PROMPTS, KIND_TOP_OPERATIONS]


def test_an_outsiders_data_never_affects_acmes_recommendations(
    ingest_client, outsider_client, acme, outsider: Tenant, store
):
    assert post_usage(ingest_client, haiku_calls(2)).status_code == 201
    before = recommendations(tenant=acme, now=NOW)
    # The outsider: 200 uncached gpt-4o calls, all the same prompt.
    for chunk in range(2):
        batch = [
            event(
                event_id=f"o{chunk}-{i}",
                provider="openai",
                model="gpt-4o",
                operation="chat",
                input_tokens=100_000,
                output_tokens=10_000,
                prompt_hash="same",
            )
            for i in range(100)
        ]
        assert post_usage(outsider_client, batch).status_code == 201
    after = recommendations(tenant=acme, now=NOW)
    assert after == before
    assert [r.kind for r in after] == [KIND_TOP_OPERATIONS]
    assert "chat $0.0027 (100.0%)" in after[0].text
    assert {r.kind for r in recommendations(tenant=outsider, now=NOW)} == {
        KIND_CACHE_RATE,
        KIND_CHEAPER_MODEL,
        KIND_REPEATED_PROMPTS,
        KIND_TOP_OPERATIONS,
    }


# --- prompt_hash on ingest ------------------------------------------------------------------


def test_ingest_stores_an_optional_prompt_hash(ingest_client, read_client, acme):
    digest = "f" * 64
    batch = [event(event_id="with", prompt_hash=digest), event(event_id="without")]
    assert post_usage(ingest_client, batch).status_code == 201
    stored = dict(UsageEvent.objects.for_tenant(acme).values_list("event_id", "prompt_hash"))
    assert stored == {"with": digest, "without": None}


@pytest.mark.parametrize(
    ("value", "message"), [(123, "Must be a string."), ("a" * 65, "At most 64 characters.")]
)
def test_a_bad_prompt_hash_gets_a_400_naming_the_field(ingest_client, acme, value, message):
    response = post_usage(ingest_client, [event(event_id="bad", prompt_hash=value)])
    assert response.status_code == 400
    assert response.json()["errors"] == [{"index": 0, "field": "prompt_hash", "message": message}]
    assert not UsageEvent.objects.for_tenant(acme).exists()


# --- the panel on the overview ----------------------------------------------------------------


@pytest.fixture
def member(client: Any, viewer: Any) -> Any:
    client.force_login(viewer)
    return client


def overview(client: Any) -> str:
    response = client.get("/t/acme/")
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


def test_the_overview_shows_the_recommendations_panel(member, ingest_client):
    gpt4o_usage(ingest_client)
    html = overview(member)
    assert '<h2 class="section">Recommendations</h2>' in html
    assert "A cheaper model for summarize" in html
    assert "Estimated saving: $3.06 / month" in html
    assert "Most expensive operations" in html
    assert html.index("A cheaper model for summarize") < html.index("Most expensive operations")


def test_the_panel_says_when_there_is_nothing_to_recommend(member, ingest_client):
    # Only free cache hits: no spend, no calls enough for the cache rate, no hashes.
    assert post_usage(ingest_client, haiku_calls(2, hits=2)).status_code == 201
    html = overview(member)
    assert "Nothing to recommend for the last 30 days." in html
