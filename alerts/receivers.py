"""How the alerts app reacts to what the apps below tell it (connected in alerts.apps)."""

from __future__ import annotations

from typing import Any

from alerts.rounds import rounds_mark_changed, rounds_mark_changed_in_batch
from alerts.services import on_emergency_stop
from budgets.signals import EmergencyStopChanged
from usage.signals import BulkLoaded


def announce_emergency_stop(sender: Any, *, event: EmergencyStopChanged, **kwargs: Any) -> None:
    """A stop tripped or lifted: raise it on the emergency-stop alert rules it affects."""
    on_emergency_stop(event.stop, event.change)


def usage_counted(sender: Any, *, tenant_id: int, in_ingest: bool, **kwargs: Any) -> None:
    """New usage reached what the rules read: the tenant's next round of frequent rules is due.
    Marked once the counter updates were applied and swept, not by each ingest batch (a
    statement less in each of their transactions); until then the pending updates keep the
    tenant due (`alerts.rounds`). Without counters, in the batch's transaction (no round trip
    of its own)."""
    if in_ingest:
        rounds_mark_changed_in_batch(tenant_id=tenant_id)
    else:
        rounds_mark_changed(tenant_id=tenant_id)


def bulk_loaded(sender: Any, *, load: BulkLoaded, **kwargs: Any) -> None:
    rounds_mark_changed(tenant_id=load.tenant.pk)


def usage_rewritten(sender: Any, *, tenant_id: int, **kwargs: Any) -> None:
    """Re-priced, deleted or reset usage may raise or clear alerts."""
    rounds_mark_changed(tenant_id=tenant_id)
