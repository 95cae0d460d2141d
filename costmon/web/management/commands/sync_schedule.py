from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from costmon.schedule import schedule_entries, schedule_sync


class Command(BaseCommand):
    help = "Write the periodic task list into django-celery-beat (keeps intervals staff changed)."

    def handle(self, *args: Any, **options: Any) -> None:
        report = schedule_sync()
        self.stdout.write(
            f"{len(schedule_entries())} periodic tasks: {report['created']} created, {report['updated']} updated, "
            f"{report['disabled']} no longer in the code disabled."
        )
