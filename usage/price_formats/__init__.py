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

import json
import time
from collections.abc import Callable
from pathlib import Path

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
    "parse_json",
    "parse_litellm",
    "parse_models_dev",
    "read_price_source",
    "row_sort_key",
]

FORMATS = ("litellm", "models.dev")
PARSERS: dict[str, Callable[[object], PriceList]] = {
    "litellm": parse_litellm,
    "models.dev": parse_models_dev,
}
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
) -> PriceList:
    """Read a public price list from a file or an http(s) URL, in `format` (see FORMATS)."""
    parser = PARSERS.get(format)
    if parser is None:
        raise PriceSourceError(f"Unknown price list format {format!r}: use one of {FORMATS}.")
    where = str(path_or_url)
    if where.startswith(("http://", "https://")):
        text = fetch_text(where, timeout=timeout)
    else:
        try:
            text = Path(where).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PriceSourceError(f"No file {where}.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise PriceSourceError(f"{where} could not be read: {exc}") from None
    return parser(parse_json(text, where))


def parse_json(text: str, where: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise PriceSourceError(f"{where} is not valid JSON: {exc}; nothing was loaded.") from None
