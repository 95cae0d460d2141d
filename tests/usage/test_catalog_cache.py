"""The process's copy of the price catalog: the global list is indexed once and shared by every
tenant, each tenant adds only its own rates and aliases, and a price write reaches all of them."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from django.db import connection
from django.test.utils import CaptureQueriesContext

from costmon.core.tenancy import unscoped
from usage.catalog import bump_version, catalog_for
from usage.models import ModelPrice

WHEN = datetime(2026, 11, 20, tzinfo=UTC)


def _input_rate(tenant_id: int, model: str = "gpt-4o") -> Decimal | None:
    price = catalog_for(tenant_id).price_at("openai", model, WHEN)
    return price.rates.input if price is not None else None


def test_a_second_tenants_catalog_reads_only_its_own_rows(acme, outsider, prices, settings):
    settings.COSTMON_CATALOG_TTL_SECONDS = 30  # without Redis, copies live this long (tests: 0)
    assert _input_rate(acme.pk) == Decimal("2.50")  # loads the global list once
    with CaptureQueriesContext(connection) as queries:
        assert _input_rate(outsider.pk) == Decimal("2.50")
    global_reads = [q["sql"] for q in queries if "IS NULL" in q["sql"] and "modelprice" in q["sql"]]
    assert global_reads == [], "the global list is read again for another tenant"
    assert len(queries) <= 3  # its held changes, its own rates, its aliases


def test_a_tenants_own_rate_stays_its_own_on_the_shared_list(acme, outsider, prices):
    with unscoped():
        ModelPrice.objects.create(
            tenant=acme,
            provider="openai",
            model="gpt-4o",
            effective_from=datetime(2025, 1, 1, tzinfo=UTC),
            input_per_mtok=Decimal("2.00"),
            output_per_mtok=Decimal("8"),
        )
    bump_version()
    assert _input_rate(acme.pk) == Decimal("2.00")
    assert _input_rate(outsider.pk) == Decimal("2.50")  # the outsider keeps the list price
    assert _input_rate(acme.pk, "gpt-4o-2024-08-06") == Decimal("2.50")  # the family's pattern


def test_a_list_price_written_after_loading_reaches_every_tenant(acme, outsider, prices):
    assert (_input_rate(acme.pk), _input_rate(outsider.pk)) == (Decimal("2.50"), Decimal("2.50"))
    with unscoped():
        ModelPrice.objects.create(
            provider="openai",
            model="gpt-4o",
            effective_from=datetime(2026, 1, 1, tzinfo=UTC),
            input_per_mtok=Decimal("3.00"),
            output_per_mtok=Decimal("12"),
        )
    bump_version()
    assert (_input_rate(acme.pk), _input_rate(outsider.pk)) == (Decimal("3.00"), Decimal("3.00"))
