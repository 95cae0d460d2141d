"""Spend counters in Redis: integer nano-dollars per tenant, local day and dimension.

Layout: one hash per tenant and local day, `cm:{<tenant>}:d:<YYYYMMDD>`, with a field per
thing a budget can cover: `t` (the whole tenant), `u:<end user>`, `k:<api key id>`,
`p:<provider>`, `m:<model>` (the reported name and its catalog names, so a budget on gpt-4o
counts gpt-4o-2024-08-06), `o:<operation>`, `g:<tag>=<value>` (only for tags some budget
counts), and `h:<HH>` (the tenant's spend per local hour). A period's spend is the sum of its
days, so a budget created mid-period starts from the period's real spend with nothing to seed.
All tenants together: `cm:global:d:<YYYYMMDD>` (UTC days).

Each ingest batch adds to them exactly once (`budgets.updates`). PostgreSQL rollups stay the
truth: `counters_reconcile` rebuilds the hashes from them and reports the drift it corrected;
until a tenant's counters have been rebuilt since Redis started or since they missed an update
(`cm:{<tenant>}:ok`, holding when they were rebuilt), checks read PostgreSQL.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import structlog
from django.db.models import F, Q, Sum
from django.db.models.functions import ExtractHour, Lower, TruncDate
from django.utils import timezone

from budgets import config as tenant_config
from budgets import redis as bredis
from budgets import reservations, storage
from budgets.counter_update import (
    MARKER_KEEP_SECONDS,
    Update,
    bucket_key,
    global_day_key,
    hash_args,
    marker_key,
    packed,
)
from budgets.models import CounterCorrection, CounterState, CounterUpdate, EmergencyStop
from budgets.periods import buckets_of_day, day_bucket
from budgets.scopes import SCOPES, BudgetSpec
from budgets.signals import usage_counted_send
from budgets.storage import ingest_lock as ingest_lock  # budgets.updates and drift use it here
from costmon.core.models import Tenant
from costmon.core.periods import LATEST, tenant_zone
from costmon.core.tenancy import tenant_context, unscoped
from usage.event_sums import dimension_names, event_groups, tag_sets, time_range
from usage.models import ModelHourlyRollup
from usage.pricing import candidate_names
from usage.selectors import rollups_of
from usage.signals import BulkLoaded
from usage.user_sums import kept_by_store, user_sums

log = structlog.get_logger(__name__)

_REBUILD = bredis.script_file("rebuild")

DAY_TTL_SECONDS = 100 * 86400  # the longest period read (rolling 90 days) and then some
RECONCILE_DAYS = 92


def day_key(tenant_id: int, day: date) -> str:
    return bucket_key(tenant_id, day_bucket(day))


def ok_key(tenant_id: int) -> str:
    return f"cm:{{{tenant_id}}}:ok"


def stop_key(tenant_id: int | None) -> str:
    return f"cm:{{{tenant_id}}}:estop" if tenant_id is not None else "cm:global:estop"


def stop_value(stop: EmergencyStop) -> str:
    """What checks find at `stop_key`: the expiry (epoch ms) first, compared with the app's
    clock, then the reason."""
    return f"{int(stop.expires_at.timestamp() * 1000)}|{stop.reason}"


def budget_field(spec: BudgetSpec, *, end_user: str = "") -> str:
    """The field holding a budget's spend (its scope says which: budgets.scopes)."""
    scope = SCOPES.get(spec.scope)
    if scope is None:
        raise ValueError(f"unknown scope {spec.scope!r}")
    return scope.counter_field(spec.value, end_user, spec.api_key_id)


def end_user_field(end_user: str) -> str:
    """The field of one end user's spend (every event adds to its end user's)."""
    return f"u:{end_user}"


def event_fields(
    *,
    provider: str,
    model: str,
    operation: str,
    end_user: str | None,
    api_key_id: int,
    tags: dict[str, str] | None,
    tag_names: frozenset[str],
    local_hour: int,
) -> list[str]:
    """Every counter field one event adds to; with `end_user` None, all but its end user's
    (`end_user_field`: summed apart by callers that group many end users' events)."""
    fields = ["t", f"h:{local_hour:02d}", f"p:{provider.lower()}", f"o:{operation}"]
    if end_user is not None:
        fields.append(end_user_field(end_user))
    if api_key_id:
        fields.append(f"k:{api_key_id}")
    fields.extend(f"m:{name}" for name in dict.fromkeys(candidate_names(model)))
    if tags and tag_names:
        fields.extend(f"g:{name}={tags[name]}" for name in tag_names if name in tags)
    return fields


# --- the bulk-load receiver (ingest's are in budgets.updates) -------------------------------


def bulk_loaded(sender: Any, *, load: BulkLoaded, **kwargs: Any) -> None:
    """`usage.signals.bulk_loaded`: rebuild the tenant's counters from PostgreSQL in one pass."""
    counters_reconcile(tenant=load.tenant, known_behind=True)


# Tenants marked stale while Redis could not be reached, and when: this process deletes their
# "trusted" keys as soon as it reaches Redis again, unless they were rebuilt since, so no check
# trusts counters that missed an update (or that do not see reservations held in PostgreSQL
# meanwhile) until they are rebuilt.
_untrust_later: dict[int, int] = {}
_untrust_lock = threading.Lock()


def _now_ms() -> int:
    return int(timezone.now().timestamp() * 1000)


def untrust_after_outage(r: Any) -> None:
    """Call before using Redis: cheap unless this process has tenants to untrust."""
    if not _untrust_later:
        return
    with _untrust_lock:
        marked = dict(_untrust_later)
        _untrust_later.clear()
    try:
        rebuilt = r.mget([ok_key(t) for t in marked])
        stale = [
            ok_key(t)
            for (t, when), at in zip(marked.items(), rebuilt, strict=True)
            if at is not None and int(at) < when
        ]
        if stale:
            r.delete(*stale)
    except bredis.RedisError:
        with _untrust_lock:
            for t, when in marked.items():
                _untrust_later[t] = max(when, _untrust_later.get(t, 0))
        raise


def mark_stale(tenant_id: int) -> None:
    """The tenant's counters must be rebuilt before checks trust them again (the stale
    rebuild runs every minute)."""
    # Untrust first: if PostgreSQL is away too, no check trusts these counters meanwhile (and
    # the first check that finds them untrusted asks for the rebuild).
    r = bredis.client()
    untrusted = False
    if r is not None:
        try:
            r.delete(ok_key(tenant_id))
            untrusted = True
        except bredis.RedisError as exc:
            bredis.failed(exc)
    if not untrusted:
        with _untrust_lock:
            _untrust_later[tenant_id] = _now_ms()
    # In the tenant's context: this runs after commit, from tasks and staff code too, where no
    # context is left and row-level security would refuse the row.
    with tenant_context(tenant_id):
        CounterState.objects.bulk_create(
            [CounterState(tenant_id=tenant_id, stale_since=timezone.now())], ignore_conflicts=True
        )


# --- reading ----------------------------------------------------------------------------------


def read_fields(r: Any, requests: list[tuple[list[str], str]]) -> list[int]:
    """For each (day keys, field): the field's sum over those days, in one round trip."""
    pipe = r.pipeline(transaction=False)
    for keys, name in requests:
        for key in keys:
            pipe.hget(key, name)
    values = iter(pipe.execute())
    return [sum(int(next(values) or 0) for _ in keys) for keys, _ in requests]


def counters_trusted(r: Any, tenant_id: int) -> bool:
    return bool(r.exists(ok_key(tenant_id)))


# --- rebuilding from PostgreSQL ------------------------------------------------------------------


@dataclass
class ReconcileReport:
    days: int = 0
    fields: int = 0
    corrected: int = 0
    drift_nanos: int = 0


def _complete_buckets(day: date, since: date) -> list[str]:
    """The hashes of `day` whose whole period lies on or after `since` (a rebuild that starts
    mid-week must not rewrite that week's hash from part of its days)."""
    day_b, week_b, month_b = buckets_of_day(day)
    out = [day_b]
    if day - timedelta(days=day.weekday()) >= since:
        out.append(week_b)
    if day.replace(day=1) >= since:
        out.append(month_b)
    return out


def reconcile_buckets(since: date, today: date) -> list[str]:
    """Every hash a rebuild from `since` to `today` owns."""
    buckets: dict[str, None] = {}
    day = since
    while day <= today:
        for bucket in _complete_buckets(day, since):
            buckets[bucket] = None
        day += timedelta(days=1)
    return list(buckets)


def expected_counters(
    *, tenant: Tenant, since: date, tag_names: Iterable[str]
) -> dict[str, dict[str, int]]:
    """What the hashes should hold, computed from the rollups (and events, for tags)."""
    tz = tenant_zone(tenant)
    start = datetime.combine(since, datetime.min.time(), tzinfo=tz).astimezone(UTC)
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(day: date, names: Iterable[str], cost: int) -> None:
        for bucket in _complete_buckets(day, since):
            fields = out[bucket_key(tenant.pk, bucket)]
            for name in names:
                if bucket.startswith("d:") or not name.startswith("h:"):
                    fields[name] += cost

    # One GROUP BY per field family (day and one dimension each) rather than every rollup row
    # through Python: a tenant with millions of events is rebuilt in seconds.
    # Families without end user or key read the by-model rollups (ten times fewer rows).
    by_model = rollups_of(tenant).filter(hour__gte=start, cost_nanos__gt=0)
    full = rollups_of(tenant, by_end_user=True).filter(hour__gte=start, cost_nanos__gt=0)
    local_day = TruncDate("hour", tzinfo=tz)
    families: dict[str, Any] = {
        "t": None,
        "h": ExtractHour("hour", tzinfo=tz),
        "p": Lower("provider__value"),
        "o": F("operation__value"),
        "u": F("end_user__value"),
        "k": F("api_key_id"),
        "m": F("model__value"),
    }
    users_in_store = kept_by_store()
    for prefix, expression in families.items():
        if prefix in ("u", "k") and users_in_store:
            continue  # below, from the event store
        rows = (full if prefix in ("u", "k") else by_model).annotate(day=local_day)
        if expression is None:
            sums = rows.values_list("day").annotate(cost=Sum("cost_nanos"))
            for day, cost in sums:
                add(day, ["t"], cost)
            continue
        sums = (
            rows.annotate(name=expression)
            .values_list("day", "name")
            .annotate(cost=Sum("cost_nanos"))
        )
        for day, name, cost in sums:
            if prefix == "h":
                add(day, [f"h:{name:02d}"], cost)
            elif prefix == "k":
                if name:
                    add(day, [f"k:{name}"], cost)
            elif prefix == "m":
                add(day, [f"m:{n}" for n in dict.fromkeys(candidate_names(name))], cost)
            else:
                add(day, [f"{prefix}:{name}"], cost)
    if users_in_store:
        # End users and keys with a store that keeps their sums (`usage.user_sums`): per local
        # day of each UTC hour's start, as the rollups above.
        for prefix, column in (("u", "end_user"), ("k", "api_key")):
            groups = user_sums(tenant, start, LATEST, by=(column,), bucket="day", tz=tz)
            users = dimension_names(tenant, (g.key[0] for g in groups)) if prefix == "u" else {}
            for g in groups:
                cost, pk = g.sums["cost_nanos"], g.key[0]
                if cost and g.bucket is not None and (prefix == "u" or pk):
                    name = users.get(pk or 0) if prefix == "u" else pk
                    add(g.bucket.astimezone(tz).date(), [f"{prefix}:{name}"], cost)
    names = list(tag_names)
    if names:
        # Tags are on the events only: their cost per UTC hour and tag set, summed by the
        # event store, then spread over the tags budgets count. Each hour counts on the local
        # day it starts in, as ingest counts it (`budgets.updates`) and the rollups above.
        groups = event_groups(
            tenant=tenant, time_range=time_range(start), by=("tag_set",), bucket="hour"
        )
        sets = tag_sets(tenant, (g.key[0] for g in groups))
        for g in groups:
            tags, cost = sets.get(g.key[0] or 0, {}), g.sums["cost_nanos"]
            if cost and g.bucket is not None:
                day = g.bucket.astimezone(tz).date()
                add(day, [f"g:{name}={tags[name]}" for name in names if name in tags], cost)
    return out


def counters_reconcile(
    *, tenant: Tenant, known_behind: bool = False, cause: str = "rebuild"
) -> ReconcileReport:
    """Rebuild the tenant's day hashes from PostgreSQL and say how much drift was corrected.

    Under the tenant's exclusive ingest lock: the pending counter updates (`budgets.updates`)
    are applied in the script that sets the hashes (`budgets/lua/rebuild.lua`), so a batch
    that committed just before and applies its own update during the rebuild is counted once;
    the reservations held in PostgreSQL while the counters could not be used move into Redis,
    under the reservation lock, in the same transaction that marks the counters trusted.

    Drift is what was corrected in counters checks were trusting (not a rebuild after Redis
    restarted or after a missed update): it is logged and recorded (`CounterCorrection`, which
    Prometheus exports). `known_behind`: the counters are known to be behind (after a bulk
    load), so a correction is not drift. `cause`: what asked for the rebuild."""
    r = bredis.client()
    report = ReconcileReport()
    if r is None:
        return report
    conf = tenant_config.for_tenant(tenant.pk)
    now = timezone.now()
    today = now.astimezone(tenant_zone(tenant)).date()
    # From the first of a month, so every month hash in range is rebuilt whole.
    since = (today - timedelta(days=RECONCILE_DAYS - 1)).replace(day=1)
    with tenant_context(tenant), ingest_lock(tenant.pk, shared=False):
        was_trusted = counters_trusted(r, tenant.pk)
        pending = list(
            CounterUpdate.objects.for_tenant(tenant).order_by("id").values_list("id", "payload")
        )
        expected = expected_counters(tenant=tenant, since=since, tag_names=conf.tag_names)
        keys = [bucket_key(tenant.pk, b) for b in reconcile_buckets(since, today)]
        # One script: pending updates not applied yet are applied (and marked, so their
        # batch's own update, which may come after, changes nothing), then every hash is set
        # to PostgreSQL's figures. Ingest's lock ends with its commit, so a batch counted here
        # may apply its update at any moment; never in the middle of the script.
        found = _REBUILD(r, _rebuild_args(tenant.pk, pending, keys, expected))
        for key, have in zip(keys, found, strict=True):
            _count_corrections(expected.get(key, {}), have, report)
        pipe = r.pipeline(transaction=True)
        _restore_stops(pipe, tenant)
        with storage.reservation_lock_held(tenant.pk):
            moved = reservations.queue_holds_into_redis(r, pipe, tenant_id=tenant.pk, now=now)
            pipe.set(ok_key(tenant.pk), _now_ms())  # when: see untrust_after_outage
            pipe.execute()
            reservations.holds_delete(tenant_id=tenant.pk, ids=moved)
        if pending:
            CounterUpdate.objects.for_tenant(tenant).filter(
                pk__in=[i for i, _ in pending]
            )._raw_delete(CounterUpdate.objects.db)
            pipe = r.pipeline(transaction=False)
            for update_id, _ in pending:  # their batches' updates may still come: see above
                pipe.expire(marker_key(tenant.pk, update_id), MARKER_KEEP_SECONDS)
            pipe.execute()
            usage_counted_send(tenant.pk)
        CounterState.objects.filter(tenant=tenant).delete()
        if report.corrected and was_trusted and not known_behind:
            log.warning(
                "counters_drift_corrected", tenant=tenant.slug, cause=cause, **report.__dict__
            )
            CounterCorrection.objects.create(
                tenant=tenant,
                cause=cause,
                fields=report.corrected,
                drift_nanos=report.drift_nanos,
            )
    return report


def _rebuild_args(
    tenant_id: int,
    pending: list[tuple[int, str]],
    keys: list[str],
    expected: dict[str, dict[str, int]],
) -> list[Any]:
    """rebuild.lua's arguments (documented there)."""
    args: list[Any] = [DAY_TTL_SECONDS, MARKER_KEEP_SECONDS, len(pending)]
    for update_id, payload in pending:
        args += [marker_key(tenant_id, update_id), *hash_args(tenant_id, Update.from_json(payload))]
    args.append(len(keys))
    for key in keys:
        args += [key, packed(expected.get(key, {}).items())]
    return args


def _count_corrections(want: dict[str, int], found: list[bytes], report: ReconcileReport) -> None:
    """Count in `report` what setting one hash (holding `found`, HGETALL's flat list) to `want`
    corrected."""
    have = {found[i].decode(): int(found[i + 1]) for i in range(0, len(found), 2)}
    if want:
        report.days += 1
        report.fields += len(want)
    wrong = {name: amount for name, amount in want.items() if have.get(name) != amount}
    extra = [name for name in have if name not in want]
    report.corrected += len(wrong) + len(extra)
    report.drift_nanos += sum(abs(amount - have.get(name, 0)) for name, amount in wrong.items())
    report.drift_nanos += sum(abs(have[name]) for name in extra)


def _restore_stops(pipe: Any, tenant: Tenant) -> None:
    """Put the open emergency stops (the tenant's and the global one) back where checks look."""
    now = timezone.now()
    with unscoped():
        open_stops = {
            s.tenant_id: s
            for s in EmergencyStop.objects.unscoped().filter(
                Q(tenant=tenant) | Q(tenant__isnull=True),
                lifted_at__isnull=True,
                expires_at__gt=now,
            )
        }
    for tenant_id in (tenant.pk, None):
        stop = open_stops.get(tenant_id)
        if stop is None:
            pipe.delete(stop_key(tenant_id))
        else:
            ttl_ms = max(1, int((stop.expires_at - now).total_seconds() * 1000))
            pipe.set(stop_key(tenant_id), stop_value(stop), px=ttl_ms + 60_000)


def global_counters_reconcile(days: int = 35) -> int:
    """Rebuild the all-tenants day hashes (for global stop rules) from the rollups.

    Unlike a tenant's, this rebuild does not stop ingest, so a batch landing during it may be
    missed until the next run; global rules are coarse safety nets, and the next run is a
    minute away.
    """
    r = bredis.client()
    if r is None:
        return 0
    since = (
        (timezone.now() - timedelta(days=days - 1))
        .astimezone(UTC)
        .replace(hour=0, minute=0, second=0, microsecond=0)
    )
    expected: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with unscoped():
        rows = (
            ModelHourlyRollup.objects.unscoped()
            .filter(hour__gte=since, cost_nanos__gt=0)
            .values_list("hour")
            .annotate(cost=Sum("cost_nanos"))
        )
        for hour, cost in rows:
            utc = hour.astimezone(UTC)
            fields = expected[global_day_key(utc.date())]
            fields["t"] += cost
            fields[f"h:{utc.hour:02d}"] += cost
    pipe = r.pipeline(transaction=True)
    for i in range(days):
        key = global_day_key((since + timedelta(days=i)).date())
        pipe.delete(key)
        if expected.get(key):
            pipe.hset(key, mapping=dict(expected[key]))  # type: ignore[arg-type]
            pipe.expire(key, DAY_TTL_SECONDS)
    pipe.execute()
    return len(expected)
