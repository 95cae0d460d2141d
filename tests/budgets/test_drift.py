"""Counters cannot drift silently: a periodic sample compares recently active tenants'
counters with PostgreSQL, rebuilds those that differ, logs the drift and exports it."""

from __future__ import annotations

import logging
from datetime import date, datetime
from decimal import Decimal

import pytest
from django.test import Client

from budgets import counters
from budgets import redis as bredis
from budgets.drift import counters_sample, counters_sample_drift
from budgets.models import CounterCorrection
from budgets.tasks import sample_counter_drift
from budgets.updates import counter_updates_sweep
from costmon.core.tenancy import unscoped
from tests.costmon.test_prometheus import TOKEN, parse, value
from tests.helpers import event, post_usage, requires_redis
from usage.maintenance import usage_reprice
from usage.models import ModelPrice

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.usefixtures("prices", "ready"),
    requires_redis,
]
TODAY = date(2026, 11, 21)
HAIKU = 1_350_000


def today_event(**fields):
    return event(occurred_at="2026-11-21T11:00:00Z", **fields)


@pytest.fixture
def active(acme, outsider, ingest_client, outsider_client):
    """Both tenants ingested a moment ago (the sweeper saw their updates)."""
    post_usage(ingest_client, [today_event(event_id="a"), today_event(event_id="b")])
    post_usage(outsider_client, today_event(event_id="g"))
    counter_updates_sweep(min_age_seconds=0)


def r():
    return bredis.client()


def metrics(settings) -> dict:
    settings.COSTMON_METRICS_TOKEN = TOKEN
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    return parse(response.content.decode())


def test_drift_in_trusted_counters_is_found_corrected_logged_and_exported(
    acme, outsider, active, settings, caplog
):
    day = counters.day_key(acme.pk, TODAY)
    r().hincrby(day, "t", -5_000)  # the counters lost 5,000 nano-USD somewhere
    r().hincrby(day, "u:user-1", 70)
    assert value(metrics(settings), "costmon_counter_drift_corrected_usd_total", tenant="acme") == 0

    with caplog.at_level(logging.WARNING):
        assert sample_counter_drift() == 1  # what beat runs every 5 minutes

    assert int(r().hget(day, "t")) == 2 * HAIKU  # corrected
    assert int(r().hget(day, "u:user-1")) == 2 * HAIKU
    with unscoped():
        [correction] = CounterCorrection.objects.for_tenant(acme)
        assert (correction.cause, correction.fields, correction.drift_nanos) == ("sample", 2, 5_070)
        assert not CounterCorrection.objects.for_tenant(outsider).exists()
    assert any("counters_drift_corrected" in record.getMessage() for record in caplog.records)
    samples = metrics(settings)
    assert value(samples, "costmon_counter_drift_corrected_usd_total", tenant="acme") == 5.07e-06
    assert value(samples, "costmon_counter_drift_corrected_usd_total", tenant="globex") == 0


def test_counters_that_agree_are_compared_and_left_alone(acme, outsider, active):
    samples = {s.tenant: s for s in counters_sample_drift()}
    assert set(samples) == {"acme", "globex"}
    assert samples["acme"].compared > 5 and samples["acme"].differing == 0
    with unscoped():
        assert not CounterCorrection.objects.unscoped().exists()


def test_drift_only_in_the_months_total_is_found(acme, outsider, active):
    month = counters.bucket_key(acme.pk, "m:202611")
    r().hincrby(month, "t", 1)
    sample = counters_sample(tenant=acme)
    assert sample is not None and (sample.differing, sample.corrected_nanos) == (1, 1)
    assert int(r().hget(month, "t")) == 2 * HAIKU


def test_a_repricing_the_counters_missed_is_found_by_the_next_sample(acme, outsider, active):
    with unscoped():
        ModelPrice.objects.filter(model="claude-haiku-4-5").update(input_per_mtok=Decimal(2))
    from usage import catalog

    catalog.clear_local()
    usage_reprice(
        tenant=acme,
        start=datetime.fromisoformat("2026-11-21T00:00:00+00:00"),
        end=datetime.fromisoformat("2026-11-22T00:00:00+00:00"),
    )
    sample = counters_sample(tenant=acme)
    assert sample is not None and sample.differing
    repriced = 450 * 2_000 + 180 * 5_000  # 1,800,000 nano-USD an event now
    assert int(r().hget(counters.day_key(acme.pk, TODAY), "t")) == 2 * repriced
    with unscoped():
        [correction] = CounterCorrection.objects.for_tenant(acme)
        assert correction.drift_nanos > 0


def test_only_recently_active_tenants_are_sampled(acme, outsider, active, _frozen_clock):
    _frozen_clock.shift(16 * 60)  # 16 minutes without ingest
    r().hincrby(counters.day_key(acme.pk, TODAY), "t", 1)
    assert counters_sample_drift() == []


def test_counters_being_rebuilt_are_not_drift(acme, outsider, active):
    r().delete(counters.ok_key(acme.pk))
    r().hincrby(counters.day_key(acme.pk, TODAY), "t", 1)
    assert counters_sample(tenant=acme) is None
    counters.counters_reconcile(tenant=acme)  # the rebuild that is due
    with unscoped():
        assert not CounterCorrection.objects.unscoped().exists()


def test_a_rebuild_after_a_flush_is_not_drift(acme, outsider, active):
    r().flushdb()
    counters.counters_reconcile(tenant=acme)
    assert int(r().hget(counters.day_key(acme.pk, TODAY), "t")) == 2 * HAIKU
    with unscoped():
        assert not CounterCorrection.objects.unscoped().exists()


def test_the_nightly_rebuild_records_drift_it_corrects(acme, outsider, active):
    r().hincrby(counters.day_key(acme.pk, TODAY), "t", 7)
    from budgets.tasks import reconcile_counters

    reconcile_counters()
    with unscoped():
        [correction] = CounterCorrection.objects.for_tenant(acme)
        assert (correction.cause, correction.drift_nanos) == ("rebuild", 7)


def test_a_zone_with_half_hours_counts_as_the_rollups_do_so_is_not_drift(
    acme, outsider, ingest_client
):
    """18:45 UTC is 00:15 the next day in Kolkata, but it lands in the 18:00 UTC rollup, which
    begins at 23:30 there: the counters, the database and a rebuild all count it on the 21st."""
    from costmon.core.models import Tenant

    Tenant.objects.filter(pk=acme.pk).update(timezone="Asia/Kolkata")
    acme.refresh_from_db()
    counters.counters_reconcile(tenant=acme)
    post_usage(ingest_client, event(event_id="late", occurred_at="2026-11-20T18:45:00Z"))
    counter_updates_sweep(min_age_seconds=0)
    day = counters.day_key(acme.pk, date(2026, 11, 20))
    assert (int(r().hget(day, "t")), r().hget(day, "h:23")) == (HAIKU, str(HAIKU).encode())
    assert counters.counters_reconcile(tenant=acme).corrected == 0
