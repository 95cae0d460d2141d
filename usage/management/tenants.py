"""What the event-store commands share: the tenants a run covers."""

from __future__ import annotations

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
