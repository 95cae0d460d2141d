"""A batch's counter update (`budgets.updates.update_of`): its events summed per group of
everything but the end user and per end user apart, the fields named once per group. The
amounts must be each field's exact sum, whatever the mix of end users, hours and tags."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from budgets.services import budget_create
from budgets.updates import update_of
from tests.helpers import requires_redis
from usage.signals import RecordedRow

pytestmark = [requires_redis, pytest.mark.django_db, pytest.mark.usefixtures("unscoped")]


def row(event_id: str, at: str, end_user: str, cost: int, **fields: Any) -> RecordedRow:
    return RecordedRow(
        event_id=event_id,
        occurred_at=datetime.fromisoformat(at).replace(tzinfo=UTC),
        provider=fields.get("provider", "anthropic"),
        model=fields.get("model", "claude-haiku-4-5"),
        operation="chat",
        end_user=end_user,
        api_key_id=fields.get("api_key_id", 0),
        tags=fields.get("tags"),
        cost_nanos=cost,
        cost_source=1,
        reservation_id=fields.get("reservation_id"),
    )


def test_each_field_is_the_exact_sum_of_its_events(acme, outsider):
    for tenant in (acme, outsider):
        budget_create(
            tenant=tenant,
            data={"name": "search", "scope": "tag", "scope_value": "team=search", "limit_usd": 1},
        )
    rows = [
        row("a", "2026-11-20T10:15:00", "ann", 1_350_000, tags={"team": "search"}, api_key_id=7),
        row("b", "2026-11-20T10:45:00", "bob", 2_000_001, tags={"team": "search"}, api_key_id=7),
        row("c", "2026-11-20T11:05:00", "ann", 5, tags={"team": "ops", "env": "prod"}),
        row("d", "2026-11-21T09:00:00", "bob", 1_000_000, model="claude-haiku-4-5-20251001"),
        row("free", "2026-11-21T09:30:00", "cyd", 0, reservation_id="r-1"),  # adds no field
    ]
    update = update_of(acme, rows)
    haiku = "m:claude-haiku-4-5"
    assert update.days == {
        date(2026, 11, 20): {
            "t": 3_350_006,
            "h:10": 3_350_001,
            "h:11": 5,
            "p:anthropic": 3_350_006,
            "o:chat": 3_350_006,
            "u:ann": 1_350_005,
            "u:bob": 2_000_001,
            "k:7": 3_350_001,
            haiku: 3_350_006,
            "g:team=search": 3_350_001,
            "g:team=ops": 5,
        },
        date(2026, 11, 21): {
            "t": 1_000_000,
            "h:09": 1_000_000,
            "p:anthropic": 1_000_000,
            "o:chat": 1_000_000,
            "u:bob": 1_000_000,
            "m:claude-haiku-4-5-20251001": 1_000_000,
            haiku: 1_000_000,
        },
    }
    assert update.utc_days == {
        date(2026, 11, 20): {"t": 3_350_006, "h:10": 3_350_001, "h:11": 5},
        date(2026, 11, 21): {"t": 1_000_000, "h:09": 1_000_000},
    }
    assert update.settle == ["e", "a", "e", "b", "e", "c", "e", "d", "r", "r-1"]
    # The outsider's update from its own rows holds nothing of acme's.
    theirs = update_of(outsider, [row("o", "2026-11-20T10:15:00", "zed", 9)])
    assert theirs.days == {
        date(2026, 11, 20): {
            "t": 9,
            "h:10": 9,
            "p:anthropic": 9,
            "o:chat": 9,
            "u:zed": 9,
            haiku: 9,
        }
    }
