"""LiteLLM's `model_prices_and_context_window.json`: USD per token, one entry per routing key
(`gemini/gemini-2.5-pro`, `azure/eu/gpt-4o`, `bedrock/us-east-1/anthropic.claude-v1`), read into
rows under costmon's provider names and the names applications report."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from usage.price_formats.rows import (
    DATE,
    LONG_RATES,
    MODES,
    TIERS,
    Candidate,
    PriceList,
    PriceSourceError,
    Skip,
    candidate_rank,
    choose_rows,
    decimal_text,
    finish_row,
    json_type,
    parse_number,
)

# LiteLLM provider -> (costmon provider, route rank, prefixes its keys carry).
_LITELLM_ROUTES: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "openai": ("openai", 0, ("openai/",)),
    "text-completion-openai": ("openai", 0, ("text-completion-openai/", "openai/")),
    "anthropic": ("anthropic", 0, ("anthropic/",)),
    "gemini": ("google", 0, ("gemini/",)),
    "vertex_ai": ("vertex", 0, ("vertex_ai/",)),
    "vertex_ai-language-models": ("vertex", 0, ("vertex_ai/",)),
    "vertex_ai-embedding-models": ("vertex", 0, ("vertex_ai/",)),
    "vertex_ai-text-models": ("vertex", 0, ("vertex_ai/",)),
    "vertex_ai-anthropic_models": ("vertex", 0, ("vertex_ai/",)),
    "vertex_ai-mistral_models": ("vertex", 0, ("vertex_ai/",)),
    "vertex_ai-deepseek_models": ("vertex", 0, ("vertex_ai/",)),
    "vertex_ai-openai_models": ("vertex", 0, ("vertex_ai/",)),
    "mistral": ("mistral", 0, ("mistral/",)),
    "codestral": ("mistral", 1, ("codestral/",)),
    "text-completion-codestral": ("mistral", 1, ("text-completion-codestral/",)),
    "xai": ("xai", 0, ("xai/",)),
    "deepseek": ("deepseek", 0, ("deepseek/",)),
    "cohere": ("cohere", 0, ("cohere/",)),
    "cohere_chat": ("cohere", 0, ("cohere_chat/", "cohere/")),
    "groq": ("groq", 0, ("groq/",)),
    "azure": ("azure", 0, ("azure/",)),
    "azure_text": ("azure", 0, ("azure_text/", "azure/")),
    "bedrock": ("bedrock", 0, ("bedrock/",)),
    "bedrock_converse": ("bedrock", 0, ("bedrock_converse/", "bedrock/")),
}
# Deployment segments after `azure/`: global deployments cost the list price, data zones more.
_AZURE_GLOBAL = ("global/", "global-standard/")
_AZURE_ZONE = re.compile(r"^(?:eu|us|apac|us-gov)/")
# Segments after `bedrock/`: call paths, regions (priced apart), provisioned throughput.
_BEDROCK_PATH = re.compile(r"^(?:invoke|converse)/")
_BEDROCK_REGION = re.compile(r"^(?:[a-z]{2}(?:-gov)?-[a-z]+-\d+|\*)/")
_BEDROCK_COMMITMENT = re.compile(r"^\d+-month-commitment/")
# Model makers in scope behind a cloud: a Bedrock id's vendor (after a `us.`-style inference
# profile) and a Vertex publisher path.
_BEDROCK_MAKERS = re.compile(
    r"^(?:(?:us|eu|apac|global|jp|au|ca|us-gov)\.)?(?:anthropic|openai|mistral|deepseek|google|xai|cohere)\.|^claude-"
)
_VERTEX_PUBLISHERS = ("xai/", "deepseek-ai/", "openai/", "mistralai/", "google/", "anthropic/")

_LITELLM_COST_KEY = re.compile(
    r"^(?P<base>[a-z0-9_]+?)(?:_above_(?P<k>\d+)k_tokens)?"
    r"(?P<tier>_batches|_flex|_priority|_ultrafast|_balanced|_decisions)?$"
)
_LITELLM_TIERS = {None: "standard", "_batches": "batch", "_flex": "flex", "_priority": "priority"}
_LITELLM_FIELDS = {
    "input_cost_per_token": "input_per_mtok",
    "output_cost_per_token": "output_per_mtok",
    "cache_read_input_token_cost": "cached_input_per_mtok",
    "cache_creation_input_token_cost": "cache_write_per_mtok",
    "cache_creation_input_token_cost_above_1hr": "cache_write_1h_per_mtok",
    "input_cost_per_audio_token": "input_audio_per_mtok",
    "output_cost_per_audio_token": "output_audio_per_mtok",
    "input_cost_per_image_token": "input_image_per_mtok",
    "output_cost_per_image_token": "output_image_per_mtok",
    "output_cost_per_image": "per_output_image",  # USD per generated image
    "input_cost_per_request": "per_request",  # USD per call
    "search_context_cost_per_query": "web_search_per_kcalls",  # USD per query, by context size
}
_CACHE_HIT = "input_cost_per_token_cache_hit"  # DeepSeek's name for the cache-read price
# Entries whose only prices are for tools, not tokens (LiteLLM's `container`).
_TOOL_COSTS = {
    "code_interpreter_cost_per_session",
    "file_search_cost_per_1k_calls",
    "file_search_cost_per_gb_per_day",
    "vector_store_cost_per_gb_per_day",
}
_NON_TOKEN_UNITS = ("second", "character", "pixel", "query", "page", "image")


def _litellm_route(key: str, provider: str) -> tuple[str, int, str, int, bool] | Skip:
    """(costmon provider, route rank, model name, location rank, prefixed) or why not."""
    route = _LITELLM_ROUTES.get(provider)
    if route is None:
        return Skip(key, f"LiteLLM provider {provider!r} is not in the catalog's scope")
    costmon, route_rank, prefixes = route
    name, prefixed, location = key, False, 0
    for prefix in prefixes:
        if name.startswith(prefix):
            name, prefixed = name[len(prefix) :], True
            break
    if costmon == "azure":
        if name.startswith(_AZURE_GLOBAL):
            name, location = name.split("/", 1)[1], 1
        elif _AZURE_ZONE.match(name):
            name, location = name.split("/", 1)[1], 2
    elif costmon == "bedrock":
        if name.startswith("claude_platform/"):
            return Skip(key, "Claude Platform on AWS is billed as Anthropic's own API")
        name = _BEDROCK_PATH.sub("", name)
        if _BEDROCK_REGION.match(name):
            name, location = _BEDROCK_REGION.sub("", name), 2
        if _BEDROCK_COMMITMENT.match(name):
            return Skip(key, "Bedrock provisioned throughput, priced per hour, not per token")
        if not _BEDROCK_MAKERS.match(name):
            return Skip(key, "model maker not in the catalog's scope")
    elif costmon == "vertex" and "/" in name and not name.startswith(_VERTEX_PUBLISHERS):
        return Skip(key, "model maker not in the catalog's scope")
    return costmon, route_rank, name, location, prefixed


def _strip_route_prefix(key: str, provider: str) -> str:
    for prefix in _LITELLM_ROUTES[provider][2]:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _litellm_rates(
    key: str, entry: Mapping[str, Any], notes: Counter[str]
) -> tuple[dict[str, dict[str, Decimal]], int | None]:
    """Rates per tier (the long-context ones under `long_*` names) and the long threshold."""
    rates: dict[str, dict[str, Decimal]] = {}
    thresholds: set[int] = set()
    cache_hit: dict[str, Decimal] = {}
    for name, value in entry.items():
        if "cost" not in name or value is None:
            continue
        where = f"LiteLLM entry {key!r}: {name}"
        values: dict[str, Decimal] = {}
        number = Decimal(0)
        if isinstance(value, Mapping):
            values = {str(k): parse_number(v, f"{where}.{k}") for k, v in value.items()}
        else:
            number = parse_number(value, where)
        match = _LITELLM_COST_KEY.match(name)
        base = match["base"] if match else name
        if name == _CACHE_HIT:
            cache_hit["standard"] = number
            continue
        if name == "output_cost_per_reasoning_token":
            if value != entry.get("output_cost_per_token"):
                notes["reasoning tokens priced apart from output: billed as output"] += 1
            continue
        if match is None or base not in _LITELLM_FIELDS:
            if name not in _TOOL_COSTS:
                notes[f"field not carried: {_pattern(name)}"] += 1
            continue
        tier = _LITELLM_TIERS.get(match["tier"])
        if tier is None:
            notes[f"tier not carried: {match['tier'].lstrip('_')}"] += 1
            continue
        target = _LITELLM_FIELDS[base]
        if match["k"]:
            if target not in LONG_RATES:
                notes[f"field not carried: {_pattern(name)}"] += 1
                continue
            thresholds.add(int(match["k"]) * 1000)
            target = LONG_RATES[target]
        if target == "web_search_per_kcalls":
            if "search_context_size_medium" not in values:
                notes[f"field not carried: {name} without a medium size"] += 1
                continue
            amount = values["search_context_size_medium"] * 1000
        elif isinstance(value, Mapping):
            raise PriceSourceError(f"{where} is an object, not a number; nothing was loaded.")
        elif target in ("per_output_image", "per_request"):
            amount = number
        else:
            amount = number * 1_000_000
        rates.setdefault(tier, {})[target] = amount
    for tier, amount in cache_hit.items():
        rates.setdefault(tier, {}).setdefault("cached_input_per_mtok", amount * 1_000_000)
    if len(thresholds) > 1:
        notes["long-context rates at more than one threshold: the lowest kept"] += 1
    return rates, min(thresholds) if thresholds else None


def _pattern(name: str) -> str:
    return re.sub(r"_above_\d+k_tokens", "_above_<n>k_tokens", name)


def _no_price_reason(entry: Mapping[str, Any]) -> str:
    names = [n for n in entry if "cost" in n]
    if names and all(n in _TOOL_COSTS for n in names):
        return "a tool's price (per session or call), not a model"
    for unit in _NON_TOKEN_UNITS:
        if any(f"cost_per_{unit}" in n or f"per_{unit}" in n for n in names):
            return f"priced per {unit}, not per token"
    return "no input price per token in the source"


def _litellm_entry_rows(
    key: str, entry: Mapping[str, Any], provider: str, model: str, notes: Counter[str]
) -> list[dict[str, Any]] | str:
    rates, threshold = _litellm_rates(key, entry, notes)
    standard = rates.get("standard", {})
    if "input_per_mtok" not in standard:
        return _no_price_reason(entry)
    deprecation = entry.get("deprecation_date")
    if deprecation is not None and not (isinstance(deprecation, str) and DATE.match(deprecation)):
        notes["deprecation_date not a YYYY-MM-DD date: left out"] += 1
        deprecation = None
    source = entry.get("source")
    common = {
        "provider": provider,
        "model": model,
        "mode": entry.get("mode"),
        "deprecation_date": deprecation,
        "source": source if isinstance(source, str) and source.startswith("https://") else None,
    }
    rows = []
    for tier in TIERS:
        tier_rates = rates.get(tier)
        if not tier_rates:
            continue
        if "input_per_mtok" not in tier_rates:
            notes[f"{tier} rates without an input price for the tier: left out"] += 1
            continue
        row: dict[str, Any] = {**common, "service_tier": tier}
        row.update({k: decimal_text(v) for k, v in tier_rates.items()})
        if "long_input_per_mtok" in tier_rates:
            row["long_context_threshold"] = threshold
        elif any(k.startswith("long_") for k in tier_rates):
            notes["long-context rates without a long input rate: left out"] += 1
            for k in LONG_RATES.values():
                row.pop(k, None)
        rows.append(finish_row(row))
    return rows


def parse_litellm(data: object) -> PriceList:
    """LiteLLM's price list (an object of routing key -> entry) as catalog rows."""
    if not isinstance(data, Mapping):
        raise PriceSourceError(
            f"A LiteLLM price list is a JSON object of model entries, not a {json_type(data)}; "
            "nothing was loaded."
        )
    result = PriceList(format="litellm")
    candidates: list[Candidate] = []
    aliases: list[tuple[str, str]] = []
    names: dict[str, set[str]] = {}
    for key, entry in data.items():
        if key == "sample_spec":
            continue
        if not isinstance(entry, Mapping):
            raise PriceSourceError(
                f"LiteLLM entry {key!r} is a {json_type(entry)}, not an object; nothing was loaded."
            )
        if "alias_of" in entry and "litellm_provider" not in entry:
            aliases.append((key, str(entry["alias_of"])))
            continue
        provider = entry.get("litellm_provider")
        route = _litellm_route(key, str(provider))
        if isinstance(route, Skip):
            result.out_of_scope[route.reason] += 1
            continue
        if entry.get("mode") not in MODES:
            result.out_of_scope[f"mode {entry.get('mode')!r} is not priced per token"] += 1
            continue
        costmon, route_rank, model, location, prefixed = route
        rows = _litellm_entry_rows(key, entry, costmon, model, result.notes)
        if isinstance(rows, str):
            if rows.startswith("a tool"):
                result.out_of_scope[rows] += 1
            else:
                result.skipped.append(Skip(key, rows))
                names.setdefault(costmon, set()).add(model)
            continue
        names.setdefault(costmon, set()).add(model)
        for row in rows:
            candidates.append(
                Candidate(
                    key=key,
                    provider=costmon,
                    model=model,
                    tier=row.get("service_tier", "standard"),
                    row=row,
                    rank=candidate_rank(
                        route=route_rank, location=location, row=row, prefixed=prefixed, key=key
                    ),
                    regional=location == 2,
                )
            )
    choose_rows(result, candidates)
    result.source_models = {p: sorted(n) for p, n in sorted(names.items())}
    _litellm_aliases(result, data, aliases)
    return result


def _litellm_aliases(result: PriceList, data: Mapping[str, Any], aliases: list[tuple[str, str]]):
    """LiteLLM's `alias_of` entries whose target the catalog prices, as catalog aliases."""
    priced = result.priced()
    for alias_key, target_key in sorted(aliases):
        target = data.get(target_key)
        if not isinstance(target, Mapping):
            result.skipped.append(Skip(alias_key, f"alias of {target_key!r}, which is not listed"))
            continue
        route = _litellm_route(target_key, str(target.get("litellm_provider")))
        if isinstance(route, Skip):
            result.out_of_scope[f"alias: {route.reason}"] += 1
            continue
        provider, _, target_model, _, _ = route
        alias = _strip_route_prefix(alias_key, str(target.get("litellm_provider")))
        if target_model not in priced.get(provider, set()):
            result.skipped.append(Skip(alias_key, f"alias of {target_key!r}, which is unpriced"))
        elif alias in priced.get(provider, set()):
            result.notes["alias with its own price: the price kept"] += 1
        else:
            result.aliases.append(
                {
                    "provider": provider,
                    "alias": alias,
                    "target_provider": provider,
                    "target_model": target_model,
                    "reason": f"LiteLLM: {alias_key} is an alias of {target_key}",
                }
            )
    result.aliases.sort(key=lambda a: (a["provider"], a["alias"]))
