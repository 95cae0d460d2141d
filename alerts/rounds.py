"""Rounds of rule evaluation, one tenant at a time, and which tenants are due.

Beat's tasks only dispatch (`rounds_due`): the due tenants go out in tasks of a few each
(`alerts.tasks.evaluate_tenant_rules` -> `rule_round_run` per tenant), so any number of workers
share a round. A tenant's round first claims the tenant's `RuleRound` row with a conditional
update (a lease with an expiry): a second round of the same tenant while one runs does nothing,
and one whose worker died is taken over when its lease expires. Alerts themselves are claimed once per
(rule, scope, period, level) in `alerts.services.alert_raise`, so even two rounds that did
overlap (a lease outlived) notify once.

What a frequent round skips, and why no alert is missed. Each frequent rule's conditions are a
function of the tenant's usage (rollups and spend counters), its rules and budgets, its time
zone, the price syncs of the last day, and the calendar windows `now` falls in (today, this
week, this month, a budget's period or rolling days: every one of them starts and ends at a
local midnight). Reminders add one more input: a firing alert's cooldown. A tenant is
evaluated when any input may have moved since its last round started:
- its usage changed: ingest (`batch_committing`, in the batch's transaction), a bulk load or
  a rewrite marks it dirty (`rounds_mark_changed`); the claim clears the mark before the round
  reads anything, so a batch is either seen by the round or marks it again; a batch committed
  before the claim whose counter update may not be applied yet leaves `counters_pending` set;
- spend counter updates were pending for it (a process died between its commit and its
  mark): due at every dispatch while they are, and once more after (`counters_pending`); a
  counter correction (drift repaired) since its last round;
- its rules, budgets, time zone or the price syncs it reads changed (`fingerprint`);
- time: the next local midnight, the earliest cooldown expiry of its firing alerts, and at the
  latest MAX_AGE after its last round (a safety net for inputs outside this list);
- its last round never finished (the lease expired) or a rule failed in it.
Otherwise the evaluators would compute exactly the conditions of the last round, which are
already raised and claimed: skipping changes nothing but `Alert.last_seen_at`, which then
says when a round last evaluated the alert.

Hourly rules (projections, spikes, anomalies) move with the clock: every tenant with such
rules is due at every hourly dispatch.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from django.db import connection, transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from alerts.models import Alert, AlertRule, RuleRound
from alerts.rules import FREQUENT_KINDS, HOURLY_KINDS
from alerts.services import EvaluationReport, tenant_rules_evaluate
from budgets.models import Budget, CounterCorrection, CounterUpdate
from costmon.core.models import Tenant
from costmon.core.periods import local_midnight, tenant_zone
from costmon.core.tenancy import raw_cursor, tenant_context, unscoped
from usage.models import PriceSync

log = structlog.get_logger(__name__)

FREQUENT, HOURLY = RuleRound.Cadence.FREQUENT.value, RuleRound.Cadence.HOURLY.value
KINDS: dict[str, tuple[str, ...]] = {
    FREQUENT: tuple(str(k) for k in FREQUENT_KINDS),
    HOURLY: tuple(str(k) for k in HOURLY_KINDS),
}
LEASE = timedelta(minutes=5)  # a round still running after this is taken to be dead
QUEUED_FOR = timedelta(minutes=5)  # a queued round not started by then was lost: queue again
MAX_AGE = timedelta(hours=1)  # every tenant's frequent rules run at least this often
_SPREAD_MINUTES = 10  # tenants' MAX_AGE rounds spread over this many minutes


@dataclass(frozen=True)
class Due:
    tenant_id: int
    fingerprint: str


# --- dispatching ------------------------------------------------------------------------------


def rounds_due(*, cadence: str, now: datetime | None = None) -> list[Due]:
    """The tenants whose round of `cadence` is due now, marked queued (send each one's task,
    or `rounds_unqueue` the ones that could not be sent)."""
    now = now or timezone.now()
    kinds = KINDS[cadence]
    with unscoped():
        rules: dict[int, list[str]] = defaultdict(list)
        for tenant_id, kind, count, changed in (
            AlertRule.objects.unscoped()
            .filter(is_active=True, kind__in=kinds)
            .values_list("tenant_id", "kind")
            .annotate(n=Count("id"), changed=Max("updated_at"))
            .order_by("tenant_id", "kind")
        ):
            rules[tenant_id].append(f"{kind}:{count}:{changed.isoformat()}")
        if not rules:
            return []
        states = {
            s.tenant_id: s for s in RuleRound.objects.unscoped().filter(cadence=cadence).iterator()
        }
        missing = [RuleRound(tenant_id=t, cadence=cadence) for t in rules if t not in states]
        if missing:
            RuleRound.objects.bulk_create(missing, ignore_conflicts=True)
        if cadence == HOURLY:
            due = [
                Due(t, "")
                for t in rules
                if t not in states or not _busy(states[t], now)  # time alone makes them due
            ]
        else:
            due, pending = _frequent_due(rules, states, now)
            _remember_pending(pending, due)
        RuleRound.objects.unscoped().filter(
            cadence=cadence, tenant_id__in=[d.tenant_id for d in due]
        ).update(queued_at=now)
    log.info("rule_rounds_due", cadence=cadence, tenants=len(rules), due=len(due))
    return due


def rounds_unqueue(*, cadence: str, tenant_ids: Iterable[int]) -> None:
    """These tenants' tasks were not sent: the next dispatch may queue them again."""
    with unscoped():
        RuleRound.objects.unscoped().filter(cadence=cadence, tenant_id__in=list(tenant_ids)).update(
            queued_at=None
        )


def _busy(state: RuleRound, now: datetime) -> bool:
    """A round of the tenant runs (its lease holds) or waits in the queue."""
    running = state.lease_until is not None and state.lease_until > now
    queued = state.queued_at is not None and state.queued_at > now - QUEUED_FOR
    return running or queued


def _frequent_due(
    rules: dict[int, list[str]], states: dict[int, RuleRound], now: datetime
) -> tuple[list[Due], set[int]]:
    """(the tenants due, the tenants with spend counter updates pending now)."""
    tenant_ids = list(rules)
    zones = dict(Tenant.objects.filter(pk__in=tenant_ids).values_list("pk", "timezone"))
    budgets = {
        t: f"{n}:{changed.isoformat()}"
        for t, n, changed in Budget.objects.unscoped()
        .values("tenant_id")
        .annotate(n=Count("id"), changed=Max("updated_at"))
        .values_list("tenant_id", "n", "changed")
    }
    # The syncs `evaluate_price_changed` reads: new ones, and ones leaving its day.
    syncs = (
        PriceSync.objects.filter(started_at__gte=now - timedelta(days=1))
        .values("tenant_id")
        .annotate(n=Count("id"), last=Max("id"))
        .values_list("tenant_id", "n", "last")
    )
    prices: dict[int | None, str] = {t: f"{n}:{last}" for t, n, last in syncs}
    pending = set(CounterUpdate.objects.unscoped().values_list("tenant_id", flat=True).distinct())
    corrected = dict(
        CounterCorrection.objects.unscoped()
        .filter(corrected_at__gte=now - MAX_AGE)
        .values("tenant_id")
        .annotate(last=Max("corrected_at"))
        .values_list("tenant_id", "last")
    )
    due = []
    for tenant_id, parts in rules.items():
        kinds = {part.split(":", 1)[0] for part in parts}
        seen = [*parts, zones.get(tenant_id, "")]
        if AlertRule.Kind.BUDGET in kinds:
            seen.append(f"budgets:{budgets.get(tenant_id, '')}")
        if AlertRule.Kind.PRICE_CHANGED in kinds:
            seen.append(f"prices:{prices.get(None, '')}:{prices.get(tenant_id, '')}")
        fingerprint = hashlib.blake2b("|".join(seen).encode(), digest_size=16).hexdigest()
        state = states.get(tenant_id)
        if state is None or _frequent_round_due(
            state,
            fingerprint=fingerprint,
            counters_pending=tenant_id in pending,
            corrected_at=corrected.get(tenant_id),
            now=now,
        ):
            due.append(Due(tenant_id, fingerprint))
    return due, pending


def _frequent_round_due(
    state: RuleRound,
    *,
    fingerprint: str,
    counters_pending: bool,
    corrected_at: datetime | None,
    now: datetime,
) -> bool:
    if _busy(state, now):
        return False  # the round that runs or waits reads everything afresh
    started, finished = state.started_at, state.finished_at
    if started is None or finished is None or finished < started:
        return True  # never ran, or its last round died
    return (
        state.dirty_since is not None
        or state.fingerprint != fingerprint
        or counters_pending
        or state.counters_pending
        or (corrected_at is not None and corrected_at >= started)
        or state.due_at is None
        or state.due_at <= now
    )


def _remember_pending(pending: set[int], due: list[Due]) -> None:
    """A tenant whose counter updates were pending is due once more after they are gone: the
    round then starts after the sweeper applied them."""
    RuleRound.objects.unscoped().filter(
        cadence=FREQUENT, tenant_id__in=pending, counters_pending=False
    ).update(counters_pending=True)
    settled = [d.tenant_id for d in due if d.tenant_id not in pending]
    if settled:
        RuleRound.objects.unscoped().filter(
            cadence=FREQUENT, tenant_id__in=settled, counters_pending=True
        ).update(counters_pending=False)


# --- marks ------------------------------------------------------------------------------------


def rounds_mark_changed_in_batch(*, tenant_id: int) -> None:
    """`rounds_mark_changed` inside an ingest batch's transaction, when there are no spend
    counters (no Redis; with counters, the batch's pending counter update keeps the tenant due
    and the sweeper marks it once applied, `alerts.receivers.usage_counted`): the statement is
    sent without waiting for its answer, so on PostgreSQL it rides in the transaction's last
    round trip instead of costing one of its own after the commit."""
    sql = (
        f"UPDATE {RuleRound._meta.db_table} SET dirty_since = %s "  # noqa: S608 - our table
        "WHERE tenant_id = %s AND cadence = %s AND dirty_since IS NULL"
    )
    params: list[Any] = [timezone.now(), tenant_id, FREQUENT]
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
        return
    # psycopg's own cursor (RLS settings synced first): no Django cursor wrapper per batch,
    # and the statement is prepared once per connection.
    with raw_cursor(connection) as cursor:
        cursor.execute(sql, params, prepare=True)


def rounds_mark_changed(*, tenant_id: int) -> None:
    """The tenant's usage changed: its next frequent round is due. One statement that writes
    only the first time after a round (it stays marked until a round claims it)."""
    with tenant_context(tenant_id):
        RuleRound.objects.for_tenant(tenant_id).filter(
            cadence=FREQUENT, dirty_since__isnull=True
        ).update(dirty_since=timezone.now())


# --- a tenant's round -------------------------------------------------------------------------


def rule_round_run(
    *, tenant_id: int, cadence: str, fingerprint: str = "", now: datetime | None = None
) -> EvaluationReport | None:
    """Evaluate the tenant's rules of `cadence` once; None when another round of the tenant
    holds its lease (this one is skipped)."""
    now = now or timezone.now()
    token = uuid.uuid4().hex
    with tenant_context(tenant_id):
        rows = RuleRound.objects.for_tenant(tenant_id).filter(cadence=cadence)
        claim = {
            "lease_until": now + LEASE,
            "lease_token": token,
            "started_at": now,
            "queued_at": None,
            # Cleared before anything is read: usage stored after this marks it again.
            "dirty_since": None,
        }
        if fingerprint:
            claim["fingerprint"] = fingerprint
        free = Q(lease_until__isnull=True) | Q(lease_until__lte=now)
        with transaction.atomic():
            _bookkeeping_only()
            claimed = rows.filter(free).update(**claim)
        if not claimed and not rows.exists():
            RuleRound.objects.bulk_create(
                [RuleRound(tenant_id=tenant_id, cadence=cadence)], ignore_conflicts=True
            )
            claimed = rows.filter(free).update(**claim)
        if not claimed:
            rows.filter(queued_at__isnull=False).update(queued_at=None)
            log.info("rule_round_skipped", tenant=tenant_id, cadence=cadence, reason="running")
            return None
        try:
            # One transaction, one commit (a commit waits for the disk: 4 ms here) for the
            # round's writes; its notifications are sent once it commits.
            with transaction.atomic():
                tenant = Tenant.objects.get(pk=tenant_id)
                report = EvaluationReport()
                failed = tenant_rules_evaluate(
                    tenant=tenant, kinds=KINDS[cadence], now=now, report=report
                )
                done: dict[str, Any] = {
                    "lease_until": None,
                    "finished_at": max(timezone.now(), now),
                    "due_at": next_due(tenant=tenant, kinds=KINDS[cadence], now=now),
                }
                if failed:
                    done["dirty_since"] = now  # its failed rules are tried at the next dispatch
                if cadence == FREQUENT and _counters_pending(tenant_id):
                    # A batch committed before the claim may not be in the counters read:
                    # due once more after its update is applied (`_remember_pending`).
                    done["counters_pending"] = True
                rows.filter(lease_token=token).update(**done)
                if not (report.notified or report.resolved):
                    _bookkeeping_only()  # no alert claimed: nothing a crash could send twice
        except BaseException:
            rows.filter(lease_token=token).update(lease_until=None, dirty_since=now)
            raise
    return report


def _counters_pending(tenant_id: int) -> bool:
    return CounterUpdate.objects.unscoped().filter(tenant_id=tenant_id).exists()


def _bookkeeping_only() -> None:
    """The open transaction writes only what the next round would write again (a lease, when a
    round ran, when an alert was last seen): PostgreSQL may acknowledge its commit before the
    disk has it, which saves the commit's wait for the disk (about 4 ms here, more under load).
    A crash may lose the last fraction of a second of such commits; never a claimed alert."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


def next_due(*, tenant: Tenant, kinds: tuple[str, ...], now: datetime) -> datetime:
    """When time alone changes what the tenant's rules of `kinds` would do: the next local
    midnight, the first cooldown of a firing alert to expire, or MAX_AGE (spread by tenant)."""
    tz = tenant_zone(tenant)
    local = now.astimezone(tz)
    candidates = [
        local_midnight(local.date() + timedelta(days=1), tz),
        now + MAX_AGE - timedelta(minutes=tenant.pk % _SPREAD_MINUTES),
    ]
    for notified, cooldown in (
        Alert.objects.for_tenant(tenant)
        .filter(
            status=Alert.Status.FIRING,
            rule__kind__in=kinds,
            rule__is_active=True,
            last_notified_at__isnull=False,
        )
        .values_list("last_notified_at", "rule__cooldown_minutes")
    ):
        if notified is not None:
            candidates.append(notified + timedelta(minutes=cooldown))
    return min(candidates)
