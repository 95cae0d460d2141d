"""Reservations held in PostgreSQL, for checks that cannot use the Redis counters.

While the counters are trusted, the check script holds a reservation in Redis by itself. While
they are not (Redis away, or its counters not rebuilt since it started), a check that reserves
takes the tenant's reservation lock in PostgreSQL (`budgets.storage`), counts what is held
(rows here, and holds still in Redis when Redis answers) and then the spend (rollups), and
writes one row per hard budget. Such checks of one tenant run one at a time, so together they cannot overshoot a hard
budget by more than one estimate. The usage event that follows deletes the rows; rows past
their expiry no longer count; the counter rebuild moves the live rows into Redis, under the
same lock, before checks trust the counters again.

Holds are read before spend: an event settling a hold between the two reads is then counted
twice (refusing too much for a moment), never not at all.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from budgets import storage
from budgets.models import ReservationHold


def hold_name(budget_id: int, window_key: str, end_user: str = "") -> str:
    """Names one budget's period (and end user): Redis holds it at `cm:{<tenant>}:r:<name>`."""
    return f"{budget_id}:{window_key}" + (f":{end_user}" if end_user else "")


def redis_hold_key(tenant_id: int, name: str) -> str:
    return f"cm:{{{tenant_id}}}:r:{name}"


def held_in_database(*, tenant_id: int, names: Sequence[str], now: datetime) -> dict[str, int]:
    """Nano-USD held per hold name, by unexpired rows."""
    if not names:
        return {}
    rows = (
        ReservationHold.objects.for_tenant(tenant_id)
        .filter(hold__in=list(names), expires_at__gt=now)
        .values_list("hold")
        .annotate(total=Sum("amount_nanos"))
        .order_by()
    )
    return {name: int(total) for name, total in rows}


def held_in_redis(r: Any, *, tenant_id: int, names: Sequence[str]) -> dict[str, int]:
    """Nano-USD held per hold name in Redis (expired members included until a check prunes
    them: counting them refuses a little too much, never too little)."""
    if not names:
        return {}
    values = r.mget([redis_hold_key(tenant_id, n) + ":sum" for n in names])
    return {n: max(0, int(v or 0)) for n, v in zip(names, values, strict=True)}


def holds_create(
    *,
    tenant_id: int,
    reservation_id: str,
    event_id: str,
    names: Sequence[str],
    amount_nanos: int,
    expires_at: datetime,
) -> None:
    ReservationHold.objects.bulk_create(
        [
            ReservationHold(
                tenant_id=tenant_id,
                reservation_id=reservation_id,
                event_id=event_id,
                hold=name,
                amount_nanos=amount_nanos,
                expires_at=expires_at,
            )
            for name in names
        ]
    )


def holds_settle(
    *, tenant_id: int, reservation_ids: Sequence[str], event_ids: Sequence[str]
) -> int:
    """Delete the holds these usage events settle (by reservation id, or by the event id the
    check was given); the number of rows deleted. Call in the tenant's context."""
    if not reservation_ids and not event_ids:
        return 0
    return storage.holds_delete_settled(
        tenant_id=tenant_id, reservation_ids=reservation_ids, event_ids=event_ids
    )


def holds_expire(*, now: datetime | None = None) -> int:
    """Delete expired holds, every tenant (they no longer count already). Staff code."""
    return (
        ReservationHold.objects.unscoped()
        .filter(expires_at__lte=now or timezone.now())
        ._raw_delete(ReservationHold.objects.db)
    )


def queue_holds_into_redis(r: Any, pipe: Any, *, tenant_id: int, now: datetime) -> list[int]:
    """Queue on `pipe` the commands that hold the tenant's live PostgreSQL reservations in
    Redis, as the check script would have (a reservation Redis already has is left alone);
    return the ids of the rows to delete once `pipe` has run. Call holding the reservation
    lock, in the tenant's context."""
    rows = list(
        ReservationHold.objects.for_tenant(tenant_id).values_list(
            "pk", "reservation_id", "event_id", "hold", "amount_nanos", "expires_at"
        )
    )
    if not rows:
        return []
    by_reservation: dict[str, list[tuple[str, str, int, datetime]]] = defaultdict(list)
    for _pk, res_id, event_id, name, amount, expires_at in rows:
        if expires_at > now:
            by_reservation[res_id].append((event_id, name, amount, expires_at))
    prefix = f"cm:{{{tenant_id}}}"
    res_ids = list(by_reservation)
    known = r.pipeline(transaction=False)
    for res_id in res_ids:
        known.exists(f"{prefix}:res:{res_id}")
    hold_ms = (settings.COSTMON_RESERVATION_SECONDS + 3600) * 1000
    for res_id, exists in zip(res_ids, known.execute(), strict=True):
        if exists:
            continue
        holds = by_reservation[res_id]
        event_id, _, amount, expires_at = holds[0]
        ttl_ms = max(1, int((expires_at - now).total_seconds() * 1000))
        keys = []
        for _, name, _, _ in holds:
            key = redis_hold_key(tenant_id, name)
            keys.append(key)
            pipe.zadd(key, {f"{res_id}:{amount}": int(expires_at.timestamp() * 1000)})
            pipe.incrby(f"{key}:sum", amount)
            pipe.pexpire(key, hold_ms)
            pipe.pexpire(f"{key}:sum", hold_ms)
        pipe.set(f"{prefix}:res:{res_id}", "|".join([str(amount), *keys]), px=ttl_ms + 3_600_000)
        if event_id:
            pipe.set(f"{prefix}:resev:{event_id}", res_id, px=ttl_ms + 3_600_000)
    return [row[0] for row in rows]


def holds_delete(*, tenant_id: int, ids: Sequence[int]) -> int:
    if not ids:
        return 0
    return (
        ReservationHold.objects.for_tenant(tenant_id)
        .filter(pk__in=list(ids))
        ._raw_delete(ReservationHold.objects.db)
    )
