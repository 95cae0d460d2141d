from __future__ import annotations

import pytest
from celery import current_app
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from costmon.schedule import CLICKHOUSE_SCHEDULE, SCHEDULE, schedule_sync

pytestmark = pytest.mark.django_db


def test_every_entry_names_a_registered_task_and_says_why():
    from costmon.celery import app

    app.loader.import_default_modules()  # what a worker does at start (autodiscovery)
    for entry in [*SCHEDULE, *CLICKHOUSE_SCHEDULE]:
        assert entry.task in current_app.tasks, entry.task
        assert len(entry.why) > 40
        assert (entry.every is None) != (entry.cron is None)


def test_sync_creates_the_tasks_once_and_keeps_an_interval_staff_changed():
    assert schedule_sync()["created"] == len(SCHEDULE)
    assert schedule_sync() == {"created": 0, "updated": 0, "disabled": 0}
    task = PeriodicTask.objects.get(name="budgets: emergency stop rules")
    assert (task.interval.every, task.interval.period) == (60, "seconds")
    task.interval, _ = IntervalSchedule.objects.get_or_create(every=300, period="seconds")
    task.save()
    schedule_sync()
    task.refresh_from_db()
    assert task.interval.every == 300  # staff's choice stays


def test_sync_disables_a_task_the_code_no_longer_has():
    schedule_sync()
    report = schedule_sync(SCHEDULE[1:])
    assert report["disabled"] == 1
    assert PeriodicTask.objects.get(name=SCHEDULE[0].name).enabled is False


def test_the_clickhouse_reconcile_is_scheduled_only_with_the_clickhouse_store(settings):
    name = "usage: reconcile PostgreSQL's rollups with ClickHouse"
    settings.COSTMON_EVENT_STORE_URL = ""
    assert schedule_sync()["created"] == len(SCHEDULE)
    assert not PeriodicTask.objects.filter(name=name).exists()
    settings.COSTMON_EVENT_STORE_URL = "clickhouse://127.0.0.1:9000/costmon"
    assert schedule_sync() == {"created": 1, "updated": 0, "disabled": 0}
    task = PeriodicTask.objects.get(name=name)
    assert (task.task, task.interval.every, task.enabled) == (
        "usage.tasks.reconcile_store_rollups",
        600,
        True,
    )
    settings.COSTMON_EVENT_STORE_URL = ""  # the store switched back: the entry is disabled
    assert schedule_sync()["disabled"] == 1
