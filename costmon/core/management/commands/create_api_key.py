from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from costmon.core.models import Tenant
from costmon.core.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a tenant; the key is the last line printed (shown only once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant_slug")
        parser.add_argument("--scopes", default="ingest", help="comma-separated: ingest,read,admin")
        parser.add_argument("--name", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant_slug"]).first()
        if tenant is None:
            raise CommandError(
                f"No tenant {options['tenant_slug']!r}. Create it with `manage.py create_tenant "
                f"{options['tenant_slug']}`."
            )
        try:
            issued = api_key_create(tenant=tenant, scopes=options["scopes"], name=options["name"])
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        scopes = ",".join(issued.api_key.scopes)
        self.stdout.write(
            f"API key {issued.api_key.prefix} for {tenant.slug} with scopes {scopes}."
        )
        self.stdout.write("Store it now: it is not shown again.")
        self.stdout.write(issued.secret)
