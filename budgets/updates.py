"""Counter updates: what each ingest batch adds to the Redis spend counters, exactly once.

The batch's own transaction writes a `CounterUpdate` row with the amounts (`batch_pending`,
receiving `usage.signals.batch_committing`). Right after the commit the same process applies
them (`record_batch`, receiving `usage.signals.batch_recorded`). The script that adds the
amounts also sets a marker for the update's id (`cm:{<tenant>}:cu:<id>`) and changes nothing
when the marker is already there, so an update is never counted twice. If the process dies
between the commit and the apply, the row is still there: the sweeper (`counter_updates_sweep`,
every 20 seconds) applies the rows whose marker is missing and deletes the rows that are done
(their markers expire a while later, so a late apply of their batch still finds them). A counter
rebuild applies the pending rows in the script that sets the counters from PostgreSQL
(`budgets/lua/rebuild.lua`).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import structlog
from django.conf import settings
from django.utils import timezone

from budgets import config as tenant_config
from budgets import counters, reservations
from budgets import redis as bredis
from budgets.counter_update import MARKER_KEEP_SECONDS, SEP, Update, hash_args, marker_key
from budgets.emergency_stop import emergency_stop_check
from budgets.models import CounterUpdate
from budgets.signals import usage_counted, usage_counted_send
from budgets.storage import counter_update_insert
from costmon.core.models import Tenant
from costmon.core.periods import tenant_zone
from costmon.core.tenancy import tenant_context, unscoped
from usage.signals import RecordedBatch, RecordedRow

log = structlog.get_logger(__name__)

MARKER_TTL_SECONDS = 3600
# An update older than this is not applied from its row any more (its marker may have
# expired): the tenant's counters are rebuilt from PostgreSQL instead.
REBUILD_AFTER = timedelta(minutes=30)
ACTIVE_KEY = "cm:active"  # tenants whose updates the sweeper saw, scored by when (epoch s)

_RECORD = bredis.script_file("record")
_pending = threading.local()


def update_of(tenant: Tenant, rows: Sequence[RecordedRow]) -> Update:
    """The counters' share of freshly stored rows (a `RecordedBatch`'s)."""
    conf = tenant_config.for_tenant(tenant.pk)
    tz = tenant_zone(tenant)
    tag_names = tuple(sorted(conf.tag_names))
    no_tags = (None,) * len(tag_names)
    # Events of a batch share a few hours, names and tag values but spread over many end
    # users: sum them per group of everything but the end user, and per end user and hour
    # apart, then name the counter fields once per group (by the number of the UTC hour).
    groups: dict[tuple[Any, ...], int] = defaultdict(int)
    users: dict[tuple[int, str], int] = defaultdict(int)
    for row in rows:
        cost = row.cost_nanos
        if cost:
            # By the hour of the rollup the event lands in, as a rebuild from the rollups and
            # the database's answers count it (they differ only in zones with half hours).
            number = int(row.occurred_at.timestamp()) // 3600
            tags = row.tags
            groups[
                (
                    number,
                    row.provider,
                    row.model,
                    row.operation,
                    row.api_key_id,
                    tuple(map(tags.get, tag_names)) if tags else no_tags,
                )
            ] += cost
            users[(number, row.end_user)] += cost
    # (local day, local hour, UTC day, UTC hour) by the number of the UTC hour: time zone
    # arithmetic per event would cost more than the rest of the loops.
    hours: dict[int, tuple[date, int, date, int]] = {}
    for number, _ in users:
        if number not in hours:
            utc = datetime.fromtimestamp(number * 3600, UTC)
            local = utc.astimezone(tz)
            hours[number] = (local.date(), local.hour, utc.date(), utc.hour)
    days: dict[date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    utc_days: dict[date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (number, provider, model, operation, api_key_id, tag_values), cost in groups.items():
        day, hour, utc_day, utc_hour = hours[number]
        fields = days[day]
        for name in counters.event_fields(
            provider=provider,
            model=model,
            operation=operation,
            end_user=None,
            api_key_id=api_key_id,
            tags={n: v for n, v in zip(tag_names, tag_values, strict=True) if v is not None},
            tag_names=conf.tag_names,
            local_hour=hour,
        ):
            fields[name] += cost
        total = utc_days[utc_day]
        total["t"] += cost
        total[f"h:{utc_hour:02d}"] += cost
    for (number, end_user), cost in users.items():
        days[hours[number][0]][counters.end_user_field(end_user)] += cost
    return Update(
        days={d: dict(f) for d, f in days.items()},
        utc_days={d: dict(f) for d, f in utc_days.items()},
        settle=_settled_by(rows),
    )


def _settled_by(rows: Sequence[RecordedRow]) -> list[str]:
    """The reservations these events settle: "r", reservation id, or "e", the event id a
    check may have been given."""
    settle: list[str] = []
    for row in rows:
        if row.reservation_id:
            settle += ["r", row.reservation_id]
        else:
            settle += ["e", row.event_id]
    return settle


@dataclass(frozen=True)
class Applied:
    applied: bool  # False: the update's marker said it was applied before
    settled: int  # reservations settled in Redis
    trusted: bool  # the tenant's counters were trusted (rebuilt since Redis started)


def apply_update(r: Any, tenant_id: int, update: Update, update_id: int | None) -> Applied:
    """Add an update to the counters and settle its reservations, in one script; at most
    once per `update_id`."""
    args: list[Any] = [
        counters.DAY_TTL_SECONDS,
        marker_key(tenant_id, update_id) if update_id is not None else "",
        MARKER_TTL_SECONDS,
        counters.ok_key(tenant_id),
        *hash_args(tenant_id, update),
        f"cm:{{{tenant_id}}}",
        "".join(f"{part}{SEP}" for part in update.settle),
    ]
    applied, settled, trusted = _RECORD(r, args)
    return Applied(bool(applied), int(settled), bool(trusted))


# --- the ingest receivers (connected in BudgetsConfig.ready) ---------------------------------


def batch_preparing(sender: Any, *, tenant: Tenant, **kwargs: Any) -> None:
    """`batch_preparing`: before the ingest transaction, load the tenant's configuration that
    `batch_pending` reads in it (remembered: no query, and no Redis round trip when checked
    a moment ago)."""
    if settings.REDIS_URL:
        tenant_config.for_tenant(tenant.pk)


def batch_pending(sender: Any, *, batch: RecordedBatch, **kwargs: Any) -> None:
    """`batch_committing`: in the ingest transaction, before it commits, write the batch's
    counter update, so a process that dies right after the commit leaves it for the sweeper."""
    if not settings.REDIS_URL:  # no counters (the embedded default), and no row to sweep
        usage_counted.send(sender=CounterUpdate, tenant_id=batch.tenant.pk, in_ingest=True)
        return
    update = update_of(batch.tenant, batch.rows)
    _pending.value = (batch, counter_update_insert(batch.tenant.pk, update.to_json()), update)


def record_batch(sender: Any, *, batch: RecordedBatch, **kwargs: Any) -> None:
    """`batch_recorded`: after an ingest commit, add the batch's spend to the counters, settle
    the reservations its events carry, and trip the emergency stop if a rule's threshold is now
    passed."""
    tenant, rows = batch.tenant, batch.rows
    conf = tenant_config.for_tenant(tenant.pk)
    applied: Applied | None = None
    update_id: int | None = None
    if settings.REDIS_URL:
        pending, _pending.value = getattr(_pending, "value", None), None
        if pending is not None and pending[0] is batch:
            update_id, update = pending[1](), pending[2]
        else:
            update = update_of(tenant, rows)
        r = bredis.client()
        if r is not None:
            try:
                counters.untrust_after_outage(r)
                applied = apply_update(r, tenant.pk, update, update_id)
            except bredis.RedisError as exc:
                bredis.failed(exc)
        if applied is None:
            # Usage is stored and its update waits in PostgreSQL; until the counters are
            # rebuilt (within a minute), checks read PostgreSQL.
            counters.mark_stale(tenant.pk)
        # Reservations made while the counters could not be used are held in PostgreSQL.
        settle_in_database = applied is None or not applied.trusted
    else:  # no counters: every reservation is held in the database
        update, settle_in_database = Update(settle=_settled_by(rows)), True
    if settle_in_database:
        reservations.holds_settle(
            tenant_id=tenant.pk,
            reservation_ids=update.reservation_ids(),
            event_ids=update.event_ids(),
        )
        if applied is not None and update_id is not None:
            _settle_moved_holds(tenant.pk, update, update_id)
    if conf.stop_rules:
        emergency_stop_check(tenant=tenant, rules=conf.stop_rules)


def _settle_moved_holds(tenant_id: int, update: Update, update_id: int) -> None:
    """A counter rebuild may have moved this batch's holds from PostgreSQL into Redis between
    its counter update (counters not trusted yet) and the holds' delete (ingest's lock ended
    with its commit). If the counters are trusted now, settle in Redis again: the update's
    marker is set, so only its reservations are settled (settling twice changes nothing)."""
    r = bredis.client()
    if r is None:
        return
    try:
        if counters.counters_trusted(r, tenant_id):
            apply_update(r, tenant_id, update, update_id)
    except bredis.RedisError as exc:
        bredis.failed(exc)  # the holds expire with their reservation


# --- the sweeper ----------------------------------------------------------------------------


@dataclass
class SweepReport:
    applied: int = 0  # updates whose process died before applying them
    removed: int = 0  # rows done with
    tenants: int = 0


def counter_updates_sweep(*, min_age_seconds: float = 5, limit: int = 5000) -> SweepReport:
    """Apply the counter updates whose process died between its commit and the apply, and
    delete the rows of those done.

    Each tenant is swept holding its ingest lock exclusively, so no batch commits meanwhile.
    Ingest's lock ends with its commit: an update without a marker is one whose process died
    or (rarely, past `min_age_seconds`) has not applied it yet; applied here, its marker makes
    the process's own apply change no counter. Rows younger than `min_age_seconds` are left
    alone (their process is about to apply them)."""
    report = SweepReport()
    r = bredis.client()
    if r is None:
        return report
    cutoff = timezone.now() - timedelta(seconds=min_age_seconds)
    with unscoped():
        found = list(
            CounterUpdate.objects.unscoped()
            .filter(created_at__lte=cutoff)
            .order_by("id")
            .values_list("tenant_id", "id")[:limit]
        )
    by_tenant: dict[int, list[int]] = defaultdict(list)
    for tenant_id, update_id in found:
        by_tenant[tenant_id].append(update_id)
    try:
        for tenant_id, ids in by_tenant.items():
            with tenant_context(tenant_id), counters.ingest_lock(tenant_id, shared=False):
                applied, removed = settle_updates(r, tenant_id, ids)
            report.applied += applied
            report.removed += removed
            report.tenants += 1
        if by_tenant:
            now = timezone.now().timestamp()
            r.zadd(ACTIVE_KEY, {str(t): now for t in by_tenant})
    except bredis.RedisError as exc:
        bredis.failed(exc)
    if report.applied:
        log.warning("counter_updates_recovered", **report.__dict__)
    return report


def settle_updates(r: Any, tenant_id: int, ids: list[int] | None = None) -> tuple[int, int]:
    """Apply the tenant's updates `ids` (all pending ones if None) that are not applied yet,
    then delete their rows and markers; (applied now, rows removed). Call in the tenant's
    context, holding its ingest lock exclusively (see `counter_updates_sweep`)."""
    rows = CounterUpdate.objects.for_tenant(tenant_id)
    if ids is None:
        ids = list(rows.order_by("id").values_list("id", flat=True))
    if not ids:
        return 0, 0
    pipe = r.pipeline(transaction=False)
    for update_id in ids:
        pipe.exists(marker_key(tenant_id, update_id))
    done = [i for i, marked in zip(ids, pipe.execute(), strict=True) if marked]
    missing = [i for i in ids if i not in set(done)]
    applied = 0
    old = timezone.now() - REBUILD_AFTER
    for update_id, payload, created_at in rows.filter(pk__in=missing).values_list(
        "id", "payload", "created_at"
    ):
        if created_at < old:
            counters.mark_stale(tenant_id)  # the rebuild absorbs it
            continue
        update = Update.from_json(payload)
        result = apply_update(r, tenant_id, update, update_id)
        if not result.trusted:
            reservations.holds_settle(
                tenant_id=tenant_id,
                reservation_ids=update.reservation_ids(),
                event_ids=update.event_ids(),
            )
        applied += int(result.applied)
        done.append(update_id)
    removed = rows.filter(pk__in=done).delete()[0] if done else 0
    if removed:
        usage_counted_send(tenant_id)
    # Markers go after their rows (a marker without its row is harmless, not the reverse),
    # and only after a while: the batch of an update applied here may still apply it.
    if done:
        keep_markers(r, tenant_id, done)
    return applied, removed


def keep_markers(r: Any, tenant_id: int, update_ids: list[int]) -> None:
    """Let the markers of these updates (rows deleted) expire in a while, not at once."""
    pipe = r.pipeline(transaction=False)
    for update_id in update_ids:
        pipe.expire(marker_key(tenant_id, update_id), MARKER_KEEP_SECONDS)
    pipe.execute()
