"""Generated usage with a weekly pattern, for the anomaly band and its alert rule.

One claude-haiku-4-5 call per hour with input tokens only ($1 per 1M: each token is 1,000
nano-dollars), following the tenant's wall clock: weekdays 09:00-17:00 100,000 tokens, other
weekday hours 10,000, weekends 5,000, each times a fixed pseudo-random 90-110%.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from costmon.core.models import Tenant
from tests.helpers import event
from usage.ingest import parse_batch
from usage.services import usage_record_batch

NANOS_PER_TOKEN = 1_000  # claude-haiku-4-5 input at $1 per 1M tokens


def usual_tokens(local: datetime) -> int:
    if local.weekday() >= 5:
        return 5_000
    return 100_000 if 9 <= local.hour < 17 else 10_000


def weekly_pattern(
    *, tz: str, first_monday: date, weeks: int, seed: int = 15
) -> dict[datetime, int]:
    """Tokens per UTC hour over `weeks` weeks from local midnight of `first_monday`."""
    zone = ZoneInfo(tz)
    rng = random.Random(seed)
    start = datetime.combine(first_monday, time(), tzinfo=zone).astimezone(UTC)
    end = datetime.combine(first_monday + timedelta(weeks=weeks), time(), tzinfo=zone).astimezone(
        UTC
    )
    out: dict[datetime, int] = {}
    hour = start
    while hour < end:
        out[hour] = usual_tokens(hour.astimezone(zone)) * rng.randint(90, 110) // 100
        hour += timedelta(hours=1)
    return out


def record(
    tenant: Tenant,
    tokens_per_hour: dict[datetime, int],
    *,
    prefix: str = "w",
    tags: dict[str, str] | None = None,
) -> None:
    """One event at 20 past each hour that has tokens (with `tags`, when given)."""
    items: list[dict[str, Any]] = [
        event(
            event_id=f"{prefix}{hour:%Y%m%d%H}",
            occurred_at=(hour + timedelta(minutes=20)).isoformat(),
            end_user="u1",
            input_tokens=tokens,
            output_tokens=0,
            tags=tags,
        )
        for hour, tokens in sorted(tokens_per_hour.items())
        if tokens
    ]
    for i in range(0, len(items), 1000):
        usage_record_batch(tenant=tenant, events=parse_batch(items[i : i + 1000]))
