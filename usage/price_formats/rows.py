"""Catalog rows: their keys, exact decimal text, and choosing one row per (provider, model, tier)
when a source prices it more than once."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from costmon.core.exceptions import DomainError

PROVIDERS = (
    "openai",
    "anthropic",
    "google",
    "vertex",
    "mistral",
    "xai",
    "deepseek",
    "cohere",
    "groq",
    "azure",
    "bedrock",
)
MODES = ("chat", "responses", "embedding", "completion")
TIERS = ("standard", "batch", "flex", "priority")

# The rates of a catalog row: what a call costs (a change is a new price row).
RATE_FIELDS = (
    "input_per_mtok",
    "output_per_mtok",
    "cached_input_per_mtok",
    "cache_write_per_mtok",
    "cache_write_1h_per_mtok",
    "input_audio_per_mtok",
    "output_audio_per_mtok",
    "input_image_per_mtok",
    "output_image_per_mtok",
    "per_request",
    "per_output_image",
    "web_search_per_kcalls",
    "long_context_threshold",
    "long_input_per_mtok",
    "long_output_per_mtok",
    "long_cached_input_per_mtok",
    "long_cache_write_per_mtok",
)
# Every key a catalog row may hold, in the order rows are written.
ROW_KEYS = (
    "provider",
    "model",
    "service_tier",
    "mode",
    "deprecation_date",
    "match_pattern",
    "effective_from",
    *RATE_FIELDS,
    "source",
    "source_date",
)
# The keys that are prices (decimal strings); the rest name, describe or date the row.
RATE_KEYS = tuple(
    k
    for k in ROW_KEYS
    if k.endswith("_mtok") or k in ("per_request", "per_output_image", "web_search_per_kcalls")
)
LONG_RATES = {
    "input_per_mtok": "long_input_per_mtok",
    "output_per_mtok": "long_output_per_mtok",
    "cached_input_per_mtok": "long_cached_input_per_mtok",
    "cache_write_per_mtok": "long_cache_write_per_mtok",
}
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class PriceSourceError(DomainError):
    """A price list that cannot be used; the message names the entry, file or HTTP status."""


@dataclass(frozen=True)
class Skip:
    key: str  # the entry's name in the source
    reason: str


@dataclass(frozen=True)
class Conflict:
    """Source keys that price one (provider, model, tier) differently, and the one kept."""

    provider: str
    model: str
    tier: str
    chosen: str
    rejected: tuple[str, ...]
    prices: tuple[tuple[str, str], ...]  # (source key, its rates where the keys disagree)

    def describe(self) -> str:
        shown = "; ".join(f"{key}: {price}" for key, price in self.prices)
        return f"{self.provider}/{self.model} [{self.tier}]: kept {self.chosen} ({shown})"


@dataclass
class PriceList:
    """What a source says, in catalog terms, with everything left out and why."""

    format: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    aliases: list[dict[str, str]] = field(default_factory=list)
    source: str = ""  # the file or URL it was read from
    version: str = ""  # the list's own version, else a digest of its text
    # Per costmon provider, every in-scope model name of the source, priced or not.
    source_models: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    # Things read but not carried, counted: ignored tiers, fields costmon has no column for.
    notes: Counter[str] = field(default_factory=Counter)
    out_of_scope: Counter[str] = field(default_factory=Counter)

    def priced(self) -> dict[str, set[str]]:
        names: dict[str, set[str]] = {}
        for row in self.rows:
            names.setdefault(row["provider"], set()).add(row["model"])
        return names

    def coverage(self) -> dict[str, tuple[int, int]]:
        """Per provider: (source names the catalog prices, source names)."""
        priced = self.priced()
        return {
            provider: (len(set(names) & priced.get(provider, set())), len(names))
            for provider, names in sorted(self.source_models.items())
        }


# --- numbers ----------------------------------------------------------------------------------


def json_type(value: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
        type(value), "number" if isinstance(value, int | float) else "null"
    )


def decimal_text(value: Decimal) -> str:
    """A decimal as plain text, no exponent and no trailing zeros: '0.125', '10'."""
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def parse_number(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PriceSourceError(f"{where} is {value!r}, not a number; nothing was loaded.")
    if not math.isfinite(value):
        raise PriceSourceError(f"{where} is {value!r}, not a finite number; nothing was loaded.")
    if value < 0:
        raise PriceSourceError(f"{where} is negative ({value!r}); nothing was loaded.")
    # The float's shortest repr is the text the list's authors wrote: exact, no float arithmetic.
    return Decimal(repr(value))


def _differences(candidates: list[Candidate]) -> tuple[tuple[str, str], ...]:
    """Each candidate's values of the rates on which they disagree."""
    keys = [
        k
        for k in (*RATE_KEYS, "long_context_threshold")
        if len({c.row.get(k) for c in candidates}) > 1
    ]
    return tuple((c.key, " ".join(f"{k}={c.row.get(k, '-')}" for k in keys)) for c in candidates)


def _signature(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(row.get(k) for k in (*RATE_KEYS, "long_context_threshold"))


# --- choosing one row per (provider, model, tier) ---------------------------------------------


@dataclass
class Candidate:
    key: str
    provider: str
    model: str
    tier: str
    row: dict[str, Any]
    # Lower wins, compared in order: route (a provider's own API before a side route such as
    # codestral), location (no region before a global deployment before a region or data
    # zone), a non-zero price before an all-zero one (zero is the list's placeholder more often
    # than a real price), a key with the route's prefix before a bare one (the key LiteLLM
    # itself prices a call with), then the higher price (never understate spend), then the key.
    rank: tuple[Any, ...]
    regional: bool = False


CONFLICT_RULE = (
    "the provider's own route first, then a key without a region or data zone, then a non-zero "
    "price, then the key with the route's prefix, then the higher price"
)


def candidate_rank(
    *, route: int, location: int, row: Mapping[str, Any], prefixed: bool, key: str
) -> tuple[Any, ...]:
    rates = [Decimal(row[k]) for k in RATE_KEYS if row.get(k) is not None]
    zero = not any(rates)
    inp = Decimal(row["input_per_mtok"])
    out = Decimal(row.get("output_per_mtok") or 0)
    return (route, location, zero, not prefixed, -inp, -out, key)


def choose_rows(result: PriceList, candidates: list[Candidate]) -> None:
    # A region's or data zone's price (10-20% above list) is used only for a name that no
    # other key prices, and then for all its tiers; otherwise it is left out.
    global_names = {(c.provider, c.model) for c in candidates if not c.regional}
    groups: dict[tuple[str, str, str], list[Candidate]] = {}
    for c in candidates:
        if c.regional and (c.provider, c.model) in global_names:
            result.notes["regional or data-zone prices left out (the list price is kept)"] += 1
            continue
        groups.setdefault((c.provider, c.model, c.tier), []).append(c)
    for (provider, model, tier), group in sorted(groups.items()):
        group.sort(key=lambda c: c.rank)
        best = group[0]
        if best.regional:
            result.notes[f"priced from a regional key only: {best.key} [{tier}]"] += 1
        if len({_signature(c.row) for c in group}) > 1:
            result.conflicts.append(
                Conflict(
                    provider=provider,
                    model=model,
                    tier=tier,
                    chosen=best.key,
                    rejected=tuple(c.key for c in group[1:]),
                    prices=_differences(group),
                )
            )
        result.rows.append(best.row)
    result.rows.sort(key=row_sort_key)


def row_sort_key(row: Mapping[str, Any]) -> tuple[str, str, int]:
    return (row["provider"], row["model"], TIERS.index(row.get("service_tier") or "standard"))


def finish_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its keys in the catalog's order, unset ones left out."""
    if row.get("service_tier") == "standard":
        row.pop("service_tier")
    return {k: row[k] for k in ROW_KEYS if row.get(k) not in (None, "")}
