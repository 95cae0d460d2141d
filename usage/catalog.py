"""Loading the price catalog a tenant is charged from, cached per process.

Prices change rarely and are read on every ingest, so each process keeps the catalog for a
while; a write through `usage.services` bumps a version in the shared cache, which every process
compares on its next batch (one cache GET), so a price edit applies everywhere at once.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from threading import Lock

from django.conf import settings

from costmon.cache import cache_add, cache_get, cache_set
from costmon.tenancy import unscoped
from usage.models import ModelAlias, ModelPrice
from usage.pricing import Alias, Catalog, Price, Rates

VERSION_KEY = "costmon:catalog-version"
_lock = Lock()
# tenant -> (expires, shared version, catalog, when the version was last checked)
_local: dict[int, tuple[float, object, Catalog, float]] = {}


def _version() -> object:
    return cache_get(VERSION_KEY)  # without the cache the TTL alone bounds staleness


def bump_version() -> None:
    """Tell every process that prices or aliases changed."""
    cache_set(VERSION_KEY, uuid.uuid4().hex, None)
    clear_local()


def clear_local() -> None:
    with _lock:
        _local.clear()


def _rates(row: ModelPrice, long: bool = False) -> Rates:
    if long:
        base_in = row.long_input_per_mtok or Decimal(0)
        return Rates(
            input=base_in,
            output=row.long_output_per_mtok
            if row.long_output_per_mtok is not None
            else row.output_per_mtok,
            cached_input=row.long_cached_input_per_mtok
            if row.long_cached_input_per_mtok is not None
            else base_in,
            cache_write=row.long_cache_write_per_mtok
            if row.long_cache_write_per_mtok is not None
            else base_in,
        )
    return Rates(
        input=row.input_per_mtok,
        output=row.output_per_mtok,
        cached_input=row.cached_input_per_mtok
        if row.cached_input_per_mtok is not None
        else row.input_per_mtok,
        cache_write=row.cache_write_per_mtok
        if row.cache_write_per_mtok is not None
        else row.input_per_mtok,
    )


def price_from_row(row: ModelPrice) -> Price:
    return Price(
        id=row.pk,
        tenant_id=row.tenant_id,
        provider=row.provider,
        model=row.model,
        match_pattern=row.match_pattern,
        effective_from=row.effective_from,
        rates=_rates(row),
        per_request=row.per_request,
        long_context_threshold=row.long_context_threshold,
        long_rates=_rates(row, long=True) if row.long_context_threshold is not None else None,
    )


def load_catalog(tenant_id: int) -> Catalog:
    with unscoped():
        rows = list(ModelPrice.objects.unscoped().filter(tenant_id=tenant_id)) + list(
            ModelPrice.objects.unscoped().filter(tenant__isnull=True)
        )
        aliases = [
            Alias(a.provider, a.alias, a.target_provider, a.target_model)
            for a in ModelAlias.objects.for_tenant(tenant_id)
        ]
    return Catalog([price_from_row(r) for r in rows], aliases)


def catalog_for(tenant_id: int) -> Catalog:
    """The tenant's catalog. With Redis, reloaded only when a price write bumped the shared
    version (so pricing does no SQL); without it, every COSTMON_CATALOG_TTL_SECONDS."""
    shared = bool(settings.REDIS_URL)
    now = time.monotonic()
    with _lock:
        hit = _local.get(tenant_id)
    if shared and hit is not None and now - hit[3] < settings.COSTMON_SHARED_RECHECK_MS / 1000:
        return hit[2]  # checked against the shared version a moment ago
    version = _version()
    if shared and version is None:
        cache_add(VERSION_KEY, uuid.uuid4().hex)  # first use since Redis started
        version = _version()
    if hit is not None and hit[1] == version and (hit[0] > now or (shared and version is not None)):
        with _lock:
            _local[tenant_id] = (hit[0], version, hit[2], now)
        return hit[2]
    catalog = load_catalog(tenant_id)
    with _lock:
        _local[tenant_id] = (now + settings.COSTMON_CATALOG_TTL_SECONDS, version, catalog, now)
    return catalog
