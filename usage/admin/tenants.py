"""The tenant admin, with the usage app's re-pricing action."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from costmon.core.admin import TenantAdmin as CoreTenantAdmin
from costmon.core.admin import plural
from costmon.core.models import Tenant
from costmon.core.periods import tenant_zone
from usage.eventstore.base import RewriteUnavailable
from usage.maintenance import usage_reprice

# --- tenants: re-pricing ------------------------------------------------------------------------


class RepriceForm(forms.Form):
    start = forms.DateField(label="First day", widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(
        label="Last day (included)", widget=forms.DateInput(attrs={"type": "date"})
    )
    only_unpriced = forms.BooleanField(
        required=False,
        initial=True,
        label="Only events stored unpriced",
        help_text="Untick after correcting a price, to price every event in the range again. "
        "Costs the caller reported are always kept.",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("start"), data.get("end")
        if start and end and end < start:
            self.add_error("end", "The last day must not be before the first day.")
        return data


def local_days(tenant: Tenant, first: date, last: date) -> tuple[datetime, datetime]:
    """[start, end) of whole calendar days in the tenant's time zone, last day included."""
    tz = tenant_zone(tenant)
    return (
        datetime.combine(first, time(), tzinfo=tz),
        datetime.combine(last + timedelta(days=1), time(), tzinfo=tz),
    )


class TenantAdmin(CoreTenantAdmin):
    """The core's tenant admin, with the usage app's re-pricing action."""

    actions = ("reprice_usage",)

    @admin.action(description="Re-price usage in a date range…", permissions=["change"])
    def reprice_usage(
        self, request: HttpRequest, queryset: QuerySet[Tenant]
    ) -> HttpResponse | None:
        if "apply" in request.POST:
            form = RepriceForm(request.POST)
            if form.is_valid():
                data = form.cleaned_data
                for tenant in queryset:
                    start, end = local_days(tenant, data["start"], data["end"])
                    try:
                        report = usage_reprice(
                            tenant=tenant,
                            start=start,
                            end=end,
                            only_unpriced=data["only_unpriced"],
                        )
                    except RewriteUnavailable as exc:
                        self.message_user(request, exc.message, messages.ERROR)
                        return None
                    self.message_user(
                        request,
                        f"{tenant.slug}: {plural(report.changed, 'event')} re-priced of "
                        f"{report.examined:,} examined; {report.still_unpriced:,} still unpriced.",
                        messages.SUCCESS,
                    )
                return None
        else:
            form = RepriceForm()
        context = {
            **self.admin_site.each_context(request),
            "title": "Re-price usage",
            "opts": self.opts,
            "form": form,
            "tenants": queryset,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/costmon/tenant/reprice.html", context)
