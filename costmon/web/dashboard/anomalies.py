"""The anomaly band of the dashboard's hourly spend chart: each hour's spend against its usual
range (usage.anomalies), as the plain rows `charts.add_anomaly_band` draws."""

from __future__ import annotations

from typing import Any

from costmon.core.models import Tenant
from costmon.core.periods import TimeRange
from usage.anomalies import anomaly_band
from usage.selectors import UsageFilters

# A quiet hour of the week (a median of $0) is not marked for less than a cent.
MIN_MARKED_NANOS = 10_000_000


def hourly_band(
    *, tenant: Tenant, time_range: TimeRange, filters: UsageFilters
) -> list[dict[str, Any]]:
    points = anomaly_band(
        tenant=tenant,
        start=time_range.start,
        end=time_range.end,
        filters=filters,
        floor=MIN_MARKED_NANOS,
    )
    return [
        {
            # The local hour the bars put it in (a UTC hour is 15:30 in Kolkata: the 15:00 bar).
            "bucket": p.hour.astimezone(time_range.tz).replace(minute=0),
            "value": p.value,
            "lower": p.baseline.lower if p.baseline else None,
            "upper": p.baseline.upper if p.baseline else None,
            "flag": p.flag,
        }
        for p in points
    ]
