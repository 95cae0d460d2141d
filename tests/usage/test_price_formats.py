"""The public price-list readers: LiteLLM's list and models.dev's api.json into catalog rows.

Pure functions over JSON, plus `read_price_source` against files and a real local HTTP server.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from usage.models import ModelPrice, PriceSync
from usage.price_formats import (
    PriceSourceError,
    apply_overrides,
    parse_litellm,
    parse_models_dev,
    read_price_source,
)


def rows_by_key(result: Any) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["provider"], r["model"], r.get("service_tier", "standard")): r for r in result.rows}


def chat(provider: str, **prices: Any) -> dict[str, Any]:
    return {"litellm_provider": provider, "mode": "chat", **prices}


# --- LiteLLM: numbers -------------------------------------------------------------------------


def test_per_token_floats_become_exact_per_million_decimals_without_exponents():
    result = parse_litellm(
        {
            "gpt-5": chat(
                "openai",
                input_cost_per_token=1.25e-06,
                output_cost_per_token=1e-05,
                cache_read_input_token_cost=1.25e-07,
            ),
            "gpt-5-nano": chat("openai", input_cost_per_token=5e-08, output_cost_per_token=4e-07),
            "o1-pro": chat("openai", input_cost_per_token=0.00015, output_cost_per_token=0.0006),
            # A float whose shortest repr carries the list's own noise: kept digit for digit.
            "odd": chat("openai", input_cost_per_token=1.0000000000000001e-07),
            "int-zero": chat("openai", input_cost_per_token=0, output_cost_per_token=0),
        }
    )
    rows = rows_by_key(result)
    assert rows["openai", "gpt-5", "standard"] == {
        "provider": "openai",
        "model": "gpt-5",
        "mode": "chat",
        "input_per_mtok": "1.25",
        "output_per_mtok": "10",
        "cached_input_per_mtok": "0.125",
    }
    assert [
        rows["openai", "gpt-5-nano", "standard"][k] for k in ("input_per_mtok", "output_per_mtok")
    ] == ["0.05", "0.4"]
    assert [
        rows["openai", "o1-pro", "standard"][k] for k in ("input_per_mtok", "output_per_mtok")
    ] == ["150", "600"]
    assert rows["openai", "odd", "standard"]["input_per_mtok"] == "0.10000000000000001"
    assert rows["openai", "int-zero", "standard"]["input_per_mtok"] == "0"


# --- LiteLLM: names -----------------------------------------------------------------------------


def test_routing_prefixes_are_stripped_and_model_ids_are_kept():
    result = parse_litellm(
        {
            "gemini/gemini-2.5-pro": chat("gemini", input_cost_per_token=1.25e-06),
            "xai/grok-4.5": chat("xai", input_cost_per_token=2e-06),
            "mistral/mistral-large-latest": chat("mistral", input_cost_per_token=5e-07),
            "deepseek/deepseek-chat": chat("deepseek", input_cost_per_token=2.8e-07),
            "azure/gpt-4o-2024-08-06": chat("azure", input_cost_per_token=2.5e-06),
            "gemini-2.5-pro": chat("vertex_ai-language-models", input_cost_per_token=1.25e-06),
            "vertex_ai/claude-sonnet-4-5@20250929": chat(
                "vertex_ai-anthropic_models", input_cost_per_token=3e-06
            ),
            "vertex_ai/deepseek-ai/deepseek-v3.2-maas": chat(
                "vertex_ai-deepseek_models", input_cost_per_token=5.6e-07
            ),
            "groq/openai/gpt-oss-120b": chat("groq", input_cost_per_token=1.5e-07),
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0": chat(
                "bedrock_converse", input_cost_per_token=3.3e-06
            ),
            "bedrock/us-east-1/anthropic.claude-instant-v1": chat(
                "bedrock", input_cost_per_token=8e-07
            ),
            "command-a-03-2025": chat("cohere_chat", input_cost_per_token=2.5e-06),
        }
    )
    assert result.source_models == {
        "azure": ["gpt-4o-2024-08-06"],
        "bedrock": ["anthropic.claude-instant-v1", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"],
        "cohere": ["command-a-03-2025"],
        "deepseek": ["deepseek-chat"],
        "google": ["gemini-2.5-pro"],
        "groq": ["openai/gpt-oss-120b"],
        "mistral": ["mistral-large-latest"],
        "vertex": [
            "claude-sonnet-4-5@20250929",
            "deepseek-ai/deepseek-v3.2-maas",
            "gemini-2.5-pro",
        ],
        "xai": ["grok-4.5"],
    }
    assert len(result.rows) == 12
    priced = result.priced()
    assert priced["bedrock"] == {
        "anthropic.claude-instant-v1",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
    }


def test_out_of_scope_providers_makers_modes_and_provisioned_throughput_are_not_read():
    result = parse_litellm(
        {
            "sample_spec": {"litellm_provider": "one of ...", "input_cost_per_token": 0.0},
            "together_ai/llama": chat("together_ai", input_cost_per_token=1e-07),
            "azure_ai/claude-opus-4-5": chat("azure_ai", input_cost_per_token=5e-06),
            "meta.llama3-70b-instruct-v1:0": chat("bedrock", input_cost_per_token=2.65e-06),
            "vertex_ai/meta/llama-4": chat("vertex_ai-llama_models", input_cost_per_token=1e-07),
            "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation"},
            "bedrock/us-east-1/1-month-commitment/anthropic.claude-v1": chat(
                "bedrock", input_cost_per_second=0.011
            ),
            "openai/container": chat("openai", code_interpreter_cost_per_session=0.03),
        }
    )
    assert result.rows == [] and result.source_models == {} and result.skipped == []
    assert sum(result.out_of_scope.values()) == 7


def test_a_region_or_data_zone_price_is_used_only_for_a_name_nothing_else_prices():
    result = parse_litellm(
        {
            "azure/gpt-4o": chat("azure", input_cost_per_token=2.5e-06),
            "azure/eu/gpt-4o": chat("azure", input_cost_per_token=2.75e-06),
            "azure/us/gpt-4o": chat("azure", input_cost_per_token=2.75e-06),
            "azure/eu/o1-eu-only": chat("azure", input_cost_per_token=1.65e-05),
            "anthropic.claude-v1": chat("bedrock", input_cost_per_token=8e-06),
            "bedrock/us-gov-east-1/anthropic.claude-v1": chat(
                "bedrock", input_cost_per_token=9e-06
            ),
        }
    )
    rows = rows_by_key(result)
    assert rows["azure", "gpt-4o", "standard"]["input_per_mtok"] == "2.5"
    assert rows["azure", "o1-eu-only", "standard"]["input_per_mtok"] == "16.5"
    assert rows["bedrock", "anthropic.claude-v1", "standard"]["input_per_mtok"] == "8"
    assert result.conflicts == []
    assert result.notes["regional or data-zone prices left out (the list price is kept)"] == 3


# --- LiteLLM: tiers, lifetimes, modalities ----------------------------------------------------


def test_batch_flex_and_priority_prices_become_rows_of_their_own_and_other_tiers_are_noted():
    result = parse_litellm(
        {
            "gpt-4o-mini": chat(
                "openai",
                input_cost_per_token=1.5e-07,
                output_cost_per_token=6e-07,
                cache_read_input_token_cost=7.5e-08,
                input_cost_per_token_batches=7.5e-08,
                output_cost_per_token_batches=3e-07,
                input_cost_per_token_flex=7.5e-08,
                output_cost_per_token_flex=3e-07,
                cache_read_input_token_cost_flex=3.75e-08,
                input_cost_per_token_priority=2.5e-07,
                output_cost_per_token_priority=1e-06,
                input_cost_per_token_ultrafast=1e-06,
                output_cost_per_token_decisions=1e-06,
            )
        }
    )
    rows = rows_by_key(result)
    assert rows["openai", "gpt-4o-mini", "batch"] == {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "service_tier": "batch",
        "mode": "chat",
        "input_per_mtok": "0.075",
        "output_per_mtok": "0.3",
    }  # no cache-read price of its own: left unset, for the loader to read as the tier's input
    assert rows["openai", "gpt-4o-mini", "flex"]["cached_input_per_mtok"] == "0.0375"
    assert rows["openai", "gpt-4o-mini", "priority"]["output_per_mtok"] == "1"
    assert "service_tier" not in rows["openai", "gpt-4o-mini", "standard"]
    assert [r.get("service_tier", "standard") for r in result.rows] == [
        "standard",
        "batch",
        "flex",
        "priority",
    ]
    assert result.notes["tier not carried: ultrafast"] == 1
    assert result.notes["tier not carried: decisions"] == 1


def test_long_context_cache_lifetimes_modalities_images_requests_and_web_search():
    result = parse_litellm(
        {
            "gemini/gemini-2.5-pro": chat(
                "gemini",
                input_cost_per_token=1.25e-06,
                output_cost_per_token=1e-05,
                cache_read_input_token_cost=1.25e-07,
                input_cost_per_token_above_200k_tokens=2.5e-06,
                output_cost_per_token_above_200k_tokens=1.5e-05,
                cache_read_input_token_cost_above_200k_tokens=2.5e-07,
                input_cost_per_token_priority=2.25e-06,
                input_cost_per_token_above_200k_tokens_priority=4.5e-06,
                input_cost_per_audio_token=1e-06,
                search_context_cost_per_query={
                    "search_context_size_low": 0.03,
                    "search_context_size_medium": 0.035,
                    "search_context_size_high": 0.04,
                },
            ),
            "claude-sonnet-4-5": chat(
                "anthropic",
                input_cost_per_token=3e-06,
                output_cost_per_token=1.5e-05,
                cache_read_input_token_cost=3e-07,
                cache_creation_input_token_cost=3.75e-06,
                cache_creation_input_token_cost_above_1hr=6e-06,
                cache_creation_input_token_cost_above_1hr_above_200k_tokens=1.2e-05,
            ),
            "gpt-image-chat": chat(
                "openai",
                input_cost_per_token=5e-06,
                input_cost_per_image_token=1e-05,
                output_cost_per_image_token=4e-05,
                output_cost_per_audio_token=8e-05,
                output_cost_per_image=0.04,
                input_cost_per_request=0.001,
            ),
            "deepseek/deepseek-chat": chat(
                "deepseek",
                input_cost_per_token=2.8e-07,
                input_cost_per_token_cache_hit=2.8e-08,
            ),
        }
    )
    rows = rows_by_key(result)
    pro = rows["google", "gemini-2.5-pro", "standard"]
    assert (pro["long_context_threshold"], pro["long_input_per_mtok"]) == (200000, "2.5")
    assert (pro["long_output_per_mtok"], pro["long_cached_input_per_mtok"]) == ("15", "0.25")
    assert (pro["input_audio_per_mtok"], pro["web_search_per_kcalls"]) == ("1", "35")
    priority = rows["google", "gemini-2.5-pro", "priority"]
    assert (priority["input_per_mtok"], priority["long_input_per_mtok"]) == ("2.25", "4.5")
    assert priority["long_context_threshold"] == 200000
    sonnet = rows["anthropic", "claude-sonnet-4-5", "standard"]
    assert (sonnet["cache_write_per_mtok"], sonnet["cache_write_1h_per_mtok"]) == ("3.75", "6")
    assert "long_context_threshold" not in sonnet  # a long 1-hour write alone has no column
    assert (
        result.notes[
            "field not carried: cache_creation_input_token_cost_above_1hr_above_<n>k_tokens"
        ]
        == 1
    )
    image = rows["openai", "gpt-image-chat", "standard"]
    assert {k: image[k] for k in image if k.endswith(("image_per_mtok", "audio_per_mtok"))} == {
        "input_image_per_mtok": "10",
        "output_image_per_mtok": "40",
        "output_audio_per_mtok": "80",
    }
    assert (image["per_output_image"], image["per_request"]) == ("0.04", "0.001")
    assert rows["deepseek", "deepseek-chat", "standard"]["cached_input_per_mtok"] == "0.028"


def test_names_priced_only_per_character_or_second_are_skipped_but_counted_as_source_names():
    result = parse_litellm(
        {
            "medlm-large": chat(
                "vertex_ai-language-models",
                input_cost_per_character=5e-06,
                output_cost_per_character=1.5e-05,
            ),
            "gemini-2.5-flash": chat("vertex_ai-language-models", input_cost_per_token=3e-07),
            "gemini-live": chat("vertex_ai-language-models", input_cost_per_second=0.002),
        }
    )
    assert [(s.key, s.reason) for s in result.skipped] == [
        ("medlm-large", "priced per character, not per token"),
        ("gemini-live", "priced per second, not per token"),
    ]
    assert result.coverage() == {"vertex": (1, 3)}


def test_keys_that_disagree_about_one_model_are_resolved_by_the_stated_rule_and_listed():
    result = parse_litellm(
        {
            # The provider's own route wins over a side route pricing it at $0.
            "mistral/codestral-latest": chat(
                "mistral", input_cost_per_token=3e-07, output_cost_per_token=9e-07
            ),
            "codestral/codestral-latest": chat(
                "codestral", input_cost_per_token=0.0, output_cost_per_token=0.0
            ),
            # Same route: a non-zero price wins over a $0 placeholder.
            "gemini/gemini-exp-1206": chat(
                "gemini", input_cost_per_token=0, output_cost_per_token=0
            ),
            "gemini-exp-1206": chat(
                "gemini", input_cost_per_token=3e-07, output_cost_per_token=2.5e-06
            ),
            # Both non-zero: the key with the route's prefix wins.
            "deepseek/deepseek-v3": chat("deepseek", input_cost_per_token=2.7e-07),
            "deepseek-v3": chat("deepseek", input_cost_per_token=2.8e-07),
            # Agreeing keys are no conflict.
            "deepseek/deepseek-chat": chat("deepseek", input_cost_per_token=2.8e-07),
            "deepseek-chat": chat("deepseek", input_cost_per_token=2.8e-07),
        }
    )
    rows = rows_by_key(result)
    assert rows["mistral", "codestral-latest", "standard"]["input_per_mtok"] == "0.3"
    assert rows["google", "gemini-exp-1206", "standard"]["output_per_mtok"] == "2.5"
    assert rows["deepseek", "deepseek-v3", "standard"]["input_per_mtok"] == "0.27"
    assert [(c.provider, c.model, c.chosen, c.rejected) for c in result.conflicts] == [
        ("deepseek", "deepseek-v3", "deepseek/deepseek-v3", ("deepseek-v3",)),
        ("google", "gemini-exp-1206", "gemini-exp-1206", ("gemini/gemini-exp-1206",)),
        (
            "mistral",
            "codestral-latest",
            "mistral/codestral-latest",
            ("codestral/codestral-latest",),
        ),
    ]
    assert result.conflicts[0].describe() == (
        "deepseek/deepseek-v3 [standard]: kept deepseek/deepseek-v3 "
        "(deepseek/deepseek-v3: input_per_mtok=0.27; deepseek-v3: input_per_mtok=0.28)"
    )


def test_alias_of_entries_become_catalog_aliases_of_priced_models():
    result = parse_litellm(
        {
            "claude-sonnet-5-5": chat("anthropic", input_cost_per_token=2e-06),
            "claude-sonnet-latest": {"alias_of": "claude-sonnet-5-5"},
            "azure/gpt-6-astra": chat("azure", input_cost_per_token=1e-05),
            "azure/gpt-astra-latest": {"alias_of": "azure/gpt-6-astra"},
            "claude-gone-latest": {"alias_of": "claude-gone"},
            "azure_ai/kimi-latest": {"alias_of": "azure_ai/kimi"},
            "azure_ai/kimi": chat("azure_ai", input_cost_per_token=1e-06),
        }
    )
    assert result.aliases == [
        {
            "provider": "anthropic",
            "alias": "claude-sonnet-latest",
            "target_provider": "anthropic",
            "target_model": "claude-sonnet-5-5",
            "reason": "LiteLLM: claude-sonnet-latest is an alias of claude-sonnet-5-5",
        },
        {
            "provider": "azure",
            "alias": "gpt-astra-latest",
            "target_provider": "azure",
            "target_model": "gpt-6-astra",
            "reason": "LiteLLM: azure/gpt-astra-latest is an alias of azure/gpt-6-astra",
        },
    ]
    assert [s.key for s in result.skipped] == ["claude-gone-latest"]


# --- models.dev -------------------------------------------------------------------------------


def models_dev_model(model_id: str, **cost: Any) -> dict[str, Any]:
    return {"id": model_id, "name": model_id, "cost": cost, "limit": {"context": 1, "output": 1}}


def test_models_dev_costs_are_per_million_already_with_long_context_tiers():
    data = {
        "google": {
            "id": "google",
            "models": {
                "gemini-2.5-pro": models_dev_model(
                    "gemini-2.5-pro",
                    input=1.25,
                    output=10,
                    cache_read=0.31,
                    context_over_200k={"input": 2.5, "output": 15, "cache_read": 0.625},
                ),
                "gemini-embedding-001": models_dev_model(
                    "gemini-embedding-001", input=0.15, output=0
                ),
            },
        },
        "openai": {
            "id": "openai",
            "models": {
                "gpt-5.5": models_dev_model(
                    "gpt-5.5",
                    input=5,
                    output=30,
                    tiers=[
                        {"tier": {"type": "context", "size": 272000}, "input": 10, "output": 45}
                    ],
                ),
                "dall-e-3": {"id": "dall-e-3", "type": "image"},
                "gpt-unpriced": {"id": "gpt-unpriced"},
            },
        },
        "google-vertex-anthropic": {
            "models": {
                "claude-sonnet-4-5@20250929": models_dev_model(
                    "claude-sonnet-4-5@20250929", input=3, output=15, cache_write=3.75
                )
            }
        },
        "openrouter": {"models": {"x/y": models_dev_model("x/y", input=1, output=1)}},
    }
    result = parse_models_dev(data)
    rows = rows_by_key(result)
    assert rows["google", "gemini-2.5-pro", "standard"] == {
        "provider": "google",
        "model": "gemini-2.5-pro",
        "mode": "chat",
        "input_per_mtok": "1.25",
        "output_per_mtok": "10",
        "cached_input_per_mtok": "0.31",
        "long_context_threshold": 200000,
        "long_input_per_mtok": "2.5",
        "long_output_per_mtok": "15",
        "long_cached_input_per_mtok": "0.625",
    }
    assert rows["google", "gemini-embedding-001", "standard"]["mode"] == "embedding"
    gpt = rows["openai", "gpt-5.5", "standard"]
    assert (gpt["long_context_threshold"], gpt["long_input_per_mtok"]) == (272000, "10")
    assert (
        rows["vertex", "claude-sonnet-4-5@20250929", "standard"]["cache_write_per_mtok"] == "3.75"
    )
    assert result.coverage() == {"google": (2, 2), "openai": (1, 2), "vertex": (1, 1)}
    assert [(s.key, s.reason) for s in result.skipped] == [
        ("openai/gpt-unpriced", "no cost in the source")
    ]


# --- bad sources are refused whole ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([{"gpt-5": {}}], "is a JSON object of model entries, not a list"),
        ("prices", "not a string"),
        ({"gpt-5": "cheap"}, "LiteLLM entry 'gpt-5' is a string, not an object"),
        (
            {"gpt-5": chat("openai", input_cost_per_token=-1.25e-06)},
            "LiteLLM entry 'gpt-5': input_cost_per_token is negative",
        ),
        (
            {"gpt-5": chat("openai", input_cost_per_token="1.25e-06")},
            "LiteLLM entry 'gpt-5': input_cost_per_token is '1.25e-06', not a number",
        ),
        (
            {"gpt-5": chat("openai", input_cost_per_token=True)},
            "input_cost_per_token is True, not a number",
        ),
        (
            {"gpt-5": chat("openai", input_cost_per_token=float("nan"))},
            "input_cost_per_token is nan, not a finite number",
        ),
        (
            {
                "gpt-5": chat("openai", input_cost_per_token=1e-06),
                "gpt-4o": chat(
                    "openai",
                    input_cost_per_token=1e-06,
                    search_context_cost_per_query={"search_context_size_medium": -0.01},
                ),
            },
            "LiteLLM entry 'gpt-4o': search_context_cost_per_query.search_context_size_medium is negative",
        ),
    ],
)
def test_a_bad_litellm_list_is_refused_whole_naming_the_entry(data, message):
    with pytest.raises(PriceSourceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_litellm(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "models.dev's api.json is a JSON object of providers, not a list"),
        ({"openai": {"id": "openai"}}, "models.dev provider 'openai' has no 'models' object"),
        (
            {"openai": {"models": {"gpt-5": models_dev_model("gpt-5", input=-1, output=10)}}},
            "models.dev model 'openai/gpt-5': cost.input is negative",
        ),
        (
            {"openai": {"models": {"gpt-5": models_dev_model("gpt-5", input="1", output=10)}}},
            "models.dev model 'openai/gpt-5': cost.input is '1', not a number",
        ),
    ],
)
def test_a_bad_models_dev_file_is_refused_whole_naming_the_entry(data, message):
    with pytest.raises(PriceSourceError, match=message):
        parse_models_dev(data)


def test_files_are_read_and_bad_ones_refused(tmp_path):
    good = tmp_path / "prices.json"
    good.write_text(json.dumps({"gpt-5": chat("openai", input_cost_per_token=1.25e-06)}))
    assert read_price_source(good, format="litellm").rows[0]["input_per_mtok"] == "1.25"
    broken = tmp_path / "broken.json"
    broken.write_text('{"gpt-5": {')
    with pytest.raises(PriceSourceError, match=r"broken.json is not valid JSON: .*line 1"):
        read_price_source(broken, format="litellm")
    with pytest.raises(PriceSourceError, match=r"No file .*missing.json"):
        read_price_source(tmp_path / "missing.json", format="litellm")
    with pytest.raises(PriceSourceError, match="Unknown price list format 'csv'"):
        read_price_source(good, format="csv")


# --- URLs --------------------------------------------------------------------------------------


@pytest.fixture
def price_server() -> Iterator[tuple[str, dict[str, tuple[int, bytes, float]]]]:
    """A real HTTP server on 127.0.0.1: path -> (status, body, seconds to wait before answering)."""
    routes: dict[str, tuple[int, bytes, float]] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            status, body, delay = routes.get(self.path, (404, b"not found", 0.0))
            time.sleep(delay)
            try:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client gave up waiting

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", routes
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_url_is_fetched_and_a_500_a_timeout_or_bad_json_refuses_it(price_server):
    base, routes = price_server
    body = json.dumps({"xai/grok-4.5": chat("xai", input_cost_per_token=2e-06)}).encode()
    routes["/ok.json"] = (200, body, 0.0)
    routes["/boom.json"] = (500, b"internal error", 0.0)
    routes["/slow.json"] = (200, body, 2.0)
    routes["/html"] = (200, b"<html>maintenance</html>", 0.0)
    result = read_price_source(f"{base}/ok.json", format="litellm")
    assert result.rows == [
        {"provider": "xai", "model": "grok-4.5", "mode": "chat", "input_per_mtok": "2"}
    ]
    with pytest.raises(PriceSourceError, match=r"/boom.json answered HTTP 500; nothing was loaded"):
        read_price_source(f"{base}/boom.json", format="litellm")
    with pytest.raises(PriceSourceError, match=r"/missing answered HTTP 404"):
        read_price_source(f"{base}/missing", format="litellm")
    started = time.monotonic()
    with pytest.raises(PriceSourceError, match=r"/slow.json did not answer within 0.5 seconds"):
        read_price_source(f"{base}/slow.json", format="litellm", timeout=(0.5, 0.5))
    assert time.monotonic() - started < 1.9
    with pytest.raises(PriceSourceError, match=r"/html is not valid JSON"):
        read_price_source(f"{base}/html", format="litellm")


def test_a_public_list_is_read_with_the_reviewed_overrides_unless_told_not_to(tmp_path):
    path = tmp_path / "litellm.json"
    path.write_text(
        json.dumps(
            {
                "embed-multilingual-light-v3.0": {
                    "litellm_provider": "cohere",
                    "mode": "embedding",
                    "input_cost_per_token": 0.0001,
                },
                "gpt-4o-mini": chat("openai", input_cost_per_token=1.5e-07),
            }
        )
    )
    result = read_price_source(path, format="litellm")
    rows = rows_by_key(result)
    # The bundled overrides' correction applies; those matching nothing here are passed over.
    assert rows["cohere", "embed-multilingual-light-v3.0", "standard"]["input_per_mtok"] == "0.1"
    assert (result.source, result.format) == (str(path), "litellm")
    assert result.version.startswith("sha256-") and len(result.version) == 19
    raw = read_price_source(path, format="litellm", overrides=None)
    assert (
        rows_by_key(raw)["cohere", "embed-multilingual-light-v3.0", "standard"]["input_per_mtok"]
        == "100"
    )


def test_costmon_s_own_format_is_read_with_exact_decimals(price_server):
    base, routes = price_server
    routes["/prices.json"] = (
        200,
        b'{"catalog_version": "mine-3", "prices": [{"provider": "openai", "model": "m", '
        b'"input_per_mtok": 0.1}], "aliases": []}',
        0.0,
    )
    result = read_price_source(f"{base}/prices.json", format="costmon")
    assert result.rows == [{"provider": "openai", "model": "m", "input_per_mtok": Decimal("0.1")}]
    assert (result.version, result.format) == ("mine-3", "costmon")
    routes["/bad.json"] = (200, b'{"prices": {"provider": "openai"}}', 0.0)
    with pytest.raises(PriceSourceError, match="holds a list of prices"):
        read_price_source(f"{base}/bad.json", format="costmon")


@pytest.mark.django_db
def test_load_prices_syncs_a_litellm_url_and_refuses_one_answering_500_whole(price_server):
    base, routes = price_server
    routes["/ok.json"] = (
        200,
        json.dumps(
            {
                "gpt-4o-mini": chat(
                    "openai",
                    input_cost_per_token=1.5e-07,
                    output_cost_per_token=6e-07,
                    input_cost_per_token_batches=7.5e-08,
                    output_cost_per_token_batches=3e-07,
                ),
                "xai/grok-4.5": chat(
                    "xai", input_cost_per_token=2e-06, output_cost_per_token=6e-06
                ),
            }
        ).encode(),
        0.0,
    )
    routes["/boom.json"] = (500, b"", 0.0)
    out = io.StringIO()
    call_command("load_prices", f"{base}/ok.json", "--format", "litellm", stdout=out)
    assert "3 added, 0 changed, 0 unchanged" in out.getvalue()
    loaded = {
        (p.provider, p.model, p.service_tier): (p.input_per_mtok, p.output_per_mtok)
        for p in ModelPrice.objects.unscoped()
    }
    assert loaded == {
        ("openai", "gpt-4o-mini", "standard"): (Decimal("0.15"), Decimal("0.6")),
        ("openai", "gpt-4o-mini", "batch"): (Decimal("0.075"), Decimal("0.3")),
        ("xai", "grok-4.5", "standard"): (Decimal(2), Decimal(6)),
    }
    with pytest.raises(CommandError, match=r"/boom.json answered HTTP 500; nothing was loaded"):
        call_command("load_prices", f"{base}/boom.json", "--format", "litellm", stdout=out)
    assert ModelPrice.objects.unscoped().count() == 3
    assert PriceSync.objects.filter(status="failed").get().error.endswith("nothing was loaded.")


def test_a_url_nobody_answers_is_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(PriceSourceError, match=rf"127.0.0.1:{port}/x.json could not be read"):
        read_price_source(f"http://127.0.0.1:{port}/x.json", format="litellm", timeout=(1, 1))


# --- reviewed overrides ------------------------------------------------------------------------


def override(**fields: Any) -> dict[str, Any]:
    return {
        "reason": "checked",
        "url": "https://example.com/pricing",
        "reviewed": "2026-12-01",
        **fields,
    }


def small_list() -> Any:
    return parse_litellm(
        {
            "claude-sonnet-4-5": chat(
                "anthropic", input_cost_per_token=3e-06, output_cost_per_token=1.5e-05
            ),
            "embed-multilingual-light-v3.0": chat("cohere", input_cost_per_token=0.0001),
            "command-a-plus": chat(
                "cohere_chat", input_cost_per_token=0.0, output_cost_per_token=0.0
            ),
        }
    )


def test_overrides_set_add_and_drop_rows_and_mark_them_with_the_price_page():
    result = small_list()
    done = apply_overrides(
        result,
        {
            "prices": [
                override(
                    provider="anthropic",
                    model="claude-sonnet-4-5",
                    set={"long_context_threshold": 200000, "long_input_per_mtok": "6.00"},
                ),
                override(
                    provider="cohere",
                    model="embed-multilingual-light-v3.0",
                    set={"input_per_mtok": "0.10"},
                ),
                override(provider="cohere", model="command-a-plus", drop=True),
                override(
                    provider="anthropic",
                    model="claude-sonnet-4-5",
                    service_tier="batch",
                    row={"input_per_mtok": "1.5", "output_per_mtok": "7.5"},
                ),
            ],
            "aliases": [
                override(
                    provider="anthropic",
                    alias="claude-sonnet-4-5-latest",
                    target_provider="anthropic",
                    target_model="claude-sonnet-4-5",
                )
            ],
        },
    )
    rows = rows_by_key(result)
    sonnet = rows["anthropic", "claude-sonnet-4-5", "standard"]
    assert (sonnet["long_context_threshold"], sonnet["long_input_per_mtok"]) == (200000, "6")
    assert (sonnet["source"], sonnet["source_date"]) == (
        "https://example.com/pricing",
        "2026-12-01",
    )
    assert rows["cohere", "embed-multilingual-light-v3.0", "standard"]["input_per_mtok"] == "0.1"
    assert ("cohere", "command-a-plus", "standard") not in rows
    assert rows["anthropic", "claude-sonnet-4-5", "batch"]["service_tier"] == "batch"
    assert result.aliases[0]["alias"] == "claude-sonnet-4-5-latest"
    assert len(done) == 5 and done[2].startswith("dropped cohere/command-a-plus [standard]")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (
            {"provider": "cohere", "model": "gone", "set": {"input_per_mtok": "1"}},
            "no cohere/gone .standard. row to set; the source changed",
        ),
        (
            {"provider": "cohere", "model": "gone", "drop": True},
            "no cohere/gone .standard. row to drop",
        ),
        (
            {"provider": "anthropic", "model": "claude-sonnet-4-5", "row": {"input_per_mtok": "1"}},
            "is in the source now",
        ),
        (
            {
                "provider": "anthropic",
                "model": "claude-sonnet-4-5",
                "set": {"input_per_mtok": "-1"},
            },
            "input_per_mtok must be a non-negative number",
        ),
        (
            {"provider": "anthropic", "model": "claude-sonnet-4-5", "set": {"colour": "red"}},
            "unknown field 'colour'",
        ),
        (
            {"provider": "anthropic", "model": "claude-sonnet-4-5", "set": {}, "reason": ""},
            "needs a reason",
        ),
        (
            {"provider": "anthropic", "model": "claude-sonnet-4-5", "set": {}, "url": "http://x"},
            "needs the https:// URL",
        ),
        (
            {"provider": "anthropic", "model": "claude-sonnet-4-5", "set": {}, "drop": True},
            "exactly one of",
        ),
    ],
)
def test_a_stale_or_unreviewed_override_is_refused(item, message):
    with pytest.raises(PriceSourceError, match=f"overrides: prices.0.* {message}|{message}"):
        apply_overrides(small_list(), {"prices": [override(**item)]})


def test_a_glob_override_sets_a_match_pattern_on_every_row_it_names():
    result = parse_litellm(
        {
            "ft:gpt-4o-mini-2024-07-18": chat("openai", input_cost_per_token=3e-07),
            "ft:davinci-002": {
                "litellm_provider": "text-completion-openai",
                "mode": "completion",
                "input_cost_per_token": 1.2e-05,
            },
            "gpt-4o-mini": chat("openai", input_cost_per_token=1.5e-07),
        }
    )
    done = apply_overrides(
        result,
        {"prices": [override(provider="openai", model="ft:*", set={"match_pattern": "{model}:*"})]},
    )
    assert [(r["model"], r.get("match_pattern"), r.get("source")) for r in result.rows] == [
        ("ft:davinci-002", "ft:davinci-002:*", None),  # no price changed: its source stays
        ("ft:gpt-4o-mini-2024-07-18", "ft:gpt-4o-mini-2024-07-18:*", None),
        ("gpt-4o-mini", None, None),
    ]
    assert done == [
        "set openai/ft:davinci-002 [standard] match_pattern=ft:davinci-002:*",
        "set openai/ft:gpt-4o-mini-2024-07-18 [standard] match_pattern=ft:gpt-4o-mini-2024-07-18:*",
    ]


def test_an_alias_to_an_unpriced_model_is_refused():
    with pytest.raises(PriceSourceError, match="the target anthropic/claude-9 is not priced"):
        apply_overrides(
            small_list(),
            {
                "aliases": [
                    override(
                        provider="anthropic",
                        alias="x",
                        target_provider="anthropic",
                        target_model="claude-9",
                    )
                ]
            },
        )


@pytest.mark.django_db
def test_the_daily_sync_reads_costmon_prices_url_and_records_a_failure(price_server, settings):
    from usage.tasks import sync_prices

    base, routes = price_server
    routes["/list.json"] = (
        200,
        json.dumps({"xai/grok-4.5": chat("xai", input_cost_per_token=2e-06)}).encode(),
        0.0,
    )
    settings.COSTMON_PRICES_URL = ""
    assert sync_prices() is None  # not configured: nothing happens
    assert not PriceSync.objects.exists()
    settings.COSTMON_PRICES_URL, settings.COSTMON_PRICES_FORMAT = f"{base}/list.json", "litellm"
    synced = PriceSync.objects.get(pk=sync_prices())
    assert (synced.status, synced.added, synced.source) == ("applied", 1, f"{base}/list.json")
    routes["/list.json"] = (503, b"", 0.0)
    assert sync_prices() is None
    failed = PriceSync.objects.get(status="failed")
    assert "HTTP 503" in failed.error
    assert ModelPrice.objects.unscoped().get().model == "grok-4.5"  # the catalog kept its prices
