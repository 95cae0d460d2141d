"""Public price lists read into costmon catalog rows.

Two formats: LiteLLM's `model_prices_and_context_window.json` (USD per token, one object per
routing key) and models.dev's `api.json` (USD per million tokens, providers holding models).
Both become rows in the bundled catalog's format: USD per 1M tokens as decimal strings, one row
per (provider, model, service tier), under costmon's provider names, with the model name an
application reports. The readers are pure (plain JSON in, plain rows out);
`read_price_source` reads a file or fetches a URL first. `catalog_build` writes the rows to
`usage/data/prices.json`; the sync loads them.

A bad source is refused whole (`PriceSourceError`, naming the entry or the HTTP status): nothing
is half-read.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import cast

import requests

from usage.price_formats.litellm import parse_litellm
from usage.price_formats.models_dev import parse_models_dev
from usage.price_formats.overrides import apply_overrides
from usage.price_formats.rows import (
    CONFLICT_RULE,
    MODES,
    PROVIDERS,
    RATE_KEYS,
    ROW_KEYS,
    TIERS,
    Conflict,
    PriceList,
    PriceSourceError,
    Skip,
    decimal_text,
    row_sort_key,
)

__all__ = [
    "CONFLICT_RULE",
    "FORMATS",
    "MODES",
    "PARSERS",
    "PROVIDERS",
    "RATE_KEYS",
    "ROW_KEYS",
    "TIERS",
    "Conflict",
    "PriceList",
    "PriceSourceError",
    "Skip",
    "apply_overrides",
    "decimal_text",
    "parse_costmon",
    "parse_json",
    "parse_litellm",
    "parse_models_dev",
    "read_price_source",
    "row_sort_key",
]


def parse_costmon(data: object) -> PriceList:
    """costmon's own catalog (`{"prices": [...], "aliases": [...]}` or a list of rows), as is:
    its rows are checked by the loader (`usage.prices`)."""
    version, aliases = "", cast(object, [])
    if isinstance(data, Mapping):
        version = str(data.get("catalog_version") or "")
        aliases = data.get("aliases") or []
        data = data.get("prices")
    if not isinstance(data, list) or not isinstance(aliases, list):
        raise PriceSourceError(
            "A costmon price list holds a list of prices (or an object with a 'prices' list); "
            "nothing was loaded."
        )
    return PriceList(format="costmon", rows=data, aliases=aliases, version=version)


FORMATS = ("costmon", "litellm", "models.dev")
PARSERS: dict[str, Callable[[object], PriceList]] = {
    "costmon": parse_costmon,
    "litellm": parse_litellm,
    "models.dev": parse_models_dev,
}
# The reviewed corrections the bundled catalog was built with; a sync from a public list
# applies them too, so it does not undo them.
BUNDLED_OVERRIDES = Path(__file__).resolve().parents[1] / "data" / "price_overrides.json"
MAX_SOURCE_BYTES = 64 * 1024 * 1024
FETCH_TIMEOUT_SECONDS = (5.0, 60.0)  # connect, read


def fetch_text(url: str, *, timeout: tuple[float, float] = FETCH_TIMEOUT_SECONDS) -> str:
    """The body of a price list served over http(s); any answer but 200 refuses it, and so does
    a body that takes longer than the read timeout in all (not just between two packets)."""
    deadline = time.monotonic() + timeout[0] + timeout[1]
    body = bytearray()
    try:
        with requests.get(url, timeout=timeout, stream=True) as response:
            if response.status_code != 200:
                raise PriceSourceError(
                    f"{url} answered HTTP {response.status_code}; nothing was loaded."
                )
            for chunk in response.iter_content(chunk_size=1 << 16):
                body += chunk
                if len(body) > MAX_SOURCE_BYTES:
                    raise PriceSourceError(
                        f"{url} sent more than {MAX_SOURCE_BYTES // 2**20} MB; nothing was loaded."
                    )
                if time.monotonic() > deadline:
                    raise requests.Timeout()
    except requests.Timeout:
        raise PriceSourceError(
            f"{url} did not answer within {timeout[1]:g} seconds; nothing was loaded."
        ) from None
    except requests.RequestException as exc:
        raise PriceSourceError(f"{url} could not be read ({exc}); nothing was loaded.") from None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise PriceSourceError(f"{url} is not UTF-8 text; nothing was loaded.") from None


def read_price_source(
    path_or_url: str | Path,
    *,
    format: str,
    timeout: tuple[float, float] = FETCH_TIMEOUT_SECONDS,
    overrides: str | Path | None = BUNDLED_OVERRIDES,
) -> PriceList:
    """Read a price list from a file or an http(s) URL, in `format` (see FORMATS).

    A public list (LiteLLM, models.dev) gets the reviewed `overrides` applied, leniently: one
    that no longer matches the list is passed over (catalog_build, which is strict, reports
    it). `overrides=None` reads the list as it is.
    """
    parser = PARSERS.get(format)
    if parser is None:
        raise PriceSourceError(f"Unknown price list format {format!r}: use one of {FORMATS}.")
    where = str(path_or_url)
    if where.startswith(("http://", "https://")):
        text = fetch_text(where, timeout=timeout)
    else:
        text = read_text(Path(where))
    data = parse_json(text, where, decimals=format == "costmon")
    result = parser(data)
    result.source = where
    result.version = result.version or f"sha256-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if overrides is not None and format != "costmon":
        path = Path(overrides)
        apply_overrides(
            result, parse_json(read_text(path), str(path)), where=path.name, strict=False
        )
    return result


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PriceSourceError(f"No file {path}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceSourceError(f"{path} could not be read: {exc}") from None


def parse_json(text: str, where: str, *, decimals: bool = False) -> object:
    """JSON, its numbers as floats (the public lists' per-token floats, converted through their
    shortest repr) or, with `decimals`, as exact Decimals (costmon's own lists)."""
    try:
        return json.loads(text, parse_float=Decimal) if decimals else json.loads(text)
    except ValueError as exc:
        raise PriceSourceError(f"{where} is not valid JSON: {exc}; nothing was loaded.") from None
