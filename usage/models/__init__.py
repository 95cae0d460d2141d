"""Usage data: the pricing catalog, raw events, and the hourly rollups every read is served from.

Money is stored as integer nano-dollars (1 USD = 10^9) so that sums are exact on every
database; prices are Decimal USD per million tokens as the providers publish them.
"""

from __future__ import annotations

from usage.models.catalog import (
    CatalogAlias,
    ModelAlias,
    ModelPrice,
    PriceChangeHold,
    PriceSync,
    ServiceTier,
)
from usage.models.events import (
    PRICED_COLUMNS,
    CostSource,
    Dimension,
    EndUserDailyRollup,
    EventRewrite,
    EventStamp,
    HourlyRollup,
    ModelHourlyRollup,
    Rollup,
    TagHourlyRollup,
    TagSet,
    UsageEvent,
    dictionary_reference,
)

__all__ = [
    "PRICED_COLUMNS",
    "CatalogAlias",
    "CostSource",
    "Dimension",
    "EndUserDailyRollup",
    "EventRewrite",
    "EventStamp",
    "HourlyRollup",
    "ModelAlias",
    "ModelHourlyRollup",
    "ModelPrice",
    "PriceChangeHold",
    "PriceSync",
    "Rollup",
    "ServiceTier",
    "TagHourlyRollup",
    "TagSet",
    "UsageEvent",
    "dictionary_reference",
]
