"""The process's copy of the price catalog: the global list is indexed once and shared by every
tenant, each tenant adds only its own rates and aliases, and a price write reaches all of them."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from costmon.core.tenancy import unscoped
from tests.helpers import event, requires_redis
from usage.catalog import VERSION_KEY, bump_version, catalog_for
from usage.ingest import parse_batch
from usage.models import ModelPrice
from usage.services import usage_record_batch

WHEN = datetime(2026, 11, 20, tzinfo=UTC)


def gpt4o(**fields: object) -> dict[str, object]:
    return event(provider="openai", model="gpt-4o", input_tokens=1200, output_tokens=300, **fields)


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


@requires_redis
def test_ingest_reads_no_price_until_another_process_changes_one(acme, outsider, prices, settings):
    """With the shared cache, batches are priced from the process's copy (no catalog query,
    however many batches and however long apart) until a price write anywhere bumps the
    version: the next batch is then priced at the new rate, to the nano-dollar."""
    settings.COSTMON_SHARED_RECHECK_MS = 0  # compare the version before every batch
    usage_record_batch(tenant=acme, events=parse_batch([gpt4o(event_id="warm")]))
    with CaptureQueriesContext(connection) as queries:
        for i in range(3):
            for tenant in (acme, outsider):
                usage_record_batch(tenant=tenant, events=parse_batch([gpt4o(event_id=f"e{i}")]))
    catalog_reads = [q["sql"] for q in queries if "usage_modelprice" in q["sql"]]
    assert not [q for q in catalog_reads if "IS NULL" in q], "the global list was read again"
    assert len(catalog_reads) <= 1  # the outsider's own rows, once
    with unscoped():
        ModelPrice.objects.create(
            provider="openai",
            model="gpt-4o",
            effective_from=datetime(2026, 1, 1, tzinfo=UTC),
            input_per_mtok=Decimal("3.00"),
            output_per_mtok=Decimal("12"),
        )
    # Another process's write: the shared version moves, this process's copy is untouched.
    cache.set(VERSION_KEY, "written-elsewhere", None)
    [acme_result] = usage_record_batch(tenant=acme, events=parse_batch([gpt4o(event_id="new")]))
    [outsider_result] = usage_record_batch(
        tenant=outsider, events=parse_batch([gpt4o(event_id="new")])
    )
    # 1,200 input tokens at $3.00 and 300 output at $12 per million: $0.0072.
    assert acme_result.cost_nanos == outsider_result.cost_nanos == 7_200_000
