"""A cheaper model is only suggested when it is current in the catalog: no retirement date (past
or future), still listed by the newest load of the price list its row came from (a retired
model's row stays for the events it priced), and of the same mode; the recommendation names the
catalog row it priced the suggestion with. The issue's case: claude-sonnet-4-5 work was offered
the retired claude-3-haiku.

Prices: claude-sonnet-4-5 $3 / $15, claude-3-haiku $0.25 / $1.25, claude-haiku-4-5 $1 / $5 (the
conftest's row). The usage: 10 summarize calls of 100,000 input and 10,000 output tokens on
claude-sonnet-4-5, $0.45 each, $4.50 in all.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
import time_machine

from costmon.core import tenancy
from costmon.core.models import Tenant
from costmon.core.money import format_money
from tests.helpers import event, post_usage
from usage import catalog
from usage.models import ModelPrice
from usage.prices import PriceList, prices_sync
from usage.recommendations import KIND_CHEAPER_MODEL, recommendations

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LIST = "https://prices.example/catalog.json"


def row(model: str, inp: str, out: str, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "anthropic",
        "model": model,
        "mode": "chat",
        "input_per_mtok": inp,
        "output_per_mtok": out,
        "effective_from": "2024-01-01T00:00:00Z",
        **extra,
    }


SONNET = row("claude-sonnet-4-5", "3", "15")
OLD_HAIKU = row("claude-3-haiku", "0.25", "1.25")
HAIKU = row("claude-haiku-4-5", "1", "5")


def load(rows: list[dict[str, Any]], source: str = LIST) -> None:
    with tenancy.unscoped():
        prices_sync(price_list=PriceList(rows=[dict(r) for r in rows], source=source), now=NOW)
    catalog.clear_local()


@pytest.fixture(autouse=True)
def _frozen_clock() -> Any:
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def sonnet_work(acme: Tenant, outsider: Tenant, ingest_client: Any, outsider_client: Any) -> None:
    load([SONNET, OLD_HAIKU, HAIKU])
    batch = [
        event(
            event_id=f"s{i}",
            occurred_at="2026-11-20T10:00:00Z",
            model="claude-sonnet-4-5",
            operation="summarize",
            input_tokens=100_000,
            output_tokens=10_000,
        )
        for i in range(10)
    ]
    assert post_usage(ingest_client, batch).status_code == 201
    # globex's usage changes nothing in acme's recommendations.
    assert post_usage(outsider_client, batch[:1]).status_code == 201


def suggestion(tenant: Tenant) -> Any:
    with tenancy.tenant_context(tenant):
        found = [r for r in recommendations(tenant=tenant, now=NOW) if r.kind == KIND_CHEAPER_MODEL]
    return found[0] if found else None


def price_id(model: str) -> int:
    with tenancy.unscoped():
        return ModelPrice.objects.unscoped().get(provider="anthropic", model=model).pk


def test_a_model_still_on_the_list_is_suggested_with_its_price_row(sonnet_work, acme):
    rec = suggestion(acme)
    # The same tokens on claude-3-haiku: 10 x (100,000 x $0.25 + 10,000 x $1.25) / 1M = $0.375.
    assert rec.saving_nanos == 4_500_000_000 - 375_000_000
    assert f"on claude-3-haiku (anthropic) would cost {format_money(375_000_000)} " in rec.text
    assert f"(catalog row #{price_id('claude-3-haiku')})" in rec.text


def test_a_model_the_newest_load_of_its_list_dropped_is_never_suggested(sonnet_work, acme):
    load([SONNET, HAIKU])  # the list no longer has claude-3-haiku; its row stays
    with tenancy.unscoped():
        assert ModelPrice.objects.unscoped().filter(model="claude-3-haiku").exists()
    rec = suggestion(acme)
    # claude-haiku-4-5 instead: 10 x (100,000 x $1 + 10,000 x $5) / 1M = $1.50.
    assert rec.saving_nanos == 4_500_000_000 - 1_500_000_000
    assert "claude-3-haiku" not in rec.text
    assert f"on claude-haiku-4-5 (anthropic) would cost {format_money(1_500_000_000)} " in rec.text
    assert f"(catalog row #{price_id('claude-haiku-4-5')})" in rec.text


def test_a_small_list_from_another_source_retires_nothing(sonnet_work, acme):
    load([SONNET], source="/etc/costmon/overrides.json")  # lists one model only
    assert "on claude-3-haiku (anthropic)" in suggestion(acme).text


def test_a_model_listed_again_is_current_again(sonnet_work, acme):
    load([SONNET, HAIKU])
    load([SONNET, OLD_HAIKU, HAIKU])
    assert "on claude-3-haiku (anthropic)" in suggestion(acme).text


def test_a_model_with_an_announced_retirement_is_not_suggested(sonnet_work, acme):
    # Retiring next month: not current advice, though it still prices calls today.
    load([SONNET, row("claude-3-haiku", "0.25", "1.25", deprecation_date="2026-12-31"), HAIKU])
    with tenancy.unscoped():
        dates = set(
            ModelPrice.objects.unscoped()
            .filter(model="claude-3-haiku")
            .values_list("deprecation_date", flat=True)
        )
    assert date(2026, 12, 31) in dates
    rec = suggestion(acme)
    assert "claude-3-haiku" not in rec.text and "on claude-haiku-4-5" in rec.text
