"""Price syncs (the record of each catalog load) and the price changes held for a tenant's review."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from costmon.core.admin import ReadOnlyAdminMixin, TenantOwnedAdmin, plural
from usage.eventstore.base import RewriteUnavailable
from usage.models import (
    PriceChangeHold,
    PriceSync,
)
from usage.prices import price_hold_decide


class PriceChangeHoldInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = PriceChangeHold
    fields = ("tenant", "status", "decided_by", "decided_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[PriceChangeHold]:
        return PriceChangeHold.objects.unscoped().select_related("tenant")


class PriceSyncAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The change record of every catalog load: what was added and changed (old and new
    prices), and the tenants that wait to approve the changes."""

    allow_delete = True

    list_display = (
        "started_at",
        "owner",
        "source",
        "catalog_version",
        "status",
        "added",
        "changed",
        "unchanged",
        "missing",
        "waiting",
    )
    list_filter = ("status", "format")
    inlines = (PriceChangeHoldInline,)
    fields = (
        "started_at",
        "tenant",
        "source",
        "format",
        "catalog_version",
        "status",
        "added",
        "changed",
        "unchanged",
        "missing",
        "aliases_added",
        "error",
        "changes",
    )
    readonly_fields = fields
    ordering = ("-started_at",)

    @admin.display(description="tenant")
    def owner(self, obj: PriceSync) -> str:
        return obj.tenant.slug if obj.tenant_id else "global"  # type: ignore[union-attr]

    @admin.display(description="awaiting approval")
    def waiting(self, obj: PriceSync) -> int:
        return (
            PriceChangeHold.objects.unscoped()
            .filter(sync=obj, status=PriceChangeHold.Status.PENDING)
            .count()
        )

    @admin.display(description="changes")
    def changes(self, obj: PriceSync) -> str:
        rows = [("changed", c) for c in obj.details.get("changed", [])] + [
            ("added", c) for c in obj.details.get("added", [])
        ]
        if not rows:
            return "—"
        return format_html(
            "<table><thead><tr><th>what</th><th>model</th><th>tier</th><th>before</th>"
            "<th>after (USD per 1M tokens)</th></tr></thead><tbody>{}</tbody></table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (
                        what,
                        c["provider"],
                        c["model"],
                        c["service_tier"],
                        _rates_text(c.get("old")),
                        _rates_text(c["new"]),
                    )
                    for what, c in rows[:500]
                ),
            ),
        )


def _rates_text(rates: dict[str, str | None] | None) -> str:
    if not rates:
        return "—"
    return ", ".join(
        f"{name.removesuffix('_per_mtok')} {value}"
        for name, value in rates.items()
        if value not in (None, "0")
    )


class PriceChangeHoldAdmin(ReadOnlyAdminMixin, TenantOwnedAdmin):
    """Changed catalog prices waiting for approval by tenants that review changes first."""

    allow_change = True  # approve and reject

    list_display = ("tenant", "sync", "status", "decided_by", "decided_at", "created_at")
    list_filter = ("status", "tenant")
    list_select_related = ("tenant", "sync")
    actions = ("approve", "reject")
    fields = ("tenant", "sync", "status", "decided_by", "decided_at", "created_at")
    readonly_fields = fields

    @admin.action(
        description="Approve: charge these tenants the new prices", permissions=["change"]
    )
    def approve(self, request: HttpRequest, queryset: QuerySet[PriceChangeHold]) -> None:
        self._decide(request, queryset, approve=True)

    @admin.action(description="Reject: keep the old prices", permissions=["change"])
    def reject(self, request: HttpRequest, queryset: QuerySet[PriceChangeHold]) -> None:
        self._decide(request, queryset, approve=False)

    def _decide(
        self, request: HttpRequest, queryset: QuerySet[PriceChangeHold], *, approve: bool
    ) -> None:
        try:
            done = sum(
                price_hold_decide(hold=hold, approve=approve, by=request.user.get_username())
                for hold in queryset.select_related("tenant", "sync")
            )
        except RewriteUnavailable as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        verb = "approved" if approve else "rejected"
        self.message_user(
            request,
            f"{plural(done, 'change set')} {verb}"
            + ("; their events since each sync were priced again." if approve and done else "."),
            messages.SUCCESS,
        )
