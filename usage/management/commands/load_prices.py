from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from costmon.exceptions import DomainError
from costmon.models import Tenant
from usage.services import prices_load, read_price_file

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "data" / "prices.json"


class Command(BaseCommand):
    help = "Load or update the price catalog from a JSON or CSV file (the shipped one by default)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", nargs="?", default=str(DEFAULT_FILE))
        parser.add_argument("--tenant", help="load as this tenant's negotiated prices")

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["file"]
        if not Path(path).is_file():
            raise CommandError(f"No file {path}.")
        tenant = None
        if options["tenant"]:
            tenant = Tenant.objects.filter(slug=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"No tenant {options['tenant']!r}.")
        try:
            report = prices_load(rows=read_price_file(path), tenant=tenant)
        except DomainError as exc:
            raise CommandError(exc.message) from None
        owner = f"tenant {tenant.slug}" if tenant else "the global catalog"
        self.stdout.write(
            f"Loaded {path} into {owner}: {report.created} created, {report.updated} updated, "
            f"{report.unchanged} unchanged."
        )
        self.stdout.write(
            "Events stored without a price are priced by a background task as prices appear."
        )
