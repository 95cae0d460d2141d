"""Admin for the spend counters' state: rebuilds due and drift corrected (read only)."""

from __future__ import annotations

from django.contrib import admin

from budgets.models import (
    CounterCorrection,
    CounterState,
)
from costmon.core.admin import ReadOnlyAdminMixin, TenantOwnedAdmin
from costmon.core.money import format_money


@admin.register(CounterState)
class CounterStateAdmin(ReadOnlyAdminMixin, TenantOwnedAdmin):
    """Tenants whose Redis counters missed an update; the next reconcile rebuilds them."""

    list_display = ("tenant", "stale_since")
    list_select_related = ("tenant",)
    ordering = ("stale_since",)


@admin.register(CounterCorrection)
class CounterCorrectionAdmin(ReadOnlyAdminMixin, TenantOwnedAdmin):
    """Drift found in counters checks were trusting, corrected from PostgreSQL (Prometheus:
    costmon_counter_drift_corrected_usd_total)."""

    list_display = ("tenant", "corrected_at", "cause", "fields", "drift")
    list_filter = ("tenant", "cause")
    list_select_related = ("tenant",)
    ordering = ("-corrected_at",)

    @admin.display(description="drift", ordering="drift_nanos")
    def drift(self, obj: CounterCorrection) -> str:
        return format_money(obj.drift_nanos)
