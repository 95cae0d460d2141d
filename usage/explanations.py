"""Cost explanations: how an event's cost was made, line by line, so an auditor can recompute
it by hand from the catalog row it names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Q

from costmon.core.exceptions import NotFound
from costmon.core.models import Tenant
from costmon.core.money import format_usd
from costmon.core.tenancy import unscoped
from usage.catalog import load_catalog, price_from_row
from usage.eventstore.current import event_store
from usage.models import CostSource, ModelPrice, UsageEvent
from usage.price_lookup import Resolution
from usage.pricing import Breakdown, breakdown, format_rate


@dataclass(frozen=True)
class CostExplanation:
    event: UsageEvent
    row: ModelPrice | None  # the catalog row the stored cost came from
    breakdown: Breakdown | None
    resolution_now: Resolution | None  # how the catalog resolves the name today


def cost_explanation(
    *, tenant: Tenant, event_id: str, occurred_at: datetime | None = None
) -> CostExplanation:
    """The event, the catalog row its cost came from, and the cost recomputed from that row.

    The event store finds it (`EventStore.lookup`): by its key when `occurred_at` is given."""
    event = event_store().lookup(tenant, event_id, occurred_at)
    if event is None:
        when = f" at {occurred_at.isoformat().replace('+00:00', 'Z')}" if occurred_at else ""
        raise NotFound(f"No usage event {event_id!r}{when}.")
    row = None
    if event.price_id is not None:
        with unscoped():  # a global row, or the tenant's own: never another tenant's
            row = (
                ModelPrice.objects.unscoped()
                .filter(Q(tenant__isnull=True) | Q(tenant=tenant), pk=event.price_id)
                .first()
            )
    lines = breakdown(price_from_row(row), event.usage) if row is not None else None
    resolution = None
    if not event.cache_hit and event.cost_source != CostSource.CALLER:
        resolution = load_catalog(tenant.pk).resolve(
            event.provider.value, event.model.value, event.occurred_at, event.tier
        )
    return CostExplanation(event, row, lines, resolution)


def explanation_json(explained: CostExplanation) -> dict[str, Any]:
    event, row, lines = explained.event, explained.row, explained.breakdown
    cost: dict[str, Any] = {
        "cost_usd": format_usd(event.cost_nanos),
        "cost_source": CostSource(event.cost_source).label,
        "service_tier": event.tier,
    }
    if event.cost_source == CostSource.CALLER:
        cost["note"] = "The application reported this cost (cost_usd); costmon kept it as sent."
    elif event.cache_hit:
        cost["note"] = "Served from the application's own cache: no provider call, no cost."
    elif row is None:
        cost["note"] = (
            "No price in the catalog for this provider and model when it was stored: "
            "unpriced, counted, and priced automatically once the catalog has its price."
        )
    if row is not None and lines is not None:
        recomputed = lines.nanos
        cost.update(
            {
                "price": {
                    "id": row.pk,
                    "provider": row.provider,
                    "model": row.model,
                    "service_tier": row.service_tier,
                    "effective_from": row.effective_from.isoformat().replace("+00:00", "Z"),
                    "owner": "tenant" if row.tenant_id else "global",
                    "source": row.source,
                    "source_date": row.source_date.isoformat() if row.source_date else None,
                },
                "tier_fallback": row.service_tier != event.tier,
                "rates": "long_context" if lines.long_context else "standard",
                "long_context_threshold": row.long_context_threshold,
                "lines": [
                    {
                        "kind": line.kind,
                        "quantity": line.quantity,
                        "unit": line.unit,
                        "unit_price_usd": format_rate(line.unit_price),
                        "cost_usd": format_usd(line.nanos),
                    }
                    for line in lines.lines
                ],
                "exact_total_usd": format_usd(
                    sum((line.nanos for line in lines.lines), Decimal(0))
                ),
                "recomputed_cost_usd": format_usd(recomputed),
                "matches_stored_cost": recomputed == event.cost_nanos,
            }
        )
    now = explained.resolution_now
    if now is not None:
        cost["resolution"] = {
            "rule": now.rule,
            "catalog_name": now.name,
            "price_id_today": now.price.id,
        }
    elif event.cost_source == CostSource.UNPRICED:
        cost["resolution"] = {"rule": "unpriced", "catalog_name": None, "price_id_today": None}
    return cost
