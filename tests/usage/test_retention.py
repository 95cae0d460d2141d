from __future__ import annotations

import pytest
import time_machine
from django.db.models import Sum

from costmon.core.tenancy import tenant_context
from tests.helpers import event, post_usage, stored_events
from usage.models import ModelHourlyRollup
from usage.tasks import apply_retention

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]


def test_old_raw_events_go_and_rollups_stay(
    acme, outsider, ingest_client, outsider_client, settings, store
):
    settings.COSTMON_RETENTION_DAYS = 30
    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        post_usage(
            ingest_client,
            [event(event_id="old", occurred_at="2026-09-30T10:00:00Z"), event(event_id="new")],
        )
        post_usage(
            outsider_client, event(event_id="theirs-old", occurred_at="2026-09-30T10:00:00Z")
        )
        assert apply_retention() == 2
    with tenant_context(acme):
        assert [e.event_id for e in stored_events(acme)] == ["new"]
        assert ModelHourlyRollup.objects.aggregate(s=Sum("cost_nanos"))["s"] == 2 * 1_350_000
    with tenant_context(outsider):
        assert stored_events(outsider) == []


def test_zero_days_keeps_everything(acme, ingest_client, settings, store):
    settings.COSTMON_RETENTION_DAYS = 0
    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        post_usage(ingest_client, event(occurred_at="2000-01-02T00:00:00Z"))
        assert apply_retention() == 0
    with tenant_context(acme):
        assert len(stored_events(acme)) == 1
