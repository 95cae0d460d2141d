"""Ids of a tenant's dictionary entries (names, tag sets) this process has seen committed.

An entry, once committed, stays for as long as its tenant (a usage reset keeps the
dictionaries), so a known id never goes stale and a batch of known names needs no query.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from django.db import transaction

K = TypeVar("K")


class KnownIds(Generic[K]):
    """{tenant id: {key: id}}, each tenant's map started over past `per_tenant` entries (many
    end users, a tag with a value per call)."""

    def __init__(self, per_tenant: int = 100_000) -> None:
        self.per_tenant = per_tenant
        self._by_tenant: dict[int, dict[K, int]] = {}

    def of(self, tenant_id: int) -> Mapping[K, int]:
        return self._by_tenant.get(tenant_id, {})

    def remember_on_commit(
        self, tenant_id: int, ids: Mapping[K, int] | Callable[[], Mapping[K, int]]
    ) -> None:
        """Keep `ids` once the current transaction commits: entries created in a transaction
        that rolls back never existed. `ids` may be a function, called after the commit (ids
        that a pipeline's statement returns, read once the pipeline is done)."""

        def remember() -> None:
            found = ids() if callable(ids) else ids
            mine = self._by_tenant.setdefault(tenant_id, {})
            if len(mine) + len(found) > self.per_tenant:
                mine.clear()
            mine.update(found)

        # Ids read after the commit: should that fail, the batch is stored all the same (the
        # names are looked up again next time), logged rather than raised.
        transaction.on_commit(remember, robust=callable(ids))

    def clear(self) -> None:
        self._by_tenant.clear()
