"""What the usage app tells the apps above it, sent after the change commits."""

from __future__ import annotations

from django.dispatch import Signal

# A tenant's stored usage changed other than by ingest: events were re-priced, deleted or reset.
# Sent with `tenant_id` once the change has committed; anything kept beside the events (the
# budgets app's spend counters) must be rebuilt from them.
usage_rewritten = Signal()
