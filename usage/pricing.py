"""Pricing: the price types, the rules that name a model's family, and an exact cost computed
line by line, so that every figure can be explained and recomputed by hand.

Pure functions over plain data. Which price applies to an event is `usage.price_lookup`'s job;
`usage.catalog.catalog_for` loads the data from the database.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import cached_property
from typing import NamedTuple, Protocol

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
RESELLERS = frozenset({*PROVIDER_FAMILIES, "groq"})

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

    @cached_property
    def standard_whole_rates(self) -> WholeRates:
        """`standard_rates` as whole numbers over one denominator, for `cost_nanos_of`."""
        return _whole_rates(self, self.standard_rates)

    @cached_property
    def long_context_whole_rates(self) -> WholeRates:
        return _whole_rates(self, self.long_context_rates)


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


class WholeRates(NamedTuple):
    """A price's rates in nano-dollars per unit, each `numerator / denominator` exactly (one
    common denominator), so a cost sums as whole numbers: a Decimal per line costs more than
    the rest of an event's ingest."""

    denominator: int
    input: int
    cached_input: int
    cache_write: int
    cache_write_1h: int
    input_audio: int
    input_image: int
    output: int
    output_audio: int
    output_image: int
    web_search: int  # per call
    image: int  # per output image
    request: int


def _whole_rates(price: Price, rates: dict[str, Decimal]) -> WholeRates:
    per_unit = [
        *(
            rates[kind] * _NANOS_PER_USD_PER_MTOK
            for kind in WholeRates._fields[1:10]  # the token kinds, in field order
        ),
        price.web_search_per_kcalls * _UNIT_NANOS["1K calls"],
        price.per_output_image * _UNIT_NANOS["image"],
        price.per_request * _UNIT_NANOS["request"],
    ]
    ratios = [value.as_integer_ratio() for value in per_unit]
    denominator = math.lcm(*(d for _, d in ratios))
    return WholeRates(denominator, *(n * (denominator // d) for n, d in ratios))


class Consumed(Protocol):
    """What `cost_nanos_of` reads: `Usage`'s fields (a validated event has them too)."""

    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cached_input_tokens(self) -> int: ...
    @property
    def cache_write_tokens(self) -> int: ...
    @property
    def cache_write_1h_tokens(self) -> int: ...
    @property
    def input_audio_tokens(self) -> int: ...
    @property
    def output_audio_tokens(self) -> int: ...
    @property
    def input_image_tokens(self) -> int: ...
    @property
    def output_image_tokens(self) -> int: ...
    @property
    def web_search_calls(self) -> int: ...
    @property
    def output_images(self) -> int: ...


def cost_nanos_of(price: Price, usage: Consumed) -> int:
    """`breakdown(price, usage).nanos` without the lines, in whole numbers (the same figure:
    the same lines summed exactly, rounded half up once). Ingest prices every event with it;
    an explanation lists the lines with `breakdown`."""
    long = (
        price.long_context_threshold is not None
        and price.long_rates is not None
        and usage.input_tokens > price.long_context_threshold
    )
    r = price.long_context_whole_rates if long else price.standard_whole_rates
    cached, writes, one_hour = (
        usage.cached_input_tokens,
        usage.cache_write_tokens,
        usage.cache_write_1h_tokens,
    )
    input_audio, input_image = usage.input_audio_tokens, usage.input_image_tokens
    output_audio, output_image = usage.output_audio_tokens, usage.output_image_tokens
    total = (
        (usage.input_tokens - cached - writes - input_audio - input_image) * r.input
        + cached * r.cached_input
        + (writes - one_hour) * r.cache_write
        + one_hour * r.cache_write_1h
        + input_audio * r.input_audio
        + input_image * r.input_image
        + (usage.output_tokens - output_audio - output_image) * r.output
        + output_audio * r.output_audio
        + output_image * r.output_image
        + usage.web_search_calls * r.web_search
        + usage.output_images * r.image
        + r.request
    )
    whole, rest = divmod(abs(total), r.denominator)
    if 2 * rest >= r.denominator:  # ROUND_HALF_UP: halves away from zero
        whole += 1
    return whole if total >= 0 else -whole


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
