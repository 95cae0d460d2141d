"""The deployment's event store: `COSTMON_EVENT_STORE_URL` unset, PostgreSQL (the default);
`clickhouse://host:9000/costmon`, ClickHouse, with `COSTMON_CLICKHOUSE_SHARDS` listing further
shards (`host:port,host:port`; tenants are spread by id over all of them), and
`COSTMON_CLICKHOUSE_BUFFER` small inserts through its Buffer table."""

from __future__ import annotations

import functools

from django.conf import settings

from usage.eventstore.base import EventStore
from usage.eventstore.chserver import parse_shards
from usage.eventstore.clickhouse import ClickHouseStore
from usage.eventstore.postgres import PostgresStore


@functools.cache
def _store(url: str, shards: str, buffered: bool) -> EventStore:
    if not url:
        return PostgresStore()
    return ClickHouseStore(parse_shards(url, shards), buffered=buffered)


def event_store() -> EventStore:
    """The store raw events go to and are read from (one per configuration, kept)."""
    return _store(
        getattr(settings, "COSTMON_EVENT_STORE_URL", "") or "",
        getattr(settings, "COSTMON_CLICKHOUSE_SHARDS", "") or "",
        bool(getattr(settings, "COSTMON_CLICKHOUSE_BUFFER", False)),
    )


def forget() -> None:
    """Drop the kept stores (tests that change the settings)."""
    _store.cache_clear()
