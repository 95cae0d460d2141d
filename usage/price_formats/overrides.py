"""The reviewed overrides file: corrections where a source is wrong against the provider's own
price page, and catalog aliases, each with its reason and the page it was checked against."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from usage.price_formats.rows import (
    DATE,
    MODES,
    RATE_KEYS,
    TIERS,
    PriceList,
    PriceSourceError,
    decimal_text,
    finish_row,
    row_sort_key,
)


class _Stale(Exception):
    """An override that no longer matches the list."""


_PRICE_KEYS = {
    "provider",
    "model",
    "service_tier",
    "set",
    "row",
    "drop",
    "reason",
    "url",
    "reviewed",
}
_ALIAS_KEYS = {"provider", "alias", "target_provider", "target_model", "reason", "url", "reviewed"}
_SETTABLE = {*RATE_KEYS, "long_context_threshold", "mode", "deprecation_date", "match_pattern"}


def apply_overrides(
    result: PriceList, overrides: object, *, where: str = "overrides", strict: bool = True
) -> list[str]:
    """Apply a reviewed overrides document to `result`; returns one line per change made.

    `{"prices": [...], "aliases": [...]}`. A price override names rows by provider, model (a
    glob such as `ft:*` for `set`, where `{model}` in a value stands for each row's name) and
    service_tier (default standard), and either `set`s fields of them, gives a whole new `row`,
    or `drop`s one; each carries the `reason`, the provider's price page `url` and `reviewed`
    (the date). A row whose price an override changes takes the url and date as its source. An
    override that matches nothing is an error (the source changed, so it needs another look);
    not `strict`, it is passed over and said so in the lines returned.
    """
    if not isinstance(overrides, Mapping):
        raise PriceSourceError(f"{where} must be a JSON object with 'prices' and 'aliases'.")
    unknown = set(overrides) - {"prices", "aliases", "about"}
    if unknown:
        raise PriceSourceError(f"{where}: unknown keys {sorted(unknown)}.")
    rows = {(r["provider"], r["model"], r.get("service_tier", "standard")): r for r in result.rows}
    done: list[str] = []
    for i, item in enumerate(overrides.get("prices", [])):
        try:
            done.extend(_apply_price_override(rows, item, f"{where}: prices[{i}]"))
        except _Stale as exc:
            if strict:
                raise PriceSourceError(str(exc)) from None
            done.append(f"passed over: {exc}")
    result.rows = sorted(rows.values(), key=row_sort_key)
    priced = result.priced()
    for i, item in enumerate(overrides.get("aliases", [])):
        label = f"{where}: aliases[{i}]"
        checked = _reviewed(item, label, _ALIAS_KEYS)
        alias = {k: str(checked.get(k) or "") for k in ("provider", "alias")}
        target = (str(checked.get("target_provider") or ""), str(checked.get("target_model") or ""))
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
                "reason": str(checked["reason"]),
            }
        )
        done.append(f"alias {alias['provider']}/{alias['alias']} -> {target[0]}/{target[1]}")
    result.aliases.sort(key=lambda a: (a["provider"], a["alias"]))
    return done


def _reviewed(item: object, label: str, keys: set[str]) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise PriceSourceError(f"{label} is not an object.")
    unknown = set(item) - keys
    if unknown:
        raise PriceSourceError(f"{label}: unknown keys {sorted(unknown)}.")
    if not str(item.get("reason") or "").strip():
        raise PriceSourceError(f"{label} needs a reason.")
    if not str(item.get("url") or "").startswith("https://"):
        raise PriceSourceError(f"{label} needs the https:// URL of the provider's price page.")
    reviewed = item.get("reviewed")
    if not (isinstance(reviewed, str) and DATE.match(reviewed)):
        raise PriceSourceError(f"{label} needs 'reviewed', the YYYY-MM-DD of the review.")
    return item


def _apply_price_override(
    rows: dict[tuple[str, str, str], dict[str, Any]], item: object, label: str
) -> list[str]:
    checked = _reviewed(item, label, _PRICE_KEYS)
    provider, model = str(checked.get("provider") or ""), str(checked.get("model") or "")
    tier = str(checked.get("service_tier") or "standard")
    actions = [a for a in ("set", "row", "drop") if a in checked]
    if not provider or not model or len(actions) != 1 or tier not in TIERS:
        raise PriceSourceError(
            f"{label} needs provider, model, a service_tier of {TIERS} if any, and exactly one "
            "of 'set', 'row' or 'drop'."
        )
    if "*" in model and actions != ["set"]:
        raise PriceSourceError(f"{label}: a model glob only takes 'set'.")
    review = {"source": str(checked["url"]), "source_date": checked["reviewed"]}
    key = (provider, model, tier)
    name = f"{provider}/{model} [{tier}]"
    if actions == ["drop"]:
        if rows.pop(key, None) is None:
            raise _Stale(f"{label}: no {name} row to drop; the source changed.")
        return [f"dropped {name}: {checked['reason']}"]
    if actions == ["row"]:
        new = _fields(checked["row"], label)
        if key in rows:
            raise _Stale(f"{label}: {name} is in the source now; use 'set' or remove.")
        if "input_per_mtok" not in new:
            raise PriceSourceError(f"{label}: a new row needs input_per_mtok.")
        rows[key] = finish_row(
            {"provider": provider, "model": model, "service_tier": tier, **new, **review}
        )
        return [f"added {name}: {checked['reason']}"]
    changes = _fields(checked["set"], label)
    keys = [
        k
        for k in sorted(rows, key=lambda k: row_sort_key(rows[k]))
        if k[0] == provider and k[2] == tier and fnmatch.fnmatchcase(k[1], model)
    ]
    if not keys:
        raise _Stale(f"{label}: no {name} row to set; the source changed.")
    done = []
    for k in keys:
        row = rows[k]
        wanted = {
            f: v.replace("{model}", row["model"]) if isinstance(v, str) else v
            for f, v in changes.items()
        }
        shown = f"{provider}/{row['model']} [{tier}]"
        if all(row.get(f) == v for f, v in wanted.items()):
            done.append(f"unchanged {shown} (the source agrees now; the override can go)")
            continue
        priced = any(f in RATE_KEYS or f == "long_context_threshold" for f in wanted)
        rows[k] = finish_row({**row, "service_tier": tier, **wanted, **(review if priced else {})})
        done.append(f"set {shown} " + ", ".join(f"{f}={v}" for f, v in wanted.items()))
    return done


def _fields(values: object, label: str) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise PriceSourceError(f"{label}: 'set' and 'row' take an object of fields.")
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in _SETTABLE:
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
        elif name == "mode" and value not in MODES:
            raise PriceSourceError(f"{label}: mode is one of {MODES}.")
        elif name == "deprecation_date" and not (isinstance(value, str) and DATE.match(value)):
            raise PriceSourceError(f"{label}: deprecation_date is a YYYY-MM-DD date.")
        elif not isinstance(value, str):
            raise PriceSourceError(f"{label}: {name} is text.")
        else:
            out[name] = value
    return out
