from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from costmon.core.exceptions import DomainError
from costmon.core.models import Tenant
from usage.prices import price_sync_failed, prices_sync, read_price_list

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "data" / "prices.json"
FORMATS = ("costmon", "litellm", "models.dev")


class Command(BaseCommand):
    help = (
        "Load or sync the price catalog from a price list (the bundled catalog by default): "
        "new models are added, a changed price becomes a new row from now on, nothing is "
        "deleted, and the change record shows under Price syncs in the admin."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "source",
            nargs="?",
            default=str(DEFAULT_FILE),
            help="a file or an http(s) URL (default: the bundled catalog)",
        )
        parser.add_argument(
            "--format",
            choices=FORMATS,
            default="costmon",
            help="costmon's JSON/CSV (default), LiteLLM's model_prices_and_context_window.json, "
            "or models.dev's api.json",
        )
        parser.add_argument("--tenant", help="load as this tenant's negotiated prices")

    def handle(self, *args: Any, **options: Any) -> None:
        source, format = options["source"], options["format"]
        tenant = None
        if options["tenant"]:
            tenant = Tenant.objects.filter(slug=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"No tenant {options['tenant']!r}.")
        try:
            price_list = read_price_list(source, format)
            if source == str(DEFAULT_FILE):
                price_list.source = "bundled catalog"
            sync = prices_sync(price_list=price_list, tenant=tenant)
        except DomainError as exc:
            if tenant is None:
                price_sync_failed(source=source, format=format, error=exc.message)
            raise CommandError(exc.message) from None
        owner = f"tenant {tenant.slug}" if tenant else "the global catalog"
        self.stdout.write(
            f"Loaded {price_list.source} into {owner}: {sync.added} added, {sync.changed} "
            f"changed, {sync.unchanged} unchanged, {sync.missing} no longer listed (kept)."
        )
        if sync.changed:
            self.stdout.write(
                "Changed prices apply from now on; earlier events keep the price they had. "
                "The change record is under Price syncs in the admin."
            )
        if sync.added:
            self.stdout.write("Events stored without a price are priced by a background task.")
