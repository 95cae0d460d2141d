from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from costmon.core.exceptions import DomainError
from costmon.core.models import Tenant
from costmon.core.periods import CALENDAR_PERIODS as PERIODS
from costmon.core.periods import custom_range, period_range
from usage.reports import (
    FORMATS,
    build_report,
    json_document,
    render_table,
    write_csv,
)


class Command(BaseCommand):
    help = (
        "Print what tenants spent on LLM APIs in a period: totals, then spend by day, provider, "
        "model, operation and top end users."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--period",
            choices=PERIODS,
            help="the calendar day, week or month so far (default month)",
        )
        parser.add_argument("--start", help="date or date-time, in the tenant's time zone")
        parser.add_argument(
            "--end", help="exclusive date-time, or a date whose whole day is included (default now)"
        )
        parser.add_argument("--tenant", help="one tenant's slug (default: every tenant)")
        parser.add_argument("--format", choices=FORMATS, default="table")

    def handle(self, *args: Any, **options: Any) -> None:
        period, start, end = options["period"], options["start"], options["end"]
        fmt = options["format"]
        # call_command(period=...) skips argparse's choices: check again.
        if fmt not in FORMATS:
            raise CommandError(f"Unknown format {fmt!r}; use table, csv or json.")
        if period is not None and period not in PERIODS:
            raise CommandError(
                f"Unknown period {period!r}; use day, week or month (or --start and --end)."
            )
        if period and start:
            raise CommandError("Give either --period or --start/--end, not both.")
        if end and not start:
            raise CommandError("Give --start with --end.")

        tenants = Tenant.objects.order_by("slug")
        if options["tenant"]:
            tenants = tenants.filter(slug=options["tenant"])
            if not tenants:
                raise CommandError(f"No tenant {options['tenant']!r}.")

        reports = []
        for tenant in tenants:
            try:
                if start:
                    time_range = custom_range(tenant=tenant, start=start, end=end)
                else:
                    time_range = period_range(tenant=tenant, period=period or "month")
            except DomainError as exc:
                message = exc.message
                if exc.field and message.startswith(f"{exc.field} "):
                    message = f"--{message}"  # the selector names the API's parameters
                raise CommandError(message) from None
            reports.append(build_report(tenant=tenant, time_range=time_range))

        if fmt == "json":
            self.stdout.write(json.dumps(json_document(reports), indent=2))
        elif fmt == "csv":
            write_csv(reports, self.stdout)
        else:
            self.stdout.write(render_table(reports) if reports else "No tenants.")


# --- json -----------------------------------------------------------------------------------
