"""Pricing: find the price in force for a (provider, model, time) and compute an exact cost.

Pure functions over plain data; `usage.selectors.catalog_for` loads the data from the database.
"""

from __future__ import annotations

import bisect
import fnmatch
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

# (USD per million tokens) * tokens * 1000 = nano-dollars.
_NANOS_PER_USD_PER_MTOK = Decimal(1000)
_NANOS_PER_USD = Decimal(1_000_000_000)

# Cloud resellers bill the same models under their own provider name.
PROVIDER_FAMILIES = {
    "azure": "openai",
    "azure_openai": "openai",
    "azure-openai": "openai",
    "vertex": "google",
    "vertex_ai": "google",
    "google_vertex": "google",
    "gemini": "google",
    "bedrock": "anthropic",
    "aws_bedrock": "anthropic",
}

# Suffixes and prefixes that name a snapshot, deployment or region of a model rather than
# another model: stripped one at a time until a catalog name matches.
_STRIP_RULES = [
    re.compile(r"^models/"),  # Google's API names
    re.compile(r"^(?:us|eu|apac|global)\."),  # Bedrock cross-region inference profiles
    re.compile(r"^(?:anthropic|openai|google|mistral|meta|cohere|amazon)[./]"),
    re.compile(r"-v\d+(?::\d+)?$"),  # Bedrock versions: -v1:0
    re.compile(r"@\d{8}$"),  # Vertex: claude-3-5-sonnet@20240620
    re.compile(r"-\d{4}-\d{2}-\d{2}$"),  # OpenAI: gpt-4o-2024-08-06
    re.compile(r"-\d{8}$"),  # Anthropic: claude-3-5-haiku-20241022
    re.compile(r"-(?:latest|preview)$"),
    re.compile(r"-\d{3,4}$"),  # Mistral: mistral-large-2411; OpenAI: gpt-4-0613
    re.compile(r"-\d{2}-\d{2}$"),  # Google: gemini-2.5-flash-preview-05-20 after -preview
]


@dataclass(frozen=True)
class Rates:
    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal


@dataclass(frozen=True)
class Price:
    id: int
    tenant_id: int | None
    provider: str
    model: str
    match_pattern: str
    effective_from: datetime
    rates: Rates
    per_request: Decimal = Decimal(0)
    long_context_threshold: int | None = None
    long_rates: Rates | None = None


@dataclass
class _History:
    """One model's price rows, oldest first, for bisecting by time."""

    starts: list[datetime] = field(default_factory=list)
    prices: list[Price] = field(default_factory=list)

    def at(self, when: datetime) -> Price | None:
        i = bisect.bisect_right(self.starts, when)
        return self.prices[i - 1] if i else None


@dataclass(frozen=True)
class Alias:
    provider: str  # "" matches any provider
    alias: str
    target_provider: str
    target_model: str


def candidate_names(model: str) -> list[str]:
    """The model's name, then the names left after stripping snapshot parts one at a time."""
    return list(_candidate_names(model))


@functools.lru_cache(maxsize=8192)  # a tenant uses a few dozen model names, on every event
def _candidate_names(model: str) -> tuple[str, ...]:
    name = model.strip().lower()
    names = [name]
    changed = True
    while changed:
        changed = False
        for rule in _STRIP_RULES:
            stripped = rule.sub("", name)
            if stripped != name and stripped:
                name = stripped
                names.append(name)
                changed = True
                break
    return tuple(names)


class Catalog:
    """Every price a tenant can be charged: its own overrides first, then the global list."""

    def __init__(self, prices: Iterable[Price], aliases: Iterable[Alias] = ()) -> None:
        # (scope, provider, model) -> history; scope 0 = tenant override, 1 = global.
        self._exact: dict[tuple[int, str, str], _History] = {}
        self._by_model: dict[tuple[int, str], list[str]] = {}
        self._patterns: list[tuple[int, str, str, str]] = []
        for price in sorted(prices, key=lambda p: p.effective_from):
            scope = 0 if price.tenant_id is not None else 1
            provider = price.provider.lower()
            model = price.model.lower()
            history = self._exact.setdefault((scope, provider, model), _History())
            history.starts.append(price.effective_from)
            history.prices.append(price)
            providers = self._by_model.setdefault((scope, model), [])
            if provider not in providers:
                providers.append(provider)
            if price.match_pattern:
                entry = (scope, provider, price.match_pattern.lower(), model)
                if entry not in self._patterns:
                    self._patterns.append(entry)
        # The most specific pattern wins: the one with the most literal characters.
        self._patterns.sort(key=lambda p: (p[0], -len(p[2].replace("*", ""))))
        self._aliases = {(a.provider.lower(), a.alias.lower()): a for a in aliases}
        # Name resolution is pure and names repeat endlessly: remember it, up to a bound.
        self._resolved: dict[tuple[str, str], list[_History]] = {}

    def resolve(self, provider: str, model: str) -> tuple[str, str]:
        """Apply the tenant's aliases (deployment names, ARNs) to a reported name."""
        key = model.strip().lower()
        alias = self._aliases.get((provider.lower(), key)) or self._aliases.get(("", key))
        if alias is not None:
            return alias.target_provider.lower(), alias.target_model.lower()
        return provider.lower(), model

    def histories(self, provider: str, model: str) -> list[_History]:
        """Candidate price histories for a reported name, best match first."""
        key = (provider, model)
        found = self._resolved.get(key)
        if found is None:
            found = self._find(provider, model)
            if len(self._resolved) < 10_000:
                self._resolved[key] = found
        return found

    def _find(self, provider: str, model: str) -> list[_History]:
        provider, model = self.resolve(provider, model)
        family = PROVIDER_FAMILIES.get(provider)
        names = candidate_names(model)
        found: list[_History] = []
        for scope in (0, 1):
            for name in names:
                for prov in (provider, family):
                    if prov and (h := self._exact.get((scope, prov, name))):
                        found.append(h)
                # A reseller or gateway under an unknown provider name: the model name alone
                # identifies it when exactly one provider sells a model of that name.
                others = self._by_model.get((scope, name), [])
                if len(others) == 1 and others[0] not in (provider, family):
                    found.append(self._exact[(scope, others[0], name)])
                if found:
                    break
            lowered = model.strip().lower()
            for p_scope, prov, pattern, target in self._patterns:
                if (
                    p_scope == scope
                    and prov in (provider, family)
                    and fnmatch.fnmatchcase(lowered, pattern)
                ):
                    found.append(self._exact[(scope, prov, target)])
        return found

    def models_of(self, provider: str, when: datetime) -> list[Price]:
        """The global list prices of one provider's models in force at `when` (tenant overrides
        are left out: they price the models a tenant uses, not the ones it could switch to)."""
        wanted = provider.lower()
        found = []
        for (scope, prov, _model), history in self._exact.items():
            if scope == 1 and prov == wanted and (price := history.at(when)) is not None:
                found.append(price)
        return sorted(found, key=lambda p: p.model)

    def price_at(self, provider: str, model: str, when: datetime) -> Price | None:
        for history in self.histories(provider, model):
            if (price := history.at(when)) is not None:
                return price
        return None


def cost_nanos(
    price: Price,
    *,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int = 0,
    cache_write_tokens: int = 0,
) -> int:
    """Exact cost in nano-dollars, rounded half-up once at the end.

    `input_tokens` counts every input token; `cached_input_tokens` and `cache_write_tokens` are
    the parts of it charged at the cache-read and cache-write rates.
    """
    rates = price.rates
    if (
        price.long_context_threshold is not None
        and price.long_rates is not None
        and input_tokens > price.long_context_threshold
    ):
        rates = price.long_rates
    plain = input_tokens - cached_input_tokens - cache_write_tokens
    usd_x_mtok = (
        plain * rates.input
        + cached_input_tokens * rates.cached_input
        + cache_write_tokens * rates.cache_write
        + output_tokens * rates.output
    )
    total = usd_x_mtok * _NANOS_PER_USD_PER_MTOK + price.per_request * _NANOS_PER_USD
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def usd_to_nanos(usd: Decimal) -> int:
    return int((usd * _NANOS_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def format_usd(nanos: int) -> str:
    """A decimal string without exponent or trailing zeros: 1350000 -> '0.00135'."""
    value = (Decimal(nanos) / _NANOS_PER_USD).normalize()
    text = format(value, "f")
    return text
