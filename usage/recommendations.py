"""Recommendations for the overview page: what the tenant could do about its spend, each with an
estimated monthly saving, from the last 30 days of its own data.

Money is integer nano-dollars throughout; the window is 30 days and a month counts as 30 days,
so a 30-day saving is the monthly saving. Everything reads the hourly rollups except the
repeated-prompt check: prompt hashes live on the events alone. The rollups are read once, as
sums per operation, provider and model (`_model_sums`), and those sums of the days before
today are kept in the shared cache as the dashboard's are (`usage.settled`): every view of
the overview shows the recommendations, and summing the window again each time was most of
a view's database time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Sum

from costmon.core.models import Tenant
from costmon.core.money import format_money, usd_to_nanos
from costmon.core.periods import TimeRange, tenant_zone
from usage import settled
from usage.catalog import catalog_for
from usage.event_sums import time_range
from usage.eventstore.base import event_query
from usage.eventstore.current import event_store
from usage.models import Dimension, ModelPrice, PriceSync
from usage.pricing import Price, candidate_names, cost_nanos, format_rate
from usage.selectors import rollups_of

WINDOW_DAYS = 30
MONTH_DAYS = 30
CACHE_TARGET_PERCENT = 70
MIN_CALLS_FOR_CACHE_RATE = 100
TOP_OPERATIONS = 3
# An operation is worth moving to a cheaper model from $1 of 30-day cost or 20% of spend.
MIN_OPERATION_NANOS = 1_000_000_000
MIN_OPERATION_SHARE_PERCENT = 20

KIND_CACHE_RATE = "cache_hit_rate"
KIND_TOP_OPERATIONS = "top_operations"
KIND_CHEAPER_MODEL = "cheaper_model"
KIND_REPEATED_PROMPTS = "repeated_prompts"


@dataclass(frozen=True)
class Recommendation:
    kind: str
    title: str
    text: str
    saving_nanos: int | None  # per month; None: informational, no saving estimated


def _monthly(nanos: int) -> int:
    return nanos * MONTH_DAYS // WINDOW_DAYS


def _op_name(name: str | None) -> str:
    return name or "(no operation)"


def _percent(part: int, whole: int) -> Decimal:
    return (Decimal(part) * 100 / whole).quantize(Decimal("0.1"))


def recommendations(
    *, tenant: Tenant, now: datetime, time_range: TimeRange | None = None
) -> list[Recommendation]:
    """The tenant's recommendations for the 30 days before `now`, the largest saving first and
    the informational ones (no saving) last. `time_range` (30 days long) replaces that window:
    the overview passes its own "last 30 days", so both show the same figures."""
    if time_range is None:
        start = (now - timedelta(days=WINDOW_DAYS)).replace(minute=0, second=0, microsecond=0)
        time_range = TimeRange(start=start, end=now, period="custom", tz=tenant_zone(tenant))
    start, end = time_range.start, time_range.end
    rows = _model_sums(tenant, time_range)
    found: list[Recommendation] = []
    calls, hits, total = (sum(r[name] for r in rows) for name in ("calls", "cache_hits", "cost"))
    if (rec := _cache_rate(calls=calls, hits=hits, cost=total)) is not None:
        found.append(rec)
    if total > 0:
        if (rec := _top_operations(rows, total)) is not None:
            found.append(rec)
        found.extend(_cheaper_models(tenant, rows, total, now))
    if (rec := _repeated_prompts(tenant, start, end)) is not None:
        found.append(rec)
    found.sort(key=lambda r: (r.saving_nanos is None, -(r.saving_nanos or 0)))
    return found


# What `_model_sums` sums per operation, provider and model.
_SUMS = (
    "cost",
    "calls",
    "cache_hits",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
)
_COLUMNS = {"cost": "cost_nanos"}


def recommendation_sums_warm(*, tenant: Tenant, time_range: TimeRange) -> None:
    """Sum (and keep) what `recommendations` reads for `time_range`: the overview's warm-up
    calls it for the last 30 days, as the page asks."""
    _model_sums(tenant, time_range)


def _model_sums(tenant: Tenant, tr: TimeRange) -> list[dict[str, Any]]:
    """The window's rollups summed per (operation, provider, model), each row named ("op",
    "prov", "model_name") and holding `_SUMS`, as integers; the costliest first (then by the
    names, as PostgreSQL's C collation orders them: code points). Sums of the days before
    today come from the shared cache when kept there (`usage.settled`)."""

    def compute(part: TimeRange) -> settled.Sums:
        found = (
            rollups_of(tenant)
            .filter(hour__gte=part.start, hour__lt=part.end)
            .values_list("operation_id", "provider_id", "model_id")
            .annotate(**{n: Sum(_COLUMNS.get(n, n)) for n in _SUMS})
            .order_by()
        )
        return {(op, prov, model): [int(v) for v in values] for op, prov, model, *values in found}

    sums = settled.summed(tenant, tr, ("recommendations", WINDOW_DAYS), compute)
    ids = {pk for key in sums for pk in key}
    names = dict(
        Dimension.objects.for_tenant(tenant).filter(pk__in=list(ids)).values_list("pk", "value")
    )
    rows: list[dict[str, Any]] = [
        {
            "op": names.get(op),
            "prov": names.get(prov),
            "model_name": names.get(model),
            **dict(zip(_SUMS, values, strict=True)),
        }
        for (op, prov, model), values in sums.items()
    ]
    rows.sort(key=lambda r: (-r["cost"], r["op"] or "", r["prov"] or "", r["model_name"] or ""))
    return rows


def _cache_rate(*, calls: int, hits: int, cost: int) -> Recommendation | None:
    """Raising the cache hit rate to the target removes that share of the calls that missed.

    A cache hit costs nothing (unless the caller reported a cost for it), so the cost of the
    calls that missed is the period's cost. With rate r = hits / calls the saving is
    cost x (0.70 - r) / (1 - r) = cost x (7 calls - 10 hits) / (10 (calls - hits)).
    """
    if calls < MIN_CALLS_FOR_CACHE_RATE or hits * 100 >= calls * CACHE_TARGET_PERCENT:
        return None
    target = CACHE_TARGET_PERCENT
    saving = cost * (target * calls - 100 * hits) // (100 * (calls - hits))
    return Recommendation(
        kind=KIND_CACHE_RATE,
        title="Cache hit rate below target",
        text=(
            f"{hits:,} of {calls:,} calls ({_percent(hits, calls)}%) were cache hits in the last "
            f"30 days; raising that to {target}% would avoid paying for as many calls."
        ),
        saving_nanos=_monthly(saving),
    )


def _top_operations(model_rows: list[dict[str, Any]], total: int) -> Recommendation | None:
    costs: dict[str, int] = {}  # by operation name
    for r in model_rows:
        if r["op"] is not None:  # (read through a join: a row naming no operation is left out)
            costs[r["op"]] = costs.get(r["op"], 0) + r["cost"]
    rows = [
        (name, cost)
        for name, cost in sorted(costs.items(), key=lambda item: (-item[1], item[0]))
        if cost > 0
    ][:TOP_OPERATIONS]
    if not rows:
        return None
    parts = [
        f"{_op_name(name)} {format_money(cost)} ({_percent(cost, total)}%)" for name, cost in rows
    ]
    return Recommendation(
        kind=KIND_TOP_OPERATIONS,
        title="Most expensive operations",
        text=(
            f"Of {format_money(total)} in the last 30 days: {', '.join(parts)}. Start looking for "
            "savings there (for information: no saving is estimated)."
        ),
        saving_nanos=None,
    )


def _estimate(price: Price, row: dict[str, Any]) -> int:
    """The row's tokens at `price`, summed: per call rates apply per call, and the long-context
    tier (which depends on one call's size) cannot be told from sums, so it is left out."""
    flat = replace(price, per_request=Decimal(0), long_context_threshold=None, long_rates=None)
    return cost_nanos(
        flat,
        input_tokens=int(row["input_tokens"]),
        output_tokens=int(row["output_tokens"]),
        cached_input_tokens=int(row["cached_input_tokens"]),
        cache_write_tokens=int(row["cache_write_tokens"]),
    ) + usd_to_nanos(price.per_request * int(row["calls"]))


def _alternatives(prices: list[Price], current: Price, dropped: set[int]) -> list[Price]:
    """Models one could switch to: current (no retirement announced: no deprecation date, past
    or future, and still listed by the price list their row came from), of the same mode as the
    model in use (no embedding model for chat), and not a dated snapshot of a family the list
    also has (suggest the family's name). `dropped`: `dropped_from_their_list` of the
    candidates, asked once for all operations."""
    names = {p.model.lower() for p in prices}
    same_mode = [
        p
        for p in prices
        if p.deprecation_date is None
        and _modality(p) == _modality(current)
        and not any(family in names for family in candidate_names(p.model)[1:])
    ]
    return [p for p in same_mode if p.id not in dropped]


def dropped_from_their_list(price_ids: list[int]) -> set[int]:
    """Of these global price rows, those whose model the newest load of the same price list (the
    one that created the row) no longer lists: a retired model's row stays, for the events it
    priced, but it is not current. Only the same list counts, so loading a small overrides file
    does not retire the rest of the catalog; rows staff added by hand are never dropped."""
    rows = list(
        ModelPrice.objects.unscoped()
        .filter(pk__in=price_ids, tenant__isnull=True, sync__isnull=False)
        .values_list("pk", "provider", "model", "sync__source")
    )
    if not rows:
        return set()
    newest: dict[str, int] = {}
    for pk, source in (
        PriceSync.objects.filter(
            tenant__isnull=True,
            source__in={r[3] for r in rows},
            status__in=[PriceSync.Status.APPLIED, PriceSync.Status.UNCHANGED],
        )
        .order_by("-started_at", "-pk")
        .values_list("pk", "source")
    ):
        newest.setdefault(source, pk)
    missing: dict[str, set[tuple[str, str]]] = {
        source: {(p, m) for p, m in details.get("missing", [])}
        for source, details in PriceSync.objects.filter(pk__in=newest.values()).values_list(
            "source", "details"
        )
    }
    return {
        pk
        for pk, provider, model, source in rows
        if (provider, model.lower()) in missing.get(source, set())
    }


def _modality(price: Price) -> str:
    if price.mode == "embedding" or "embed" in price.model.lower():
        return "embedding"
    return "text" if price.mode in ("", "chat", "responses", "completion") else price.mode


def _cheaper_models(
    tenant: Tenant, rows: list[dict[str, Any]], total: int, now: datetime
) -> list[Recommendation]:
    """For each operation that matters, its costliest priced model against the cheapest model
    of the same provider whose input and output list prices are both lower (no embedding
    models): the operation's 30-day tokens priced both ways. `rows`: `_model_sums`."""
    catalog = catalog_for(tenant.pk)
    op_cost: dict[str, int] = {}
    top: dict[str, tuple[dict[str, Any], Price]] = {}
    for row in rows:
        if None in (row["op"], row["prov"], row["model_name"]):
            continue  # (read through joins: a row whose names are missing was left out)
        op = row["op"] or ""
        op_cost[op] = op_cost.get(op, 0) + int(row["cost"])
        if op in top or int(row["cost"]) <= 0:
            continue
        price = catalog.price_at(row["prov"], row["model_name"], now)
        if price is not None:
            top[op] = (row, price)
    models_of = {
        price.provider: catalog.models_of(price.provider, now) for _, price in top.values()
    }
    dropped = dropped_from_their_list([p.id for prices in models_of.values() for p in prices])
    found = []
    for op, (row, price) in top.items():
        cost = op_cost[op]
        if cost < MIN_OPERATION_NANOS and cost * 100 < total * MIN_OPERATION_SHARE_PERCENT:
            continue
        options = [
            (_estimate(c, row), c.model, c)
            for c in _alternatives(models_of[price.provider], price, dropped)
            if c.rates.input < price.rates.input and c.rates.output < price.rates.output
        ]
        if not options:
            continue
        cheaper, name, chosen = min(options, key=lambda o: (o[0], o[1]))
        saving = int(row["cost"]) - cheaper
        if saving <= 0:
            continue
        found.append(
            Recommendation(
                kind=KIND_CHEAPER_MODEL,
                title=f"A cheaper model for {_op_name(op)}",
                text=(
                    f"{_op_name(op)} spent {format_money(int(row['cost']))} on {row['model_name']} in the "
                    f"last 30 days; the same tokens on {name} ({price.provider}) would cost "
                    f"{format_money(cheaper)} at its list price of ${format_rate(chosen.rates.input)} in / "
                    f"${format_rate(chosen.rates.output)} out per 1M tokens (catalog row "
                    f"#{chosen.id}). Check that its quality is enough for this operation."
                ),
                saving_nanos=_monthly(saving),
            )
        )
    return found


def _repeated_prompts(tenant: Tenant, start: datetime, now: datetime) -> Recommendation | None:
    """Events that sent the same prompt hash more than once: every repeat after the first is
    what a response cache would have saved.

    This one reads the raw events in the 30-day range, grouped by prompt hash in whichever
    store keeps them (`EventStore.repeated_prompts`): the rollups do not keep prompt hashes.
    """
    groups = event_store().repeated_prompts(tenant, event_query(time_range=time_range(start, now)))
    prompts = repeats = saving = 0
    for n, cost in groups:
        prompts += 1
        repeats += n - 1
        saving += cost * (n - 1) // n
    if not prompts:
        return None
    return Recommendation(
        kind=KIND_REPEATED_PROMPTS,
        title="Repeated identical requests",
        text=(
            f"{prompts:,} distinct prompts were sent more than once in the last 30 days "
            f"({repeats:,} repeats); caching their responses would avoid paying for the repeats."
        ),
        saving_nanos=_monthly(saving),
    )
