"""The Celery application. Tasks are thin: fetch by id, call a service."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import beat_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "costmon.settings")

app = Celery("costmon")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@beat_init.connect
def _sync_schedule(sender: object, **kwargs: object) -> None:
    """The beat process starts from the schedule in code (costmon/schedule.py)."""
    # Imported here: this module loads with the costmon package, before Django's app registry
    # is ready, and the schedule imports django-celery-beat's models.
    from costmon.schedule import schedule_sync

    schedule_sync()
