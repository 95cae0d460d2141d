"""The tenant's dictionary of names: providers, models, operations, end users and sessions are
stored once per tenant and events hold their ids."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.db.models import Q

from costmon.core.models import Tenant
from usage.ingest import EventIn
from usage.known import KnownIds
from usage.models import Dimension
from usage.rows import DIMENSION_COLUMNS
from usage.storage import dimensions_add

Kind = Dimension.Kind

# Ids this process has seen committed, per tenant (a known one never goes stale).
_known_ids: KnownIds[tuple[int, str]] = KnownIds()


def forget_known_dimensions() -> None:
    _known_ids.clear()


def dimension_ids(
    *, tenant: Tenant | int, wanted: Iterable[tuple[int, str]]
) -> dict[tuple[int, str], int]:
    """Ids of the tenant's dictionary entries, creating the missing ones."""
    tenant_id = tenant if isinstance(tenant, int) else tenant.pk
    found, unknown = _known(tenant_id, wanted)
    if not unknown:
        return found
    added = dimensions_add(tenant_id, unknown)  # PostgreSQL: one statement
    looked_up: dict[tuple[int, str], int] = added if added is not None else _add(tenant_id, unknown)
    found.update(looked_up)

    _known_ids.remember_on_commit(tenant_id, looked_up)
    return found


def dimension_ids_or_new(
    *, tenant_id: int, wanted: Iterable[tuple[int, str]]
) -> tuple[dict[tuple[int, str], int], list[tuple[int, str]]]:
    """The ids this process knows of the entries `wanted`, and the names it does not know
    (sorted), without a query. Each new name has a placeholder in the ids: -n, n its place
    in the list counted from 1. Ingest's one round trip (`usage.newevents`) creates the new
    names in the events' transaction and stores their ids in place of the placeholders."""
    found, unknown = _known(tenant_id, wanted)
    for place, key in enumerate(unknown, start=1):
        found[key] = -place
    return found, unknown


def dimension_placeholders_replace(
    tenant_id: int, rows: Sequence[dict[str, Any]], new: Sequence[tuple[int, str]]
) -> None:
    """Put the ids of the new names (`dimension_ids_or_new`), created by `dimension_ids`, in
    place of their placeholders in `rows` (`usage.rows.event_row`)."""
    if not new:
        return
    ids = dimension_ids(tenant=tenant_id, wanted=new)
    by_placeholder = {-place: ids[key] for place, key in enumerate(new, start=1)}
    for row in rows:
        for column in DIMENSION_COLUMNS:
            value = row[column]
            if value is not None and value < 0:
                row[column] = by_placeholder[value]


def dimension_ids_remember(
    tenant_id: int, new: Sequence[tuple[int, str]], ids: Callable[[], Sequence[int]]
) -> None:
    """Once the current transaction commits, remember the ids of the new names it created
    (`ids`: read then, in the order of `new`)."""
    _known_ids.remember_on_commit(tenant_id, lambda: dict(zip(new, ids(), strict=True)))


def _known(
    tenant_id: int, wanted: Iterable[tuple[int, str]]
) -> tuple[dict[tuple[int, str], int], list[tuple[int, str]]]:
    """(the ids known, the keys unknown in a fixed order, so concurrent batches never
    deadlock)."""
    known = _known_ids.of(tenant_id)
    found: dict[tuple[int, str], int] = {}
    unknown: list[tuple[int, str]] = []
    for key in set(wanted):
        pk = known.get(key)
        if pk is None:
            unknown.append(key)
        else:
            found[key] = pk
    unknown.sort()
    return found, unknown


def _add(tenant_id: int, unknown: list[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """With the ORM (SQLite): look the entries up, create the missing ones, look those up."""
    by_kind: dict[int, list[str]] = defaultdict(list)
    for kind, value in unknown:
        by_kind[kind].append(value)
    looked_up: dict[tuple[int, str], int] = {}

    def fetch() -> None:
        q = Q()
        for kind, values in by_kind.items():
            q |= Q(kind=kind, value__in=values)
        for pk, kind, value in (
            Dimension.objects.for_tenant(tenant_id).filter(q).values_list("pk", "kind", "value")
        ):
            looked_up[(kind, value)] = pk

    fetch()
    missing = [key for key in unknown if key not in looked_up]
    if missing:
        Dimension.objects.bulk_create(
            [Dimension(tenant_id=tenant_id, kind=k, value=v) for k, v in missing],
            ignore_conflicts=True,
        )
        by_kind = defaultdict(list)
        for kind, value in missing:
            by_kind[kind].append(value)
        fetch()
    return looked_up


def dimension_keys(events: Iterable[EventIn]) -> set[tuple[int, str]]:
    """The dictionary entries (kind, name) the events name."""
    keys: set[tuple[int, str]] = set()
    add = keys.add
    # Plain ints: the same keys as the enum's members, hashed without an attribute look-up.
    provider, model, operation, end_user, session = (
        int(k) for k in (Kind.PROVIDER, Kind.MODEL, Kind.OPERATION, Kind.END_USER, Kind.SESSION)
    )
    for e in events:
        add((provider, e.provider))
        add((model, e.model))
        add((operation, e.operation))
        add((end_user, e.end_user))
        if e.session_id:
            add((session, e.session_id))
    return keys
