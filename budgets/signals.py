"""What the budgets app tells the apps above it, sent after the change commits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from django.dispatch import Signal

from budgets.models import EmergencyStop


@dataclass(frozen=True)
class EmergencyStopChanged:
    stop: EmergencyStop
    change: Literal["tripped", "lifted"]


# An emergency stop was tripped or lifted (by hand, by a rule, or by expiring). Sent with
# `event` (an EmergencyStopChanged) once the change has committed; a receiver that raises is
# logged and does not stop the others (see budgets.emergency_stop).
emergency_stop_changed = Signal()
