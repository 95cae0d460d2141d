"""Spend counters in Redis: integer nano-dollars per tenant, local day and dimension.

Layout: one hash per tenant and local day, `cm:{<tenant>}:d:<YYYYMMDD>`, with a field per
thing a budget can cover: `t` (the whole tenant), `u:<end user>`, `k:<api key id>`,
`p:<provider>`, `m:<model>` (the reported name and its catalog names, so a budget on gpt-4o
counts gpt-4o-2024-08-06), `o:<operation>`, `g:<tag>=<value>` (only for tags some budget
counts), and `h:<HH>` (the tenant's spend per local hour). A period's spend is the sum of its
days, so a budget created mid-period starts from the period's real spend with nothing to seed.
All tenants together: `cm:global:d:<YYYYMMDD>` (UTC days).

PostgreSQL rollups stay the truth: `counters_reconcile` rebuilds the hashes from them and
reports the drift it corrected; until a tenant's counters have been rebuilt once since Redis
started (`cm:{<tenant>}:ok`), checks read PostgreSQL.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import structlog
from django.db import connection
from django.db.models import F, Q, Sum
from django.db.models.functions import ExtractHour, Lower, TruncDate
from django.utils import timezone

from budgets import config as tenant_config
from budgets import redis as bredis
from budgets.periods import buckets_of_day, day_bucket
from costmon.models import Tenant
from costmon.tenancy import tenant_context, unscoped
from usage.models import ModelHourlyRollup, UsageEvent
from usage.pricing import candidate_names
from usage.selectors import rollups_of, tenant_zone

log = structlog.get_logger(__name__)

DAY_TTL_SECONDS = 100 * 86400  # the longest period read (rolling 90 days) and then some
RECONCILE_DAYS = 92
_LOCK_NAMESPACE = 7401  # shared with usage.services: the tenant's ingest lock


def bucket_key(tenant_id: int, bucket: str) -> str:
    return f"cm:{{{tenant_id}}}:{bucket}"


def day_key(tenant_id: int, day: date) -> str:
    return bucket_key(tenant_id, day_bucket(day))


def global_day_key(day: date) -> str:
    return f"cm:global:d:{day:%Y%m%d}"


def ok_key(tenant_id: int) -> str:
    return f"cm:{{{tenant_id}}}:ok"


def stop_key(tenant_id: int | None) -> str:
    return f"cm:{{{tenant_id}}}:estop" if tenant_id is not None else "cm:global:estop"


def budget_field(
    scope: str, value: str, *, end_user: str = "", api_key_id: int | None = None
) -> str:
    if scope == "tenant":
        return "t"
    if scope == "end_user":
        return f"u:{value}"
    if scope == "every_end_user":
        return f"u:{end_user}"
    if scope == "api_key":
        return f"k:{api_key_id}"
    if scope == "provider":
        return f"p:{value.lower()}"
    if scope == "model":
        return f"m:{value.lower()}"
    if scope == "operation":
        return f"o:{value}"
    if scope == "tag":
        return f"g:{value}"
    raise ValueError(f"unknown scope {scope!r}")


def event_fields(
    *,
    provider: str,
    model: str,
    operation: str,
    end_user: str,
    api_key_id: int,
    tags: dict[str, str] | None,
    tag_names: frozenset[str],
    local_hour: int,
) -> list[str]:
    """Every counter field one event adds to."""
    fields = [
        "t",
        f"h:{local_hour:02d}",
        f"p:{provider.lower()}",
        f"o:{operation}",
        f"u:{end_user}",
    ]
    if api_key_id:
        fields.append(f"k:{api_key_id}")
    fields.extend(f"m:{name}" for name in dict.fromkeys(candidate_names(model)))
    if tags and tag_names:
        fields.extend(f"g:{name}={tags[name]}" for name in tag_names if name in tags)
    return fields


# --- the ingest hook ---------------------------------------------------------------------------

# Separates the names and amounts packed into one argument: ingest refuses NUL in every name,
# and one long argument costs redis-py a fraction of what thousands of short ones do.
_SEP = "\x00"
_RECORD = bredis.script(
    """
    -- ARGV: ttl, n_hashes, then per hash: key, "field\\0amount\\0..." (NUL-separated);
    -- then the tenant prefix and "kind\\0value\\0..." for the reservations to settle
    -- (kind 'r': a reservation id, 'e': an event id a reservation may carry)
    local ttl = tonumber(ARGV[1])
    local n_hashes = tonumber(ARGV[2])
    local i = 3
    for h = 1, n_hashes do
      local key = ARGV[i]
      for field, amount in string.gmatch(ARGV[i + 1], '([^%z]+)%z([^%z]+)%z') do
        redis.call('HINCRBY', key, field, amount)
      end
      redis.call('EXPIRE', key, ttl)
      i = i + 2
    end
    local prefix = ARGV[i]
    local settled = 0
    for kind, value in string.gmatch(ARGV[i + 1], '([^%z]+)%z([^%z]+)%z') do
      local res_id = value
      if kind == 'e' then res_id = redis.call('GET', prefix .. ':resev:' .. value) end
      if res_id then
        local record = redis.call('GET', prefix .. ':res:' .. res_id)
        if record then
          local amount = nil
          for part in string.gmatch(record, '[^|]+') do
            if amount == nil then
              amount = part
            elseif redis.call('ZREM', part, res_id .. ':' .. amount) == 1 then
              redis.call('DECRBY', part .. ':sum', amount)
            end
          end
          redis.call('DEL', prefix .. ':res:' .. res_id)
          settled = settled + 1
        end
        if kind == 'e' then redis.call('DEL', prefix .. ':resev:' .. value) end
      end
    end
    return settled
    """
)


def bulk_loaded(tenant: Tenant) -> None:
    """After a bulk load: rebuild the tenant's counters from PostgreSQL in one pass."""
    counters_reconcile(tenant=tenant, known_behind=True)


def record_batch(tenant: Tenant, rows: list[dict[str, Any]]) -> None:
    """After an ingest commit: add the batch's spend to the counters, settle the reservations
    its events carry, and trip the emergency stop if a rule's threshold is now passed."""
    from budgets.services import emergency_stop_check

    conf = tenant_config.for_tenant(tenant.pk)
    r = bredis.client()
    if r is not None:
        tz = tenant_zone(tenant)
        hashes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        reservations: list[str] = []
        prefix = f"cm:{{{tenant.pk}}}"
        day_hashes: dict[date, tuple[dict[str, int], dict[str, int], dict[str, int]]] = {}
        for row in rows:
            cost = row["cost_nanos"]
            local = row["occurred_at"].astimezone(tz)
            provider, model, operation, end_user = row["names"]
            if cost:
                names = event_fields(
                    provider=provider,
                    model=model,
                    operation=operation,
                    end_user=end_user,
                    api_key_id=row["api_key_id"],
                    tags=row["tags"],
                    tag_names=conf.tag_names,
                    local_hour=local.hour,
                )
                on = local.date()
                if on not in day_hashes:  # a batch mostly spans a day or two
                    d, w, m = buckets_of_day(on)
                    day_hashes[on] = (
                        hashes[bucket_key(tenant.pk, d)],
                        hashes[bucket_key(tenant.pk, w)],
                        hashes[bucket_key(tenant.pk, m)],
                    )
                day, week, month = day_hashes[on]
                for name in names:
                    day[name] += cost
                    if not name.startswith("h:"):  # hours only matter within a day
                        week[name] += cost
                        month[name] += cost
                utc = row["occurred_at"].astimezone(UTC)
                total = hashes[global_day_key(utc.date())]
                total["t"] += cost
                total[f"h:{utc.hour:02d}"] += cost
            if row["reservation_id"]:
                reservations += ["r", row["reservation_id"]]
            else:
                reservations += ["e", row["event_id"]]
        args: list[Any] = [DAY_TTL_SECONDS, len(hashes)]
        for key, fields in hashes.items():
            args += [key, "".join(f"{name}{_SEP}{amount}{_SEP}" for name, amount in fields.items())]
        args += [prefix, "".join(f"{part}{_SEP}" for part in reservations)]
        try:
            _RECORD(r, args)
        except bredis.RedisError as exc:
            # Usage is stored; the counters are behind until rebuilt. Mark the tenant so the
            # next reconcile (every minute) rebuilds them, and checks read PostgreSQL meanwhile.
            bredis.failed(exc)
            mark_stale(tenant.pk)
    if conf.stop_rules:
        emergency_stop_check(tenant=tenant, rules=conf.stop_rules)


def mark_stale(tenant_id: int) -> None:
    from budgets.models import CounterState

    CounterState.objects.update_or_create(
        tenant_id=tenant_id, defaults={"stale_since": timezone.now()}
    )
    r = bredis.client()
    if r is not None:
        with contextlib.suppress(*bredis.RedisError):
            r.delete(ok_key(tenant_id))


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


@contextlib.contextmanager
def _exclusive_ingest_lock(tenant_id: int) -> Iterator[None]:
    """No batch of this tenant is between its commit and its counter update meanwhile."""
    if connection.vendor != "postgresql":
        yield
        return
    key = [_LOCK_NAMESPACE, tenant_id % 2_000_000_000]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", key)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", key)


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
    for prefix, expression in families.items():
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
    for name in tag_names:
        tagged = (
            UsageEvent.objects.for_tenant(tenant)
            .filter(occurred_at__gte=start, cost_nanos__gt=0, **{"tags__has_key": name})
            .values_list("occurred_at", "tags", "cost_nanos")
        )
        for occurred_at, tags, cost in tagged.iterator(chunk_size=5000):
            value = (tags or {}).get(name)
            add(occurred_at.astimezone(tz).date(), [f"g:{name}={value}"], cost)
    return out


def counters_reconcile(*, tenant: Tenant, known_behind: bool = False) -> ReconcileReport:
    """Rebuild the tenant's day hashes from PostgreSQL and say how much drift was corrected.

    `known_behind`: the counters are known to be behind (after a bulk load), so a correction is
    not worth a warning."""
    from budgets.models import CounterState

    r = bredis.client()
    report = ReconcileReport()
    if r is None:
        return report
    conf = tenant_config.for_tenant(tenant.pk)
    today = timezone.now().astimezone(tenant_zone(tenant)).date()
    # From the first of a month, so every month hash in range is rebuilt whole.
    since = (today - timedelta(days=RECONCILE_DAYS - 1)).replace(day=1)
    with tenant_context(tenant), _exclusive_ingest_lock(tenant.pk):
        expected = expected_counters(tenant=tenant, since=since, tag_names=conf.tag_names)
        keys = [bucket_key(tenant.pk, b) for b in reconcile_buckets(since, today)]
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        actual_by_key = dict(zip(keys, pipe.execute(), strict=True))
        pipe = r.pipeline(transaction=True)
        for key in keys:
            want = expected.get(key, {})
            have = {k.decode(): int(v) for k, v in actual_by_key[key].items()}
            if want:
                report.days += 1
                report.fields += len(want)
            wrong = {name: amount for name, amount in want.items() if have.get(name) != amount}
            extra = [name for name in have if name not in want]
            report.corrected += len(wrong) + len(extra)
            report.drift_nanos += sum(
                abs(amount - have.get(name, 0)) for name, amount in wrong.items()
            )
            report.drift_nanos += sum(abs(have[name]) for name in extra)
            if extra:
                pipe.hdel(key, *extra)
            if wrong:
                pipe.hset(key, mapping=dict(wrong))  # type: ignore[arg-type]
                pipe.expire(key, DAY_TTL_SECONDS)
        _restore_stops(pipe, tenant)
        pipe.set(ok_key(tenant.pk), 1)
        pipe.execute()
        CounterState.objects.filter(tenant=tenant).delete()
    if report.corrected and not known_behind:
        log.warning("counters_drift_corrected", tenant=tenant.slug, **report.__dict__)
    return report


def _restore_stops(pipe: Any, tenant: Tenant) -> None:
    """Put the open emergency stops (the tenant's and the global one) back where checks look."""
    from budgets.models import EmergencyStop

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
            from budgets.services import stop_value

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
