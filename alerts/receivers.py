"""How the alerts app reacts to what the budgets app tells it (connected in alerts.apps)."""

from __future__ import annotations

from typing import Any

from alerts.services import on_emergency_stop
from budgets.signals import EmergencyStopChanged


def announce_emergency_stop(sender: Any, *, event: EmergencyStopChanged, **kwargs: Any) -> None:
    """A stop tripped or lifted: raise it on the emergency-stop alert rules it affects."""
    on_emergency_stop(event.stop, event.change)
