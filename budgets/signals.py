"""What the budgets app tells the apps above it, sent after the change commits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import structlog
from django.dispatch import Signal

from budgets.models import CounterUpdate, EmergencyStop

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class EmergencyStopChanged:
    stop: EmergencyStop
    change: Literal["tripped", "lifted"]


# An emergency stop was tripped or lifted (by hand, by a rule, or by expiring). Sent with
# `event` (an EmergencyStopChanged) once the change has committed; a receiver that raises is
# logged and does not stop the others (see budgets.emergency_stop).
emergency_stop_changed = Signal()

# Usage reached the spend counters, so what reads them (the alerts app's rules) may change. Sent
# with `tenant_id` and `in_ingest`:
# - `in_ingest=False`: the counter updates of the tenant's ingest batches were applied and their
#   rows removed (the sweeper, `budgets.updates.settle_updates`; a counter rebuild). Until then
#   the rows themselves say that usage is pending (`budgets.models.CounterUpdate`). Sent
#   robustly: a receiver that raises is logged.
# - `in_ingest=True`: there are no counters (no Redis), so no rows either: sent for each ingest
#   batch from inside its transaction, before it commits (`usage.signals.batch_committing`). A
#   receiver should write without reading back (its statement rides in the batch's round trip);
#   one that raises rolls the batch back.
usage_counted = Signal()


def usage_counted_send(tenant_id: int) -> None:
    """`usage_counted` for counter updates applied and removed (robustly: logged if a receiver
    raises)."""
    for receiver, result in usage_counted.send_robust(
        sender=CounterUpdate, tenant_id=tenant_id, in_ingest=False
    ):
        if isinstance(result, Exception):
            log.error(
                "usage_counted_hook_failed",
                hook=getattr(receiver, "__name__", repr(receiver)),
                exc_info=result,
            )
