from __future__ import annotations

import io
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from costmon.core.exceptions import DomainError
from costmon.core.models import Tenant
from costmon.core.periods import CALENDAR_PERIODS as PERIODS
from costmon.core.periods import custom_range, period_range
from usage import statements
from usage.reports import (
    FORMATS,
    build_report,
    json_document,
    render_table,
    write_csv,
)
from usage.selectors import today


class Command(BaseCommand):
    help = (
        "Print what tenants spent on LLM APIs in a period: totals, then spend by day, provider, "
        "model, operation and top end users. With --statement: one end user's or one tag "
        "value's chargeback statement for a calendar month (calls, tokens and cost by model, "
        "with the tenant's markup)."
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
        parser.add_argument(
            "--statement",
            metavar="KEY=VALUE",
            help="a chargeback statement for end_user=<id> or <tag>=<value> "
            "(e.g. customer=acme-corp) instead of the report",
        )
        parser.add_argument(
            "--month",
            help="the statement's calendar month, YYYY-MM (default: this month, tenant's zone)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        period, start, end = options["period"], options["start"], options["end"]
        fmt = options["format"]
        # call_command(period=...) skips argparse's choices: check again.
        if fmt not in FORMATS:
            raise CommandError(f"Unknown format {fmt!r}; use table, csv or json.")
        if options.get("statement") is not None:
            if period or start or end:
                raise CommandError(
                    "A statement covers a calendar month: give --month YYYY-MM, not "
                    "--period, --start or --end."
                )
            self._statements(options["statement"], options.get("month"), options["tenant"], fmt)
            return
        if options.get("month"):
            raise CommandError("--month goes with --statement; for a report use --period month.")
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

    def _statements(self, subject_text: str, month: str | None, slug: str | None, fmt: str) -> None:
        """Every named tenant's statement; without --tenant, those of the tenants where the
        subject has usage in the month."""
        try:
            subject = statements.parse_subject(subject_text)
            first = statements.parse_month(month) if month else None
        except DomainError as exc:
            message = exc.message.replace("Name whose statement", "--statement")
            if exc.field == "month":
                message = f"--month: {message}"
            raise CommandError(message) from None
        tenants = Tenant.objects.order_by("slug")
        if slug:
            tenants = tenants.filter(slug=slug)
            if not tenants:
                raise CommandError(f"No tenant {slug!r}.")
        found = []
        for tenant in tenants:
            st = statements.statement_for(
                tenant=tenant, subject=subject, month=first or today(tenant).replace(day=1)
            )
            if slug or st.lines:
                found.append(st)
        if fmt == "json":
            document = {"statements": [statements.statement_json(st) for st in found]}
            self.stdout.write(json.dumps(document, indent=2))
        elif fmt == "csv":
            buffer = io.StringIO()
            statements.write_csv(found, buffer, line_end="\n")
            self.stdout.write(buffer.getvalue(), ending="")
        elif found:
            self.stdout.write("\n\n\n".join(statements.render_text(st) for st in found))
        else:
            self.stdout.write(f"No usage for {subject} in {month or 'this month'} in any tenant.")


# --- json -----------------------------------------------------------------------------------
