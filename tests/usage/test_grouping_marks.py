"""The marks of cached sums that grouped single events leave (usage.grouping, costmon.core.marks):
the committer runs them after the commits that asked for them, each once for many groups, and
only for the tenant whose past days changed; outside a committer they run at once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.db.models import Sum
from django.utils import timezone

from costmon.core.cache import cache_get, cache_get_many, cache_set
from costmon.web.prometheus import totals
from tests.helpers import event
from usage import grouping, settled
from usage.ingest import parse_batch
from usage.models import HourlyRollup, UsageEvent
from usage.services import usage_record_batch
from usage.signals import settled_sums_forgotten

pytestmark = [pytest.mark.usefixtures("prices", "unscoped")]
HAIKU = 1_350_000  # nano-USD of the default test event


@pytest.fixture(autouse=True)
def _kept_sums(settings: Any) -> None:
    settings.COSTMON_DASHBOARD_CACHE = True


@pytest.fixture
def midday() -> Any:
    """The clock at noon UTC: an event of now is of today, as seen with the receivers' ten
    minutes of margin (`settled.CLOCK_MARGIN`), which at 23:50 already reach tomorrow."""
    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        yield


@pytest.fixture
def forgotten() -> Any:
    """The tenants whose kept sums were forgotten, in order, with whether only recent days."""
    seen: list[tuple[int, bool]] = []

    def receiver(sender: Any, *, tenant_id: int, recent_only: bool, **kwargs: Any) -> None:
        seen.append((tenant_id, recent_only))

    settled_sums_forgotten.connect(receiver, dispatch_uid="test.forgotten")
    yield seen
    settled_sums_forgotten.disconnect(dispatch_uid="test.forgotten")


def waiting(tenant: Any, *event_ids: str, at: Any) -> Any:
    events = parse_batch([event(event_id=i, occurred_at=at.isoformat()) for i in event_ids])
    return grouping._Waiting(tenant, None, events)


def recent_marks(*tenants: Any) -> list[Any]:
    found = cache_get_many([settled._RECENT.format(t.pk) for t in tenants])
    assert found is not None
    return found


def stored(tenant: Any) -> tuple[int, int, int]:
    """(events, their cost, the rollups' calls) of a tenant."""
    events = UsageEvent.objects.for_tenant(tenant)
    calls = HourlyRollup.objects.for_tenant(tenant).aggregate(n=Sum("calls"))["n"]
    return events.count(), events.aggregate(c=Sum("cost_nanos"))["c"], calls


@pytest.mark.django_db
@pytest.mark.usefixtures("midday")
def test_a_groups_marks_wait_for_the_committers_run_and_go_once(acme, outsider, forgotten):
    late = timezone.now() - timedelta(days=2)  # a settled hour of a recent day
    settled.generations(acme.pk), settled.generations(outsider.pk)  # kept sums' marks exist
    cache_set(totals._STALE_KEY, False, 60)
    before = recent_marks(acme, outsider)
    committer = grouping.GroupCommitter()

    assert committer.commit([waiting(acme, "a", at=late)]) is False
    now = timezone.now()
    assert committer.commit([waiting(acme, "b", at=late), waiting(outsider, "o", at=now)]) is False
    # Stored, priced and counted at once; the marks wait, one each for the two groups.
    assert stored(acme) == (2, 2 * HAIKU, 2)
    assert stored(outsider) == (1, HAIKU, 1)
    assert len(committer.marks) == 2  # acme's recent days, Prometheus's settled hours
    assert recent_marks(acme, outsider) == before
    assert cache_get(totals._STALE_KEY) is False
    assert forgotten == []

    committer.run_marks()
    after = recent_marks(acme, outsider)
    assert after[0] != before[0]  # acme's kept sums of the recent days are forgotten, once
    assert after[1] == before[1]  # the outsider's (an event of today) are not
    assert forgotten == [(acme.pk, True)]
    assert cache_get(totals._STALE_KEY) is True
    committer.run_marks()  # nothing left
    assert forgotten == [(acme.pk, True)]


@pytest.mark.django_db
def test_outside_a_committer_a_late_event_forgets_the_sums_at_once(acme, outsider, forgotten):
    settled.generations(acme.pk), settled.generations(outsider.pk)
    before = recent_marks(acme, outsider)
    late = (timezone.now() - timedelta(days=2)).isoformat()
    usage_record_batch(tenant=acme, events=parse_batch([event(event_id="a", occurred_at=late)]))
    after = recent_marks(acme, outsider)
    assert (after[0] != before[0], after[1] == before[1]) == (True, True)
    assert forgotten == [(acme.pk, True)]


@pytest.mark.django_db(transaction=True)
def test_the_committer_runs_the_marks_left_when_it_stops(acme, outsider, forgotten, settings):
    settings.COSTMON_INGEST_GROUP_COMMIT = True
    old = timezone.now() - timedelta(days=10)  # before the recent days: all kept sums
    settled.generations(acme.pk), settled.generations(outsider.pk)
    committer = grouping.GroupCommitter(marks_seconds=3600, threads=1)
    try:
        # The first marks after a quiet while run right after their group (maybe after its
        # answer: a request does not wait for them), before the committer takes the next...
        committer.record(tenant=acme, events=waiting(acme, "a", at=old).events, api_key_id=None)
        committer.record(tenant=acme, events=waiting(acme, "b", at=old).events, api_key_id=None)
        assert forgotten == [(acme.pk, False)]
        first = cache_get_many([settled._GENERATION.format(t.pk) for t in (acme, outsider)])
        # ...whose marks wait for the committer's next run, here when it stops.
        assert len(committer.marks) == 2  # acme's kept sums, Prometheus's settled hours
    finally:
        committer.shutdown()
    assert forgotten == [(acme.pk, False), (acme.pk, False)]
    last = cache_get_many([settled._GENERATION.format(t.pk) for t in (acme, outsider)])
    assert first is not None and last is not None
    assert last[0] != first[0] and last[1] == first[1]
    assert stored(acme) == (2, 2 * HAIKU, 2)
    assert stored(outsider) == (0, None, None)
