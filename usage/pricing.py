"""Pricing: find the price in force for a (provider, model, tier, time) and compute an exact cost,
line by line, so that every figure can be explained and recomputed by hand.

Pure functions over plain data; `usage.catalog.catalog_for` loads the data from the database.

Name resolution is right rather than forgiving. For a reported (provider, model) it tries, in
order, and takes the first step that finds a price (a tenant's own rate before the list price
within a step):
1. the tenant's aliases (its deployment names, ARNs, proxy routes);
2. the exact name;
3. the catalog's aliases (a provider's `-latest` name pointing at a dated model);
4. the name without deployment decorations (Google's `models/`, Bedrock's region prefix and
   `-v1:0` version, Vertex's `@default`; Vertex's `@20240620` is Anthropic's `-20240620`);
5. a catalog row whose `match_pattern` says its price applies to other names (a family's price
   for snapshots the catalog does not list one by one).
A dated snapshot never falls back to its family's price unless step 5 says so, and a name found
nowhere stays unpriced (never a silent $0).
"""

from __future__ import annotations

import bisect
import fnmatch
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import cached_property
from typing import NamedTuple

# (USD per million tokens) * tokens * 1000 = nano-dollars.
_NANOS_PER_USD_PER_MTOK = Decimal(1000)
_NANOS_PER_USD = Decimal(1_000_000_000)

SERVICE_TIERS = ("standard", "batch", "flex", "priority")
STANDARD = "standard"

# Names applications and OpenTelemetry use for one provider, mapped to the catalog's name.
PROVIDER_NAMES = {
    "azure_openai": "azure",
    "azure-openai": "azure",
    "az.ai.openai": "azure",
    "az.ai.inference": "azure",
    "vertex_ai": "vertex",
    "vertexai": "vertex",
    "google_vertex": "vertex",
    "gcp.vertex_ai": "vertex",
    "gemini": "google",
    "gcp.gemini": "google",
    "google_genai": "google",
    "gcp.gen_ai": "google",
    "aws_bedrock": "bedrock",
    "aws.bedrock": "bedrock",
    "x_ai": "xai",
    "x-ai": "xai",
    "mistral_ai": "mistral",
    "mistralai": "mistral",
    "cohere_chat": "cohere",
}

# Cloud resellers bill the same models under their own provider name: where the catalog has no
# row under the reseller, the first-party row of the same model name applies.
PROVIDER_FAMILIES: dict[str, tuple[str, ...]] = {
    "azure": ("openai",),
    "vertex": ("google", "anthropic", "mistral"),
    "bedrock": ("anthropic", "mistral", "cohere"),
}
_RESELLERS = frozenset({*PROVIDER_FAMILIES, "groq"})

# Decorations that name where or how a model is deployed, never another model: removed one at a
# time (each result tried in turn). Snapshot dates and `-latest` are not among them on purpose.
_DEPLOYMENT_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^models/"), ""),  # Google's API names
    (re.compile(r"^(?:us|eu|apac|global|us-gov|jp|au|ca|apne1|use1)\."), ""),  # Bedrock profiles
    (re.compile(r"^(?:anthropic|openai|google|mistral|meta|cohere|amazon|deepseek|xai)\."), ""),
    (re.compile(r"-v\d+(?::\d+)?$"), ""),  # Bedrock versions: -v1:0
    (re.compile(r"@default$"), ""),  # Vertex: claude-opus-4-6@default
    (re.compile(r"@(\d{8})$"), r"-\1"),  # Vertex: claude-3-5-sonnet@20240620
]


def normalise_provider(provider: str) -> str:
    name = provider.strip().lower()
    return PROVIDER_NAMES.get(name, name)


@dataclass(frozen=True)
class Rates:
    """USD per million tokens. `None` means "as the rate it falls back to" (see `_effective`)."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    input_audio: Decimal | None = None
    output_audio: Decimal | None = None
    input_image: Decimal | None = None
    output_image: Decimal | None = None


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
    service_tier: str = STANDARD
    per_output_image: Decimal = Decimal(0)
    web_search_per_kcalls: Decimal = Decimal(0)
    mode: str = ""
    deprecation_date: date | None = None
    source: str = ""

    def is_current(self, on: date) -> bool:
        return self.deprecation_date is None or self.deprecation_date > on

    @cached_property
    def standard_rates(self) -> dict[str, Decimal]:
        """Every rate a line needs, fallbacks applied (worked out once per price row)."""
        return _effective(self.rates)

    @cached_property
    def long_context_rates(self) -> dict[str, Decimal]:
        return _effective(self.long_rates, self.rates) if self.long_rates else self.standard_rates


@dataclass(frozen=True)
class Alias:
    provider: str  # "" matches any provider
    alias: str
    target_provider: str
    target_model: str


@dataclass(frozen=True)
class Resolution:
    """The price an event was charged at and how its name led there."""

    price: Price
    rule: str  # tenant_alias | exact | catalog_alias | deployment_name | pattern | model_name
    name: str  # the catalog name the rule arrived at
    requested_tier: str = STANDARD

    @property
    def tier_fallback(self) -> bool:
        """The event asked for a tier the catalog has no price for: standard rates applied."""
        return self.price.service_tier != self.requested_tier


@dataclass
class _History:
    """One model's price rows in one tier, oldest first, for bisecting by time."""

    starts: list[datetime] = field(default_factory=list)
    prices: list[Price] = field(default_factory=list)

    def at(self, when: datetime) -> Price | None:
        i = bisect.bisect_right(self.starts, when)
        return self.prices[i - 1] if i else None


# (scope, provider, model) -> {tier: history}; scope 0 = tenant override, 1 = global.
_Tiers = dict[str, _History]


@functools.lru_cache(maxsize=8192)  # a tenant uses a few dozen model names, on every event
def deployment_names(model: str) -> tuple[str, ...]:
    """The names left after removing deployment decorations one at a time, in order."""
    name = model.strip().lower()
    names: list[str] = []
    changed = True
    while changed:
        changed = False
        for pattern, replacement in _DEPLOYMENT_RULES:
            stripped = pattern.sub(replacement, name)
            if stripped != name and stripped:
                name = stripped
                names.append(name)
                changed = True
                break
    return tuple(names)


# Suffixes that name a snapshot of a model family. Not used for pricing (a snapshot has its own
# price); budgets and charts use them to treat a family and its snapshots as one model.
_SNAPSHOT_RULES = [
    re.compile(r"-\d{4}-\d{2}-\d{2}$"),  # OpenAI: gpt-4o-2024-08-06
    re.compile(r"-\d{8}$"),  # Anthropic: claude-3-5-haiku-20241022
    re.compile(r"-(?:latest|preview)$"),
    re.compile(r"-\d{3,4}$"),  # Mistral: mistral-large-2411; OpenAI: gpt-4-0613
    re.compile(r"-\d{2}-\d{2}$"),  # Google: gemini-2.5-flash-preview-05-20 after -preview
]


def candidate_names(model: str) -> list[str]:
    """The model's name, then its family names: deployment decorations and snapshot suffixes
    removed one at a time. For matching budgets and grouping charts, not for pricing."""
    return list(_family_names(model))


@functools.lru_cache(maxsize=8192)
def _family_names(model: str) -> tuple[str, ...]:
    name = model.strip().lower()
    names = [name]
    changed = True
    while changed:
        changed = False
        for rule in [p for p, _ in _DEPLOYMENT_RULES] + _SNAPSHOT_RULES:
            stripped = rule.sub("", name)
            if stripped != name and stripped:
                name = stripped
                names.append(name)
                changed = True
                break
    return tuple(names)


class Catalog:
    """Every price a tenant can be charged: its own rates first, then the global list."""

    def __init__(
        self,
        prices: Iterable[Price],
        aliases: Iterable[Alias] = (),
        catalog_aliases: Iterable[Alias] = (),
    ) -> None:
        self._exact: dict[tuple[int, str, str], _Tiers] = {}
        self._by_model: dict[tuple[int, str], list[str]] = {}
        self._patterns: list[tuple[int, str, str, str]] = []
        for price in sorted(prices, key=lambda p: p.effective_from):
            scope = 0 if price.tenant_id is not None else 1
            provider = price.provider.lower()
            model = price.model.lower()
            tiers = self._exact.setdefault((scope, provider, model), {})
            history = tiers.setdefault(price.service_tier, _History())
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
        self._catalog_aliases = {(a.provider.lower(), a.alias.lower()): a for a in catalog_aliases}
        # Name resolution is pure and names repeat endlessly: remember it, up to a bound.
        self._found: dict[tuple[str, str], list[tuple[str, str, _Tiers]]] = {}

    # --- name resolution ------------------------------------------------------------------

    def _candidates(self, provider: str, model: str) -> list[tuple[str, str, _Tiers]]:
        """(rule, catalog name, tiers) for a reported name, best first."""
        key = (provider, model)
        found = self._found.get(key)
        if found is None:
            found = self._find(normalise_provider(provider), model.strip())
            if len(self._found) < 10_000:
                self._found[key] = found
        return found

    def _lookup(self, provider: str, name: str) -> list[tuple[str, _Tiers]]:
        """The rows under this exact name: the provider's own, else its family's, else (for a
        provider the catalog does not know, such as a gateway) the one first-party seller's."""
        families = PROVIDER_FAMILIES.get(provider, ())
        found = []
        for scope in (0, 1):
            for prov in (provider, *families):
                if tiers := self._exact.get((scope, prov, name)):
                    found.append((prov, tiers))
                    break
            else:
                sellers = [p for p in self._by_model.get((scope, name), []) if p not in _RESELLERS]
                if len(sellers) == 1 and provider not in _RESELLERS:
                    found.append((sellers[0], self._exact[(scope, sellers[0], name)]))
        return found

    def _find(self, provider: str, model: str) -> list[tuple[str, str, _Tiers]]:
        lowered = model.lower()
        alias = self._aliases.get((provider, lowered)) or self._aliases.get(("", lowered))
        if alias is not None:
            target = alias.target_model.lower()
            found = self._lookup(normalise_provider(alias.target_provider), target)
            return [("tenant_alias", target, tiers) for _, tiers in found]
        if found := self._lookup(provider, lowered):
            return [("exact", lowered, tiers) for _, tiers in found]
        for name in (lowered, *deployment_names(lowered)):
            catalog_alias = self._catalog_aliases.get(
                (provider, name)
            ) or self._catalog_aliases.get(("", name))
            if catalog_alias is not None:
                target = catalog_alias.target_model.lower()
                target_provider = normalise_provider(catalog_alias.target_provider)
                if found := self._lookup(target_provider, target):
                    return [("catalog_alias", target, tiers) for _, tiers in found]
        for name in deployment_names(lowered):
            if found := self._lookup(provider, name):
                return [("deployment_name", name, tiers) for _, tiers in found]
        families = (provider, *PROVIDER_FAMILIES.get(provider, ()))
        for name in (lowered, *deployment_names(lowered)):
            matches = [
                ("pattern", target, self._exact[(scope, prov, target)])
                for scope, prov, pattern, target in self._patterns
                if prov in families and fnmatch.fnmatchcase(name, pattern)
            ]
            if matches:
                return matches
        return []

    def resolve(
        self, provider: str, model: str, when: datetime, tier: str = STANDARD
    ) -> Resolution | None:
        """The price in force at `when` for a reported name and tier, and how it was found.

        A tier the catalog does not price for that model falls back to the standard tier (the
        explanation says so); a name found nowhere is None: unpriced."""
        for rule, name, tiers in self._candidates(provider, model):
            for wanted in dict.fromkeys((tier, STANDARD)):
                history = tiers.get(wanted)
                if history is not None and (price := history.at(when)) is not None:
                    return Resolution(price, rule, name, tier)
        return None

    def price_at(
        self, provider: str, model: str, when: datetime, tier: str = STANDARD
    ) -> Price | None:
        found = self.resolve(provider, model, when, tier)
        return found.price if found is not None else None

    def models_of(self, provider: str, when: datetime) -> list[Price]:
        """The global standard list prices of one provider's models in force at `when` (tenant
        overrides are left out: they price the models a tenant uses, not the ones it could
        switch to)."""
        wanted = normalise_provider(provider)
        found = []
        for (scope, prov, _model), tiers in self._exact.items():
            history = tiers.get(STANDARD)
            if scope == 1 and prov == wanted and history and (price := history.at(when)):
                found.append(price)
        return sorted(found, key=lambda p: p.model)


# --- exact arithmetic ---------------------------------------------------------------------------


class Usage(NamedTuple):
    """What one call consumed. `input_tokens` counts every input token: cache reads, cache
    writes, audio and image tokens are parts of it; `output_tokens` likewise counts reasoning,
    audio and image output. `cache_write_1h_tokens` is the part of the cache writes kept for an
    hour (Anthropic prices those apart)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int = 0
    reasoning_tokens: int = 0
    web_search_calls: int = 0
    output_images: int = 0


class Line(NamedTuple):
    """One line of a cost: a quantity times a unit price."""

    kind: str
    quantity: int
    unit_price: Decimal  # USD per `unit`
    unit: str  # "1M tokens" | "1K calls" | "image" | "request"
    nanos: Decimal  # exact, before the one rounding of the total


_UNIT_NANOS = {
    "1M tokens": _NANOS_PER_USD_PER_MTOK,
    "1K calls": _NANOS_PER_USD / 1000,
    "image": _NANOS_PER_USD,
    "request": _NANOS_PER_USD,
}


@dataclass(frozen=True)
class Breakdown:
    lines: tuple[Line, ...]
    long_context: bool  # the long-context rates applied to the whole call

    @property
    def nanos(self) -> int:
        total = sum((line.nanos for line in self.lines), Decimal(0))
        return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _effective(rates: Rates, base: Rates | None = None) -> dict[str, Decimal]:
    """Every rate a line needs, with the documented fallbacks: cache reads and writes at the
    input rate, one-hour writes at the cache-write rate, audio and image at the text rates.
    Long-context rates (`base` given) fall back to the standard rates for modalities and
    one-hour writes."""
    cache_write = rates.cache_write if rates.cache_write is not None else rates.input
    fallback = base or rates
    return {
        "input": rates.input,
        "output": rates.output,
        "cached_input": rates.cached_input if rates.cached_input is not None else rates.input,
        "cache_write": cache_write,
        "cache_write_1h": (
            rates.cache_write_1h
            if rates.cache_write_1h is not None
            else (base.cache_write_1h if base and base.cache_write_1h is not None else cache_write)
        ),
        "input_audio": _first(rates.input_audio, fallback.input_audio, fallback.input),
        "output_audio": _first(rates.output_audio, fallback.output_audio, fallback.output),
        "input_image": _first(rates.input_image, fallback.input_image, fallback.input),
        "output_image": _first(rates.output_image, fallback.output_image, fallback.output),
    }


def _first(*values: Decimal | None) -> Decimal:
    return next(v for v in values if v is not None)


def breakdown(price: Price, usage: Usage) -> Breakdown:
    """The cost of one call, line by line. Token parts are charged at their own rate and the
    rest of the input or output at the text rate; above the long-context threshold the long
    rates apply to the whole call."""
    long = (
        price.long_context_threshold is not None
        and price.long_rates is not None
        and usage.input_tokens > price.long_context_threshold
    )
    rates = price.long_context_rates if long else price.standard_rates
    five_minute_writes = usage.cache_write_tokens - usage.cache_write_1h_tokens
    text_input = (
        usage.input_tokens
        - usage.cached_input_tokens
        - usage.cache_write_tokens
        - usage.input_audio_tokens
        - usage.input_image_tokens
    )
    text_output = usage.output_tokens - usage.output_audio_tokens - usage.output_image_tokens
    token_lines = (
        ("input", text_input, rates["input"]),
        ("cached_input", usage.cached_input_tokens, rates["cached_input"]),
        ("cache_write_5m", five_minute_writes, rates["cache_write"]),
        ("cache_write_1h", usage.cache_write_1h_tokens, rates["cache_write_1h"]),
        ("input_audio", usage.input_audio_tokens, rates["input_audio"]),
        ("input_image", usage.input_image_tokens, rates["input_image"]),
        ("output", text_output, rates["output"]),
        ("output_audio", usage.output_audio_tokens, rates["output_audio"]),
        ("output_image", usage.output_image_tokens, rates["output_image"]),
    )
    lines = [
        _line(kind, quantity, unit_price, "1M tokens")
        for kind, quantity, unit_price in token_lines
        if quantity
    ]
    if usage.web_search_calls and price.web_search_per_kcalls:
        lines.append(
            _line("web_search", usage.web_search_calls, price.web_search_per_kcalls, "1K calls")
        )
    if usage.output_images and price.per_output_image:
        lines.append(_line("images", usage.output_images, price.per_output_image, "image"))
    if price.per_request:
        lines.append(_line("request", 1, price.per_request, "request"))
    return Breakdown(tuple(lines), long)


def _line(kind: str, quantity: int, unit_price: Decimal, unit: str) -> Line:
    return Line(kind, quantity, unit_price, unit, quantity * unit_price * _UNIT_NANOS[unit])


def cost_nanos(
    price: Price,
    *,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int = 0,
    cache_write_tokens: int = 0,
    **parts: int,
) -> int:
    """Exact cost in nano-dollars, rounded half-up once at the end. `parts` are the other
    fields of `Usage` (one-hour cache writes, audio and image tokens, web searches, images)."""
    usage = Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached_input_tokens,
        cache_write_tokens=cache_write_tokens,
        **parts,
    )
    return breakdown(price, usage).nanos


def format_rate(value: Decimal) -> str:
    """A price as a plain decimal string: Decimal('2.500000') -> '2.5'."""
    return format(value.normalize(), "f") if value else "0"
