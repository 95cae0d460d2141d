from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from costmon.core.services import tenant_create


class Command(BaseCommand):
    help = "Create a tenant: create_tenant <slug> [--name NAME] [--timezone Europe/Paris]"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", default="")
        parser.add_argument("--timezone", default="UTC", help="IANA time zone for calendar periods")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            tenant = tenant_create(
                slug=options["slug"], name=options["name"], timezone_name=options["timezone"]
            )
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        self.stdout.write(
            f"Created tenant {tenant.slug} ({tenant.name}, time zone {tenant.timezone})."
        )
