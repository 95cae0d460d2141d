"""The tenant's dictionary of tag sets: each distinct set of tags is stored once per tenant
(`usage.models.TagSet`) and events hold its id (`tag_set_id`, NULL for an event without tags).

Resolved inside the transaction that stores the events, as `usage.dimensions` does for names:
look the sets up by key, insert the missing ones (ON CONFLICT DO NOTHING, in key order, so
concurrent batches never deadlock and never store a set twice), look them up again.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from usage.known import KnownIds
from usage.models import TagSet

# A tag set as a dictionary key: its (name, value) pairs sorted by name.
Pairs = tuple[tuple[str, str], ...]

# Ids this process has seen committed, per tenant (a known one never goes stale).
_known_ids: KnownIds[Pairs] = KnownIds()


def forget_known_tag_sets() -> None:
    _known_ids.clear()


def pairs_of(tags: Mapping[str, str]) -> Pairs:
    return tuple(sorted(tags.items()))


def tag_set_key(pairs: Pairs) -> uuid.UUID:
    """The set's key: the first 16 bytes of the SHA-256 of `<len>:<name><len>:<value>` per
    pair, sorted by name (code points, which is UTF-8 byte order; migration 0013 computes the
    same in SQL with `COLLATE "C"`). Lengths in characters make the text unambiguous."""
    text = "".join(f"{len(k)}:{k}{len(v)}:{v}" for k, v in pairs)
    return uuid.UUID(bytes=hashlib.sha256(text.encode()).digest()[:16])


def tag_set_ids(*, tenant_id: int, sets: Iterable[Pairs]) -> dict[Pairs, int]:
    """Ids of the tenant's tag sets (each as `pairs_of` its tags), creating the missing ones."""
    known = _known_ids.of(tenant_id)
    found: dict[Pairs, int] = {}
    unknown: dict[uuid.UUID, Pairs] = {}
    for pairs in set(sets):
        pk = known.get(pairs)
        if pk is None:
            unknown[tag_set_key(pairs)] = pairs
        else:
            found[pairs] = pk
    if not unknown:
        return found
    looked_up: dict[Pairs, int] = {}

    def fetch(keys: Sequence[uuid.UUID]) -> None:
        rows = TagSet.objects.for_tenant(tenant_id).filter(key__in=keys).values_list("pk", "key")
        for pk, key in rows:
            looked_up[unknown[key]] = pk

    fetch(list(unknown))
    missing = sorted(key for key, pairs in unknown.items() if pairs not in looked_up)
    if missing:
        TagSet.objects.bulk_create(
            [TagSet(tenant_id=tenant_id, key=k, tags=dict(unknown[k])) for k in missing],
            ignore_conflicts=True,  # another transaction's set: found by the second look-up
        )
        fetch(missing)
    found.update(looked_up)

    _known_ids.remember_on_commit(tenant_id, looked_up)
    return found


def with_tag_set_ids(rows: Sequence[dict[str, Any]]) -> None:
    """Fill each event row's `tag_set_id` from its `tags` (None: no tags), per tenant."""
    by_tenant: dict[int, list[tuple[dict[str, Any], Pairs]]] = {}
    # A batch's events share a few tag sets, each sent in its own dict: sort each once.
    sorted_pairs: dict[tuple[tuple[str, str], ...], Pairs] = {}
    for r in rows:
        tags = r["tags"]
        if tags:
            items = tuple(tags.items())
            pairs = sorted_pairs.get(items)
            if pairs is None:
                pairs = sorted_pairs[items] = tuple(sorted(items))
            by_tenant.setdefault(r["tenant_id"], []).append((r, pairs))
        else:
            r["tag_set_id"] = None
    for tenant_id, tagged in by_tenant.items():
        ids = tag_set_ids(tenant_id=tenant_id, sets=[pairs for _, pairs in tagged])
        for r, pairs in tagged:
            r["tag_set_id"] = ids[pairs]
