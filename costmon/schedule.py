"""Every periodic task in one list, each with why it runs that often.

`schedule_sync()` writes the list into django-celery-beat's tables (the beat process runs it
at start, and `manage.py sync_schedule` does it by hand), so staff can change an interval in
Django admin; a sync never overwrites an interval staff changed, it only adds what is missing
and disables what the code no longer has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask


@dataclass(frozen=True)
class Periodic:
    name: str
    task: str
    why: str
    every: timedelta | None = None
    cron: dict[str, str] | None = None  # minute, hour, day_of_week, day_of_month, month_of_year
    kwargs: dict[str, Any] = field(default_factory=dict)


SCHEDULE: list[Periodic] = [
    Periodic(
        "alerts: threshold rules",
        "alerts.tasks.evaluate_frequent_rules",
        "Spend, budget, rate and unpriced-model rules read rollups and counters, which cost "
        "little: a minute is how late a person may hear that a threshold was crossed. It only "
        "queues a task per tenant due (new usage, changed rules or budgets, a midnight, a "
        "cooldown ending, or an hour since its last round: alerts.rounds), so workers share it.",
        every=timedelta(minutes=1),
    ),
    Periodic(
        "alerts: projections and spikes",
        "alerts.tasks.evaluate_hourly_rules",
        "Spikes compare whole hours and projections move slowly: hourly, a few minutes after the "
        "hour so the last hour's events are in; a task per tenant with such rules.",
        cron={"minute": "5"},
    ),
    Periodic(
        "budgets: rebuild stale counters",
        "budgets.tasks.reconcile_counters",
        "A tenant whose counters missed an update while Redis was away must be correct again "
        "within a minute; tenants not marked stale cost nothing.",
        every=timedelta(minutes=1),
        kwargs={"only_stale": True},
    ),
    Periodic(
        "budgets: sweep counter updates",
        "budgets.tasks.sweep_counter_updates",
        "A batch whose process died between its commit and its counter update must reach the "
        "counters within a minute: every 20 seconds, updates older than 5 seconds that were "
        "never applied are applied (once), and expired reservation holds go.",
        every=timedelta(seconds=20),
    ),
    Periodic(
        "budgets: sample counter drift",
        "budgets.tasks.sample_counter_drift",
        "Counters that drift for any other reason (a re-pricing, a bug, a hand edit) are found "
        "within five minutes for tenants with recent ingest, rather than at the nightly rebuild; "
        "a sample is a few reads per tenant, and only a tenant that drifted is rebuilt.",
        every=timedelta(minutes=5),
    ),
    Periodic(
        "budgets: emergency stop rules",
        "budgets.tasks.check_emergency_stop_rules",
        "Ingest trips stops as spend arrives; this catches spend that arrived while a check "
        "could not run. A minute is the longest a runaway may go unnoticed.",
        every=timedelta(minutes=1),
    ),
    Periodic(
        "budgets: close expired stops",
        "budgets.tasks.close_expired_emergency_stops",
        "Checks already ignore an expired stop; this records the lift in the history and tells "
        "the alerts app within a minute.",
        every=timedelta(minutes=1),
    ),
    Periodic(
        "budgets: rebuild all counters",
        "budgets.tasks.reconcile_counters",
        "Nightly proof that Redis agrees with PostgreSQL; any drift corrected is logged.",
        cron={"minute": "15", "hour": "3"},
    ),
    Periodic(
        "usage: retention",
        "usage.tasks.apply_retention",
        "Raw events past COSTMON_RETENTION_DAYS go at night, when ingest is lightest; rollups "
        "(and every total built on them) stay.",
        cron={"minute": "45", "hour": "3"},
    ),
    Periodic(
        "usage: event partitions ahead",
        "usage.tasks.create_event_partitions",
        "PostgreSQL keeps raw events in monthly partitions: this month's and the next two exist "
        "before their first event, so live ingest never creates one (a backfill of an old month "
        "creates its own). Daily, so a missed run or a new database is covered within a day.",
        cron={"minute": "40", "hour": "3"},
    ),
    Periodic(
        "alerts: daily cost report",
        "alerts.tasks.send_daily_reports",
        "Yesterday's spend in people's inboxes before the working day starts (07:00 UTC); one "
        "email per tenant to its email channels.",
        cron={"minute": "0", "hour": "7"},
    ),
    Periodic(
        "dashboard: keep viewed overviews warm",
        "costmon.web.dashboard.warmup.refresh_viewed_overviews",
        "An overview's past days are summed once and kept for an hour; this sums them again "
        "before they expire, and after the tenant's midnight, for tenants someone looked at in "
        "the last four hours, so their next view is fast. Each tenant is refreshed at most "
        "every 40 minutes; tenants nobody looks at cost nothing.",
        every=timedelta(minutes=10),
    ),
    Periodic(
        "usage: price unpriced events",
        "usage.tasks.reprice_unpriced_usage",
        "Loading a price already prices waiting events; this hourly pass catches prices edited "
        "directly in the database.",
        every=timedelta(hours=1),
    ),
    Periodic(
        "usage: sync the price catalog",
        "usage.tasks.sync_prices",
        "Providers change prices and add models every week; a daily sync from "
        "COSTMON_PRICES_URL (when set) keeps new models from arriving unpriced. Early morning "
        "UTC, before the day's report is built; it does nothing without the setting.",
        cron={"minute": "30", "hour": "5"},
    ),
]

# Only with the ClickHouse event store (COSTMON_EVENT_STORE_URL set): `schedule_entries`.
CLICKHOUSE_SCHEDULE: list[Periodic] = [
    Periodic(
        "usage: reconcile PostgreSQL's rollups with ClickHouse",
        "usage.tasks.reconcile_store_rollups",
        "A batch whose PostgreSQL COMMIT failed after ClickHouse took its events is missing from "
        "PostgreSQL's rollups and the budget counters, and a retry (repaired at once) may never "
        "come: every 10 minutes the last COSTMON_CLICKHOUSE_RECONCILE_HOURS hours are compared "
        "(one query per shard and one in PostgreSQL) and only a tenant that is short is rebuilt.",
        every=timedelta(minutes=10),
    ),
]


def schedule_entries() -> list[Periodic]:
    """The periodic tasks of this deployment: SCHEDULE, and the event store's."""
    if settings.COSTMON_EVENT_STORE_URL:
        return [*SCHEDULE, *CLICKHOUSE_SCHEDULE]
    return list(SCHEDULE)


def schedule_sync(entries: list[Periodic] | None = None) -> dict[str, int]:
    entries = schedule_entries() if entries is None else entries
    report = {"created": 0, "updated": 0, "disabled": 0}
    with transaction.atomic():
        for entry in entries:
            task = PeriodicTask.objects.filter(name=entry.name).first()
            kwargs = json.dumps(entry.kwargs, sort_keys=True)
            if task is None:
                task = PeriodicTask(name=entry.name)
                if entry.every is not None:
                    task.interval, _ = IntervalSchedule.objects.get_or_create(
                        every=int(entry.every.total_seconds()), period=IntervalSchedule.SECONDS
                    )
                else:
                    task.crontab, _ = CrontabSchedule.objects.get_or_create(
                        **(entry.cron or {}), timezone="UTC"
                    )
                report["created"] += 1
            elif (task.task, task.kwargs, task.description, task.enabled) != (
                entry.task,
                kwargs,
                entry.why,
                True,
            ):
                report["updated"] += 1
            else:
                continue
            task.task, task.kwargs, task.description, task.enabled = (
                entry.task,
                kwargs,
                entry.why,
                True,
            )
            task.save()
        names = {e.name for e in entries}
        stale = (
            PeriodicTask.objects.filter(enabled=True, description__gt="")
            .exclude(name__in=names)
            .exclude(name__startswith="celery.")
        )
        report["disabled"] = stale.update(enabled=False)
    return report
