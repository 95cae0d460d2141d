"""The bundled catalog prices the providers' own examples exactly, through ingest."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from tests.helpers import event, post_usage

pytestmark = pytest.mark.django_db


@pytest.fixture
def bundled(db: None) -> None:
    call_command("load_prices", stdout=io.StringIO())


CASES = [
    # 8,000 x $1.25 + 2,000 cached x $0.125 + 1,000 x $10 per 1M
    (
        "gpt-5",
        {
            "provider": "openai",
            "model": "gpt-5",
            "input_tokens": 10_000,
            "cached_input_tokens": 2000,
            "output_tokens": 1000,
        },
        "0.02025",
    ),
    # 1,000 x $1.10 + 3,000 output (2,500 of them reasoning) x $4.40
    (
        "o4-mini",
        {
            "provider": "openai",
            "model": "o4-mini",
            "input_tokens": 1000,
            "output_tokens": 3000,
            "reasoning_tokens": 2500,
        },
        "0.0143",
    ),
    # 1,000 x $3 + 3,000 reads x $0.30 + 1,000 five-minute writes x $3.75 + 500 x $15
    (
        "claude-sonnet-4-5",
        {
            "provider": "anthropic",
            "model": "claude-sonnet-4-5",
            "input_tokens": 5000,
            "cached_input_tokens": 3000,
            "cache_write_tokens": 1000,
            "output_tokens": 500,
        },
        "0.01515",
    ),
    # above 200k input tokens: 250,000 x $2.50 + 1,000 x $15
    (
        "gemini-2.5-pro",
        {
            "provider": "google",
            "model": "gemini-2.5-pro",
            "input_tokens": 250_000,
            "output_tokens": 1000,
        },
        "0.64",
    ),
    # its own price, not gpt-4o's
    (
        "gpt-4o-2024-05-13",
        {
            "provider": "openai",
            "model": "gpt-4o-2024-05-13",
            "input_tokens": 1000,
            "output_tokens": 1000,
        },
        "0.02",
    ),
    (
        "gpt-4o-mini batch",
        {
            "provider": "openai",
            "model": "gpt-4o-mini",
            "input_tokens": 1000,
            "output_tokens": 1000,
            "service_tier": "batch",
        },
        "0.000375",
    ),
    (
        "deepseek-chat",
        {
            "provider": "deepseek",
            "model": "deepseek-chat",
            "input_tokens": 1000,
            "output_tokens": 1000,
        },
        "0.0007",
    ),
    # the README's first example: a dated Anthropic name, 450 in and 180 out
    (
        "claude-haiku-4-5-20251001",
        {"provider": "anthropic", "model": "claude-haiku-4-5-20251001"},
        "0.00135",
    ),
    # the design notes' figures: gpt-4o-mini and text-embedding-3-large
    (
        "gpt-4o-mini",
        {"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1500, "output_tokens": 500},
        "0.000525",
    ),
    (
        "text-embedding-3-large",
        {
            "provider": "openai",
            "model": "text-embedding-3-large",
            "input_tokens": 1000,
            "output_tokens": 0,
        },
        "0.00013",
    ),
    # the same model under a reseller's deployment names; Bedrock's regional (us.) profiles
    # cost 10% more than the global one: $3.30 / $16.50
    (
        "bedrock",
        {
            "provider": "bedrock",
            "model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "input_tokens": 1000,
            "output_tokens": 1000,
        },
        "0.0198",
    ),
    (
        "vertex",
        {
            "provider": "vertex_ai",
            "model": "claude-sonnet-4-5@20250929",
            "input_tokens": 1000,
            "output_tokens": 1000,
        },
        "0.018",
    ),
    (
        "mistral-large-latest",
        {
            "provider": "mistral",
            "model": "mistral-large-latest",
            "input_tokens": 1000,
            "output_tokens": 1000,
        },
        "0.002",
    ),
]


def test_the_bundled_catalog_prices_the_providers_examples_exactly(bundled, ingest_client):
    # One batch (loading the catalog takes seconds); each case is named in the comparison.
    response = post_usage(
        ingest_client, [event(event_id=name, **fields) for name, fields, _ in CASES]
    )
    assert response.status_code == 201, response.json()
    got = [(e["event_id"], e["cost_source"], e["cost_usd"]) for e in response.json()["events"]]
    assert got == [(name, "computed", expected) for name, _, expected in CASES]


def test_newer_names_come_in_priced(bundled, ingest_client, read_client):
    names = [
        ("anthropic", "claude-sonnet-4-6"),
        ("google", "gemini-3.5-flash"),
        ("xai", "grok-4.5"),
        ("deepseek", "deepseek-v4-pro"),
    ]
    response = post_usage(
        ingest_client,
        [event(event_id=m, provider=p, model=m) for p, m in names],
    )
    assert {e["cost_source"] for e in response.json()["events"]} == {"computed"}
    explained = read_client.get("/api/v1/usage/grok-4.5/").json()["cost"]
    assert (explained["resolution"]["rule"], explained["matches_stored_cost"]) == ("exact", True)
