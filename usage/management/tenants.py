"""What the event-store commands share: the tenants a run covers, times given as options."""

from __future__ import annotations

from datetime import UTC, datetime

from django.core.management.base import CommandError

from costmon.core.models import Tenant
from costmon.core.tenancy import unscoped


def tenants_chosen(slug: str | None) -> list[Tenant]:
    """Every tenant in id order, or only the one `--tenant` names (a clear error if none)."""
    with unscoped():
        tenants = Tenant.objects.order_by("pk")
        chosen = list(tenants.filter(slug=slug) if slug else tenants)
    if slug and not chosen:
        raise CommandError(f"No tenant {slug!r}.")
    return chosen


def moment_option(value: str | None, option: str) -> datetime | None:
    """An option's ISO date or time (UTC unless it says), None when not given."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{option}: not an ISO date or time: {value!r}") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)
