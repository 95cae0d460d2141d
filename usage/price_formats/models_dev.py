"""models.dev's `api.json`: providers holding models, costs in USD per 1M tokens, model ids as
the providers' APIs name them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from usage.price_formats.rows import (
    DATE,
    LONG_RATES,
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

# models.dev provider id -> costmon provider. Its model ids are the providers' API ids.
_MODELS_DEV_PROVIDERS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "google",
    "google-vertex": "vertex",
    "google-vertex-anthropic": "vertex",
    "mistral": "mistral",
    "xai": "xai",
    "deepseek": "deepseek",
    "cohere": "cohere",
    "groq": "groq",
    "azure": "azure",
    "amazon-bedrock": "bedrock",
}
_MODELS_DEV_FIELDS = {
    "input": "input_per_mtok",
    "output": "output_per_mtok",
    "cache_read": "cached_input_per_mtok",
    "cache_write": "cache_write_per_mtok",
    "input_audio": "input_audio_per_mtok",
    "output_audio": "output_audio_per_mtok",
}


def _models_dev_rates(where: str, cost: Mapping[str, Any]) -> dict[str, Decimal]:
    return {
        target: parse_number(cost[name], f"{where}: cost.{name}")
        for name, target in _MODELS_DEV_FIELDS.items()
        if cost.get(name) is not None
    }


def _models_dev_row(
    where: str, provider: str, model_id: str, model: Mapping[str, Any], notes: Counter[str]
) -> dict[str, Any] | str:
    cost = model.get("cost")
    if cost is None:
        return "no cost in the source"
    if not isinstance(cost, Mapping):
        raise PriceSourceError(f"{where}: cost is not an object; nothing was loaded.")
    rates = _models_dev_rates(where, cost)
    if "input_per_mtok" not in rates:
        return "no input price in the source"
    reasoning = cost.get("reasoning")
    if reasoning is not None and parse_number(reasoning, f"{where}: cost.reasoning") != rates.get(
        "output_per_mtok"
    ):
        notes["reasoning priced apart from output: not carried"] += 1
    long: tuple[int, Mapping[str, Any]] | None = None
    tiers = cost.get("tiers")
    if isinstance(tiers, list) and tiers:
        sized = []
        for i, tier in enumerate(tiers):
            size = tier.get("tier", {}).get("size") if isinstance(tier, Mapping) else None
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise PriceSourceError(f"{where}: cost.tiers[{i}] has no context size.")
            sized.append((size, tier))
        if len(sized) > 1:
            notes["more than one context tier: the lowest kept"] += 1
        long = min(sized, key=lambda t: t[0])
    elif isinstance(cost.get("context_over_200k"), Mapping):
        long = (200_000, cost["context_over_200k"])
    row: dict[str, Any] = {
        "provider": provider,
        "model": model_id,
        "mode": _models_dev_mode(model_id, model),
        **{k: decimal_text(v) for k, v in rates.items()},
    }
    if long is not None:
        long_rates = _models_dev_rates(f"{where} (long context)", long[1])
        if "input_per_mtok" in long_rates:
            row["long_context_threshold"] = long[0]
            for k, v in long_rates.items():
                if k in LONG_RATES:
                    row[LONG_RATES[k]] = decimal_text(v)
    deprecation = model.get("deprecation_date")
    if isinstance(deprecation, str) and DATE.match(deprecation):
        row["deprecation_date"] = deprecation
    return finish_row(row)


def _models_dev_mode(model_id: str, model: Mapping[str, Any]) -> str | None:
    kind = model.get("type")
    if kind is None:  # the v1 schema has no type: embeddings say so in their id
        return "embedding" if "embed" in model_id.lower() else "chat"
    return kind if kind in ("chat", "embedding") else None


def parse_models_dev(data: object) -> PriceList:
    """models.dev's api.json (provider id -> {models: {id -> model}}) as catalog rows."""
    if not isinstance(data, Mapping):
        raise PriceSourceError(
            f"models.dev's api.json is a JSON object of providers, not a {json_type(data)}; "
            "nothing was loaded."
        )
    result = PriceList(format="models.dev")
    candidates: list[Candidate] = []
    names: dict[str, set[str]] = {}
    for provider_id, provider_data in data.items():
        if not isinstance(provider_data, Mapping) or not isinstance(
            provider_data.get("models"), Mapping
        ):
            raise PriceSourceError(
                f"models.dev provider {provider_id!r} has no 'models' object; nothing was loaded."
            )
        costmon = _MODELS_DEV_PROVIDERS.get(provider_id)
        if costmon is None:
            result.out_of_scope["models.dev provider not in the catalog's scope"] += len(
                provider_data["models"]
            )
            continue
        for model_id, model in provider_data["models"].items():
            key = f"{provider_id}/{model_id}"
            if not isinstance(model, Mapping):
                raise PriceSourceError(f"models.dev model {key!r} is not an object.")
            if _models_dev_mode(model_id, model) is None:
                result.out_of_scope[f"type {model.get('type')!r} is not priced per token"] += 1
                continue
            names.setdefault(costmon, set()).add(model_id)
            row = _models_dev_row(
                f"models.dev model {key!r}", costmon, model_id, model, result.notes
            )
            if isinstance(row, str):
                result.skipped.append(Skip(key, row))
                continue
            rank = candidate_rank(route=0, location=0, row=row, prefixed=True, key=key)
            candidates.append(Candidate(key, costmon, model_id, "standard", row, rank))
    choose_rows(result, candidates)
    result.source_models = {p: sorted(n) for p, n in sorted(names.items())}
    return result
