"""A committed batch reaches the spend counters exactly once, even when its process is killed
between the commit and the counter update (a real SIGKILL at that point): the next sweep (beat
runs it every 20 seconds) applies it, and neither a second sweep nor a rebuild counts it again."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import time_machine
from django.conf import settings
from django.db import connection
from django.utils import timezone

from budgets import counters
from budgets import redis as bredis
from budgets.counter_update import MARKER_KEEP_SECONDS, Update, marker_key
from budgets.models import CounterState, CounterUpdate
from budgets.services import budget_create
from budgets.tasks import reconcile_counters, sweep_counter_updates
from budgets.updates import counter_updates_sweep
from costmon.core.tenancy import unscoped
from costmon.schedule import SCHEDULE
from tests.budgets.conftest import NOW, check
from tests.helpers import event, post_usage, requires_redis
from usage.models import UsageEvent

pytestmark = [
    requires_redis,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("prices"),
]
ROOT = Path(__file__).resolve().parents[2]
HAIKU = 1_350_000  # nano-USD of the default test event

# Ingests a batch with the counter update replaced by a SIGKILL of its own process: the batch
# is committed, its counter update never runs.
KILLED_AFTER_COMMIT = """
import json, os, signal, sys
import django, time_machine
time_machine.travel(sys.argv[3], tick=True).start()  # the test's clock, where it is now
django.setup()
from costmon.core.models import Tenant
from costmon.core.tenancy import unscoped
from usage import services
from usage.ingest import parse_batch
from usage.signals import batch_recorded

def killed(sender, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

assert batch_recorded.disconnect(dispatch_uid="budgets.counter_update_apply")
batch_recorded.connect(killed, dispatch_uid="tests.killed_after_commit")
with unscoped():
    tenant = Tenant.objects.get(slug=sys.argv[1])
services.usage_record_batch(tenant=tenant, events=parse_batch(json.loads(sys.argv[2])))
print("the process survived its batch")
"""


@pytest.fixture(autouse=True)
def _frozen_clock():
    """The suite's noon (`tests.budgets.conftest`) on a clock that runs (the sweeper leaves
    updates younger than 5 s: the wait for them is real), as the processes it starts run
    (`ingest_and_die`): the events, the counters and the day budget are of one day whenever
    the test runs, however long it takes (not two days around midnight)."""
    with time_machine.travel(NOW, tick=True) as traveller:
        yield traveller


# The day of every event of the module, and of the counters read.
DAY = datetime.fromisoformat(NOW).date()


def now_iso() -> str:
    at = timezone.now().astimezone(UTC)
    assert at.date() == DAY
    return at.isoformat()


def ingest_and_die(tenant_slug: str, events: list[dict]) -> None:
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "costmon.settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
        "DATABASE_ROLE": os.environ.get("DATABASE_ROLE", "costmon_app"),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": "tests-only-secret-key",
    }
    process = subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-c",
            KILLED_AFTER_COMMIT,
            tenant_slug,
            json.dumps(events),
            timezone.now().isoformat(),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == -signal.SIGKILL, process.stdout + process.stderr


def day_total(tenant) -> int:
    return int(bredis.client().hget(counters.day_key(tenant.pk, DAY), "t") or 0)


def global_day_total() -> int:
    return int(bredis.client().hget(counters.global_day_key(DAY), "t") or 0)


def stored_total(tenant) -> int:
    with unscoped():
        return sum(UsageEvent.objects.for_tenant(tenant).values_list("cost_nanos", flat=True))


@pytest.fixture
def trusted(acme, outsider):
    counters.counters_reconcile(tenant=acme)
    counters.counters_reconcile(tenant=outsider)


def test_a_batch_whose_process_was_killed_after_the_commit_is_counted_by_the_next_sweep(
    acme, outsider, ingest_client, outsider_client, trusted
):
    budget_create(
        tenant=acme,
        data={"name": "cap", "period": "day", "limit_usd": Decimal("1"), "enforcement": "hard"},
    )
    post_usage(ingest_client, event(event_id="before", occurred_at=now_iso()))
    post_usage(outsider_client, event(event_id="theirs", occurred_at=now_iso()))
    held = check(ingest_client, estimated_cost_usd="0.5", reserve=True).json()
    assert held["budgets"][0]["reserved_usd"] == "0.5"
    batch = [event(event_id=f"lost-{i}", occurred_at=now_iso()) for i in range(3)]
    batch[0]["reservation_id"] = held["reservation_id"]

    ingest_and_die("acme", batch)

    assert stored_total(acme) == 4 * HAIKU  # committed
    assert day_total(acme) == HAIKU  # the process died before counting it
    with unscoped():
        assert CounterUpdate.objects.for_tenant(acme).count() == 2  # its update, and "before"'s
    assert check(ingest_client).json()["budgets"][0]["reserved_usd"] == "0.5"

    time.sleep(5)  # the sweeper leaves updates younger than 5 s to their own process
    started = time.monotonic()
    sweep_counter_updates()  # what beat runs every 20 seconds
    assert time.monotonic() - started < 5

    assert day_total(acme) == stored_total(acme) == 4 * HAIKU
    assert global_day_total() == 5 * HAIKU  # acme's four and the outsider's one
    state = check(ingest_client).json()["budgets"][0]
    assert (state["used_usd"], state["reserved_usd"]) == ("0.0054", "0")  # settled too
    with unscoped():
        assert not CounterUpdate.objects.unscoped().exists()
    assert counters.counters_reconcile(tenant=acme).corrected == 0  # nothing left to correct

    sweep_counter_updates()  # exactly once: a second sweep changes nothing
    assert day_total(acme) == 4 * HAIKU
    assert day_total(outsider) == HAIKU  # the outsider never saw acme's batch


def test_the_sweep_interval_is_well_within_a_minute():
    [entry] = [e for e in SCHEDULE if e.task == "budgets.tasks.sweep_counter_updates"]
    assert entry.every is not None and entry.every.total_seconds() + 5 < 60


def test_an_update_reads_back_as_written_whatever_its_names():
    """The stored payload (msgspec's JSON) reads back exactly, non-ASCII names included."""
    update = Update(
        days={date(2026, 12, 3): {"t": 7, "u:jos\u00e9": 5, "x:\u2028team\u00e9": 2}},
        utc_days={date(2026, 12, 3): {"t": 7, "h:14": 7}},
        settle=["e", "id-\u00e9", "r", "res-1"],
    )
    text = update.to_json()
    assert Update.from_json(text) == update
    assert json.loads(text) == json.loads(
        json.dumps(
            {
                "d": {"20261203": update.days[date(2026, 12, 3)]},
                "g": {"20261203": update.utc_days[date(2026, 12, 3)]},
                "s": update.settle,
            }
        )
    )


def test_a_rebuild_absorbs_an_update_its_process_never_applied(acme, outsider, trusted):
    ingest_and_die("acme", [event(event_id="lost", occurred_at=now_iso())])
    assert (day_total(acme), global_day_total()) == (0, 0)

    report = counters.counters_reconcile(tenant=acme)

    # Applied as the update it is, before the hashes are compared: not drift.
    assert report.corrected == 0
    assert (day_total(acme), global_day_total()) == (HAIKU, HAIKU)
    with unscoped():
        assert not CounterUpdate.objects.unscoped().exists()
    assert counter_updates_sweep(min_age_seconds=0).applied == 0
    assert (day_total(acme), global_day_total()) == (HAIKU, HAIKU)


def test_an_update_applied_by_its_process_is_not_applied_again(
    acme, outsider, ingest_client, trusted
):
    post_usage(ingest_client, event(event_id="a", occurred_at=now_iso()))
    with unscoped():
        [update] = CounterUpdate.objects.for_tenant(acme)
    assert bredis.client().exists(marker_key(acme.pk, update.pk))
    report = counter_updates_sweep(min_age_seconds=0)
    assert (report.applied, report.removed) == (0, 1)
    assert day_total(acme) == HAIKU
    # The marker goes a while after its row: a late update of its batch still finds it.
    assert 0 < bredis.client().ttl(marker_key(acme.pk, update.pk)) <= MARKER_KEEP_SECONDS


def test_an_update_that_failed_to_reach_redis_is_counted_once_when_redis_is_back(
    acme, outsider, ingest_client, trusted
):
    original = settings.REDIS_URL
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # Redis is away for this batch
    assert post_usage(ingest_client, event(event_id="a", occurred_at=now_iso())).status_code == 201
    settings.REDIS_URL = original
    bredis.reset_breaker()
    with unscoped():
        assert CounterState.objects.for_tenant(acme).exists()
    # Back in Redis, this process first withdraws its trust in acme's counters (they missed
    # the batch): the check reads PostgreSQL and asks for a rebuild.
    assert check(ingest_client).json()["source"] == "database"

    counter_updates_sweep(min_age_seconds=0)
    reconcile_counters(only_stale=True)  # both run every minute or less, in either order

    assert day_total(acme) == global_day_total() == HAIKU
    assert counters.counters_trusted(bredis.client(), acme.pk)
    assert check(ingest_client).json()["source"] == "redis"


def test_an_update_left_pending_too_long_is_rebuilt_instead_of_applied(acme, outsider, trusted):
    ingest_and_die("acme", [event(event_id="lost", occurred_at=now_iso())])
    with unscoped():
        CounterUpdate.objects.unscoped().update(created_at=timezone.now() - timedelta(minutes=31))
    # Its marker may have expired by now: applying it could count it twice.
    assert counter_updates_sweep().applied == 0
    with unscoped():
        assert CounterState.objects.for_tenant(acme).exists()
    reconcile_counters(only_stale=True)
    assert day_total(acme) == HAIKU
    with unscoped():
        assert not CounterUpdate.objects.unscoped().exists()


def test_a_sweep_records_the_tenants_it_saw_as_active(acme, outsider, ingest_client, trusted):
    post_usage(ingest_client, event(event_id="a", occurred_at=now_iso()))
    counter_updates_sweep(min_age_seconds=0)
    active = {int(t) for t in bredis.client().zrange("cm:active", 0, -1)}
    assert active == {acme.pk}


def loaded(script: str) -> bool:
    """Whether Redis holds `budgets/lua/<script>.lua` (by its digest)."""
    digest = hashlib.sha1((ROOT / "budgets" / "lua" / f"{script}.lua").read_bytes()).hexdigest()  # noqa: S324 - Redis names scripts so
    return bredis.client().script_exists(digest) == [True]


def test_a_redis_that_forgot_the_scripts_still_counts_and_checks(
    acme, outsider, ingest_client, trusted
):
    """Scripts are called by their digest; a Redis restarted (or SCRIPT FLUSHed) since they
    were loaded answers NOSCRIPT, and the script is loaded again rather than the call failing
    (the counters would then wait for a rebuild, and checks for PostgreSQL)."""
    post_usage(ingest_client, event(event_id="a", occurred_at=now_iso()))
    bredis.client().script_flush()
    post_usage(ingest_client, event(event_id="b", occurred_at=now_iso()))
    assert loaded("record")
    assert day_total(acme) == 2 * HAIKU == stored_total(acme)
    assert day_total(outsider) == 0
    assert check(ingest_client).status_code == 200
    bredis.client().script_flush()
    assert check(ingest_client).json()["allowed"] is True
    assert loaded("check")
