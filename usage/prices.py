"""Writes to the price catalog: loading and syncing price lists with a change record for every
load, and the review of changes by tenants that approve them first.

A sync never rewrites history. A model new to the catalog is added (priced since `EPOCH`, so
events that waited unpriced get a price); a changed price becomes a new row effective from the
moment of the sync; a model the list no longer names keeps its price. Only a row that names its
own `effective_from` (a curated file of history, or a tenant's negotiated rates) is written at
that moment, replacing a row with the very same start.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from costmon.core.exceptions import DomainError
from costmon.core.models import Tenant
from costmon.core.tenancy import tenant_context, unscoped
from usage.catalog import bump_version
from usage.eventstore.clickhouse import ClickHouseStore
from usage.eventstore.current import event_store
from usage.maintenance import usage_reprice
from usage.models import CatalogAlias, ModelAlias, ModelPrice, PriceChangeHold, PriceSync
from usage.price_formats import read_price_source
from usage.price_formats.rows import RATE_FIELDS
from usage.pricing import SERVICE_TIERS, format_rate, normalise_provider
from usage.repricing import schedule_reprice_unpriced
from usage.storerewrites import outside_transaction

log = structlog.get_logger(__name__)

# Models new to the catalog are priced from here on: the price lists do not date their rows,
# and an event stored unpriced before the model appeared in the list should get its price.
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)

# What describes a row without changing what a call costs: updated in place.
INFO_FIELDS = ("match_pattern", "mode", "deprecation_date", "source", "source_date")
PRICE_FIELDS = ("match_pattern", *RATE_FIELDS, "mode", "deprecation_date", "source", "source_date")
KEY_FIELDS = ("provider", "model", "service_tier", "effective_from")
_ZERO_DEFAULTS = {"output_per_mtok", "per_request", "per_output_image", "web_search_per_kcalls"}
_TEXT_FIELDS = {"match_pattern", "mode", "source"}
_DATE_FIELDS = {"deprecation_date", "source_date"}
KNOWN_ROW_FIELDS = frozenset({*KEY_FIELDS, *PRICE_FIELDS, "tenant", "reason"})
_SMALLEST = Decimal("1e-10")  # the catalog's precision: ten decimal places
ALIAS_FIELDS = ("provider", "alias", "target_provider", "target_model", "reason")


@dataclass
class PriceList:
    """A price list read from a file or URL, in costmon's row format (any public format is
    turned into this by `usage.price_formats`)."""

    rows: list[dict[str, Any]]
    aliases: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""
    format: str = "costmon"
    version: str = ""


def _fail(index: int, raw: Any, message: str) -> DomainError:
    name = (
        f"{raw.get('provider')}/{raw.get('model')}" if isinstance(raw, dict) else type(raw).__name__
    )
    return DomainError(f"Price {index + 1} ({name}): {message} Nothing was loaded.")


def parse_price_row(index: int, raw: Any) -> dict[str, Any]:
    """One row of a price list, checked and typed; a DomainError names the entry."""
    if not isinstance(raw, dict):
        raise _fail(index, raw, "must be an object of price fields.")
    unknown = sorted(set(raw) - KNOWN_ROW_FIELDS)
    if unknown:
        raise _fail(
            index, raw, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(PRICE_FIELDS)}."
        )
    row: dict[str, Any] = {}
    for name in ("provider", "model"):
        value = raw.get(name)
        if not isinstance(value, str) or not value.strip():
            raise _fail(index, raw, f"{name} is required.")
        row[name] = normalise_provider(value) if name == "provider" else value.strip()
    tier = raw.get("service_tier") or "standard"
    if tier not in SERVICE_TIERS:
        raise _fail(index, raw, f"service_tier must be one of {', '.join(SERVICE_TIERS)}.")
    row["service_tier"] = tier
    row["effective_from"] = _moment(index, raw, raw.get("effective_from"))
    for name in PRICE_FIELDS:
        row[name] = _value(index, raw, name, raw.get(name))
    if row["input_per_mtok"] is None:
        raise _fail(index, raw, "input_per_mtok is required.")
    if row["long_context_threshold"] is not None and row["long_input_per_mtok"] is None:
        raise _fail(index, raw, "long_context_threshold needs long_input_per_mtok.")
    return row


def _moment(index: int, raw: Any, value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    moment = parse_datetime(str(value))
    if moment is None:
        day = parse_date(str(value))
        if day is None:
            raise _fail(index, raw, f"effective_from {value!r} is not a date (YYYY-MM-DD).")
        moment = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _value(index: int, raw: Any, name: str, value: Any) -> Any:
    if value in (None, ""):
        if name in _ZERO_DEFAULTS:
            return Decimal(0)
        return "" if name in _TEXT_FIELDS else None
    if name in _TEXT_FIELDS:
        if not isinstance(value, str):
            raise _fail(index, raw, f"{name} must be a string.")
        return value.strip()
    if name in _DATE_FIELDS:
        day = parse_date(str(value))
        if day is None:
            raise _fail(index, raw, f"{name} {value!r} is not a date (YYYY-MM-DD).")
        return day
    if name == "long_context_threshold":
        if isinstance(value, bool) or not str(value).isdigit():
            raise _fail(index, raw, "long_context_threshold must be a whole number of tokens.")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise _fail(index, raw, f'{name} must be a decimal string such as "2.50", not {value!r}.')
    try:
        parsed = Decimal(str(value))
    except ArithmeticError:
        raise _fail(index, raw, f"{name} {value!r} is not a decimal number.") from None
    if not parsed.is_finite() or parsed < 0:
        raise _fail(index, raw, f"{name} must be a non-negative number, not {value!r}.")
    if parsed >= Decimal(10) ** 8:
        raise _fail(index, raw, f"{name} {value!r} is too large; prices are USD per million.")
    if parsed != parsed.quantize(_SMALLEST):
        raise _fail(index, raw, f"{name} {value!r} has more than 10 decimal places.")
    return parsed


def parse_alias(index: int, raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or set(raw) - set(ALIAS_FIELDS):
        raise DomainError(
            f"Alias {index + 1}: must be an object with {', '.join(ALIAS_FIELDS)}. "
            "Nothing was loaded."
        )
    alias = {name: str(raw.get(name) or "").strip() for name in ALIAS_FIELDS}
    for name in ("alias", "target_provider", "target_model"):
        if not alias[name]:
            raise DomainError(f"Alias {index + 1}: {name} is required. Nothing was loaded.")
    alias["provider"] = normalise_provider(alias["provider"]) if alias["provider"] else ""
    alias["target_provider"] = normalise_provider(alias["target_provider"])
    return alias


def read_price_file(path: str) -> PriceList:
    """costmon's own format: JSON (`{"prices": [...], "aliases": [...]}` or a list of rows) or
    CSV with a header row."""
    try:
        with open(path, encoding="utf-8") as handle:
            if path.lower().endswith(".csv"):
                return PriceList(rows=[dict(r) for r in csv.DictReader(handle)], source=path)
            data = json.load(handle, parse_float=Decimal)
    except OSError as exc:
        raise DomainError(f"Cannot read {path}: {exc.strerror}.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DomainError(f"{path} is not valid JSON: {exc}") from None
    return price_list_from_json(data, source=path)


def read_price_list(source: str, format: str) -> PriceList:
    """A price list from a file or an http(s) URL, in costmon's format or a public one."""
    if format == "costmon" and not source.startswith(("http://", "https://")):
        if not Path(source).is_file():
            raise DomainError(f"No file {source}.")
        return read_price_file(source)
    read = read_price_source(source, format=format)
    return PriceList(
        rows=read.rows,
        aliases=read.aliases,
        source=read.source,
        format=format,
        version=read.version,
    )


def price_list_from_json(data: Any, *, source: str) -> PriceList:
    version = ""
    aliases: Any = []
    if isinstance(data, dict):
        version = str(data.get("catalog_version") or "")
        aliases = data.get("aliases") or []
        data = data.get("prices")
    if not isinstance(data, list) or not isinstance(aliases, list):
        raise DomainError(
            f"{source} must hold a list of prices (or an object with a 'prices' list). "
            "Nothing was loaded."
        )
    return PriceList(rows=data, aliases=aliases, source=source, version=version)


# --- the sync -----------------------------------------------------------------------------------


def _snapshot(values: dict[str, Any] | ModelPrice) -> dict[str, str | None]:
    """A row's prices as strings, for comparing and for the change record."""
    get = values.get if isinstance(values, dict) else lambda name: getattr(values, name)
    out: dict[str, str | None] = {}
    for name in RATE_FIELDS:
        value = get(name)
        if value is None:
            out[name] = None
        elif isinstance(value, Decimal):
            out[name] = format_rate(value)
        else:
            out[name] = str(value)
    return out


def prices_sync(
    *,
    price_list: PriceList,
    tenant: Tenant | None = None,
    now: datetime | None = None,
) -> PriceSync:
    """Load a price list into the global catalog (or a tenant's own prices) and record what it
    changed. Every row and alias is checked before anything is written; a bad list is refused
    whole. Loading the same list twice changes nothing."""
    rows = [parse_price_row(i, raw) for i, raw in enumerate(price_list.rows)]
    aliases = [parse_alias(i, raw) for i, raw in enumerate(price_list.aliases)]
    seen: set[tuple[str, str, str, datetime | None]] = set()
    for i, row in enumerate(rows):
        key = (row["provider"], row["model"].lower(), row["service_tier"], row["effective_from"])
        if key in seen:
            raise _fail(i, row, "appears twice in the list (same provider, model and tier).")
        seen.add(key)
    now = now or timezone.now()
    sync = PriceSync(
        tenant=tenant,
        started_at=now,
        source=price_list.source[:500],
        format=price_list.format,
        catalog_version=price_list.version[:100],
    )
    added: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    with unscoped(), transaction.atomic():
        sync.status = PriceSync.Status.UNCHANGED
        sync.save()
        existing = _latest_rows(tenant)
        for row in rows:
            _sync_row(sync, tenant, row, existing, now, added, changed)
        new_rows = [entry.pop("row") for entry in added if "row" in entry]
        ModelPrice.objects.bulk_create(new_rows, batch_size=500)
        fresh = iter(new_rows)
        for entry in added:
            if entry["price_id"] is None:
                entry["price_id"] = next(fresh).pk
        listed = {(r["provider"], r["model"].lower()) for r in rows}
        missing = sorted({(p, m) for p, m, _ in existing} - listed)
        sync.missing = len(missing)
        sync.aliases_added = _sync_aliases(tenant, aliases)
        sync.added, sync.changed = len(added), len(changed)
        if added or changed or sync.aliases_added:
            sync.status = PriceSync.Status.APPLIED
        # Which models the list no longer has: recommendations stop suggesting them.
        sync.details = {"added": added, "changed": changed, "missing": [list(m) for m in missing]}
        sync.save()
        if changed and tenant is None:
            _hold_for_reviewing_tenants(sync)
        # Events that waited for a price get it once this commits.
        schedule_reprice_unpriced(tenant.pk if tenant else None)
        transaction.on_commit(bump_version)
    log.info(
        "prices_synced",
        source=sync.source,
        format=sync.format,
        tenant=tenant.slug if tenant else None,
        added=sync.added,
        changed=sync.changed,
        unchanged=sync.unchanged,
        missing=sync.missing,
    )
    return sync


def _latest_rows(tenant: Tenant | None) -> dict[tuple[str, str, str], ModelPrice]:
    """The newest row of each (provider, model, tier) the owner has."""
    latest: dict[tuple[str, str, str], ModelPrice] = {}
    for price in ModelPrice.objects.unscoped().filter(tenant=tenant).order_by("effective_from"):
        latest[(price.provider, price.model.lower(), price.service_tier)] = price
    return latest


def _sync_row(
    sync: PriceSync,
    tenant: Tenant | None,
    row: dict[str, Any],
    existing: dict[tuple[str, str, str], ModelPrice],
    now: datetime,
    added: list[dict[str, Any]],
    changed: list[dict[str, Any]],
) -> None:
    key = (row["provider"], row["model"].lower(), row["service_tier"])
    label = {"provider": row["provider"], "model": row["model"], "service_tier": key[2]}
    latest = existing.get(key)
    explicit = row.pop("effective_from")
    if explicit is not None:
        # A curated row that names its start: create it, or replace the row with that start.
        current = (
            ModelPrice.objects.unscoped()
            .filter(tenant=tenant, provider=key[0], model=row["model"], service_tier=key[2])
            .filter(effective_from=explicit)
            .first()
        )
        if current is None:
            price = ModelPrice.objects.create(
                tenant=tenant, sync=sync, effective_from=explicit, **row
            )
            added.append({**label, "price_id": price.pk, "new": _snapshot(row)})
            return
        latest = current
    elif latest is None:
        # Created in bulk by the caller (a first load adds a thousand rows); the id follows.
        price = ModelPrice(tenant=tenant, sync=sync, effective_from=EPOCH, **row)
        added.append({**label, "price_id": None, "new": _snapshot(row), "row": price})
        return
    old, new = _snapshot(latest), _snapshot(row)
    if old == new:
        info = {name: row[name] for name in INFO_FIELDS}
        if any(getattr(latest, name) != value for name, value in info.items()):
            ModelPrice.objects.unscoped().filter(pk=latest.pk).update(**info)
        sync.unchanged += 1
        return
    if explicit is not None:
        for name, value in row.items():
            setattr(latest, name, value)
        latest.sync = sync
        latest.save()
        price = latest
    else:
        price = ModelPrice.objects.create(tenant=tenant, sync=sync, effective_from=now, **row)
    changed.append(
        {
            **label,
            "price_id": price.pk,
            "previous_price_id": None if explicit is not None else latest.pk,
            "effective_from": price.effective_from.isoformat(),
            "old": old,
            "new": new,
        }
    )


def _sync_aliases(tenant: Tenant | None, aliases: list[dict[str, str]]) -> int:
    count = 0
    for alias in aliases:
        target = {
            "target_provider": alias["target_provider"],
            "target_model": alias["target_model"],
        }
        if tenant is None:
            _, created = CatalogAlias.objects.update_or_create(
                provider=alias["provider"],
                alias=alias["alias"],
                defaults={**target, "reason": alias["reason"]},
            )
        else:
            with tenant_context(tenant):
                _, created = ModelAlias.objects.update_or_create(
                    tenant=tenant, provider=alias["provider"], alias=alias["alias"], defaults=target
                )
        count += created
    return count


def _hold_for_reviewing_tenants(sync: PriceSync) -> None:
    """Tenants that approve catalog changes themselves keep the old prices for now."""
    PriceChangeHold.objects.bulk_create(
        [
            PriceChangeHold(tenant=tenant, sync=sync)
            for tenant in Tenant.objects.filter(prices_auto_apply=False)
        ]
    )


def price_sync_failed(*, source: str, format: str, error: str) -> PriceSync:
    """Record a sync that could not run (the list was unreachable or invalid), where staff
    look: the admin's list of price syncs."""
    log.warning("prices_sync_failed", source=source, format=format, error=error)
    return PriceSync.objects.create(
        source=source[:500], format=format, status=PriceSync.Status.FAILED, error=error
    )


def price_hold_decide(*, hold: PriceChangeHold, approve: bool, by: str = "") -> bool:
    """Approve (the tenant is charged the new prices from the sync's moment on: its events since
    then are priced again) or reject (it keeps the old prices). Returns False when the hold was
    already decided."""
    status = PriceChangeHold.Status.APPROVED if approve else PriceChangeHold.Status.REJECTED
    if approve:  # refused before the hold is claimed, so it stays pending
        store = event_store()
        store.require_rewrites("Approving a price change (it re-prices events)")
        if isinstance(store, ClickHouseStore):
            outside_transaction("price_hold_decide")
    with unscoped():
        claimed = PriceChangeHold.objects.unscoped().filter(
            pk=hold.pk, status=PriceChangeHold.Status.PENDING
        )
        if not claimed.update(status=status, decided_by=by[:150], decided_at=timezone.now()):
            return False
        hold.refresh_from_db()
    bump_version()
    if approve:
        usage_reprice(tenant=hold.tenant, start=hold.sync.started_at, end=timezone.now())
    return True
