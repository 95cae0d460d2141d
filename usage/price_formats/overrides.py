"""The reviewed overrides file: corrections where a source is wrong against the provider's own
price page, and catalog aliases, each with its reason and the page it was checked against."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from usage.price_formats.rows import (
    DATE,
    RATE_KEYS,
    TIERS,
    PriceList,
    PriceSourceError,
    decimal_text,
    finish_row,
    row_sort_key,
)


def apply_overrides(result: PriceList, overrides: object, *, where: str = "overrides") -> list[str]:
    """Apply a reviewed overrides document to `result`; returns one line per change made.

    `{"prices": [...], "aliases": [...]}`. A price override names a row by provider, model and
    (optionally) service_tier and either `set`s some of its rates, gives a whole new `row`, or
    `drop`s it; every one carries the `reason` and the provider's price page `url` it was
    checked against (and `reviewed`, the date). An override that matches nothing is an error: the
    source changed, so it needs another look.
    """
    if not isinstance(overrides, Mapping):
        raise PriceSourceError(f"{where} must be a JSON object with 'prices' and 'aliases'.")
    unknown = set(overrides) - {"prices", "aliases", "about"}
    if unknown:
        raise PriceSourceError(f"{where}: unknown keys {sorted(unknown)}.")
    rows = {(r["provider"], r["model"], r.get("service_tier", "standard")): r for r in result.rows}
    done: list[str] = []
    for i, item in enumerate(overrides.get("prices", [])):
        done.append(_apply_price_override(rows, item, f"{where}: prices[{i}]"))
    result.rows = sorted(rows.values(), key=row_sort_key)
    priced = result.priced()
    for i, item in enumerate(overrides.get("aliases", [])):
        label = f"{where}: aliases[{i}]"
        _require_review(item, label)
        alias = {k: str(item.get(k) or "") for k in ("provider", "alias")}
        target = (str(item.get("target_provider") or ""), str(item.get("target_model") or ""))
        if not all((*alias.values(), *target)):
            raise PriceSourceError(f"{label} needs provider, alias, target_provider, target_model.")
        if target[1] not in priced.get(target[0], set()):
            raise PriceSourceError(f"{label}: the target {target[0]}/{target[1]} is not priced.")
        if alias["alias"] in priced.get(alias["provider"], set()):
            raise PriceSourceError(f"{label}: {alias['alias']} has its own price; drop the alias.")
        result.aliases = [
            a
            for a in result.aliases
            if (a["provider"], a["alias"]) != (alias["provider"], alias["alias"])
        ]
        result.aliases.append(
            {
                **alias,
                "target_provider": target[0],
                "target_model": target[1],
                "reason": str(item["reason"]),
            }
        )
        done.append(f"alias {alias['provider']}/{alias['alias']} -> {target[0]}/{target[1]}")
    result.aliases.sort(key=lambda a: (a["provider"], a["alias"]))
    return done


def _require_review(item: object, label: str) -> None:
    if not isinstance(item, Mapping):
        raise PriceSourceError(f"{label} is not an object.")
    if not str(item.get("reason") or "").strip():
        raise PriceSourceError(f"{label} needs a reason.")
    if not str(item.get("url") or "").startswith("https://"):
        raise PriceSourceError(f"{label} needs the https:// URL of the provider's price page.")


def _apply_price_override(
    rows: dict[tuple[str, str, str], dict[str, Any]], item: object, label: str
) -> str:
    _require_review(item, label)
    assert isinstance(item, Mapping)
    reviewed = item.get("reviewed")
    if not (isinstance(reviewed, str) and DATE.match(reviewed)):
        raise PriceSourceError(f"{label} needs 'reviewed', the YYYY-MM-DD of the review.")
    provider, model = str(item.get("provider") or ""), str(item.get("model") or "")
    tier = str(item.get("service_tier") or "standard")
    key = (provider, model, tier)
    actions = [a for a in ("set", "row", "drop") if a in item]
    if not provider or not model or len(actions) != 1 or tier not in TIERS:
        raise PriceSourceError(
            f"{label} needs provider, model, a service_tier of {TIERS} if any, and exactly one "
            "of 'set', 'row' or 'drop'."
        )
    review = {"source": str(item["url"]), "source_date": reviewed}
    name = f"{provider}/{model} [{tier}]"
    if actions == ["drop"]:
        if rows.pop(key, None) is None:
            raise PriceSourceError(f"{label}: no {name} row to drop; the source changed.")
        return f"dropped {name}: {item['reason']}"
    if actions == ["row"]:
        new = _override_rates(item["row"], label)
        if key in rows:
            raise PriceSourceError(f"{label}: {name} is in the source now; use 'set' or remove.")
        if "input_per_mtok" not in new:
            raise PriceSourceError(f"{label}: a new row needs input_per_mtok.")
        rows[key] = finish_row(
            {"provider": provider, "model": model, "service_tier": tier, **new, **review}
        )
        return f"added {name}: {item['reason']}"
    row = rows.get(key)
    if row is None:
        raise PriceSourceError(f"{label}: no {name} row to set; the source changed.")
    changes = _override_rates(item["set"], label)
    if all(row.get(k) == v for k, v in changes.items()):
        return f"unchanged {name} (the source agrees now; the override can go)"
    rows[key] = finish_row({**row, "service_tier": tier, **changes, **review})
    return f"set {name} " + ", ".join(f"{k}={v}" for k, v in changes.items())


def _override_rates(values: object, label: str) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise PriceSourceError(f"{label}: 'set' and 'row' take an object of rates.")
    allowed = set(RATE_KEYS) | {
        "long_context_threshold",
        "mode",
        "deprecation_date",
        "match_pattern",
    }
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in allowed:
            raise PriceSourceError(f"{label}: unknown field {name!r}.")
        if name in RATE_KEYS:
            try:
                number = Decimal(str(value))
            except ArithmeticError:
                raise PriceSourceError(f"{label}: {name} {value!r} is not a number.") from None
            if not number.is_finite() or number < 0:
                raise PriceSourceError(f"{label}: {name} must be a non-negative number.")
            out[name] = decimal_text(number)
        elif name == "long_context_threshold":
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise PriceSourceError(f"{label}: long_context_threshold is a number of tokens.")
            out[name] = value
        else:
            out[name] = value
    return out
