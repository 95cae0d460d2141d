"""One tenant's events as the deployment's event store holds them, in admin: listed newest first
(filtered, paged by cursor, as the event API does) and deleted by key through
`usage_events_delete`, so rollups and budget counters follow (on ClickHouse, the rewrite outbox
of `usage.storerewrites`). It works on every store; with ClickHouse it replaces the usual events
list, whose PostgreSQL table is empty there.

Staff choose one tenant: every store reads one tenant's events at a time (ClickHouse keeps each
tenant on one shard), and a list across tenants would be a scan of every event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from costmon.core.admin import plural
from costmon.core.errors import DomainError, ServiceUnavailable
from costmon.core.models import Tenant
from costmon.core.money import format_usd
from costmon.core.periods import EARLIEST, LATEST
from usage.event_queries import UsageFilters
from usage.eventstore.base import RewriteUnavailable, event_query
from usage.eventstore.current import event_store
from usage.maintenance import usage_events_delete
from usage.models import CostSource, UsageEvent

PER_PAGE = 50
KEY_FIELD = "key"
TEMPLATE = "admin/usage/usageevent/store_events.html"


class StoreEventsForm(forms.Form):
    """The list's filters (GET). Text fields refuse NUL characters (Django's default)."""

    tenant = forms.CharField(max_length=100, help_text="The tenant's slug.")
    event_id = forms.CharField(
        max_length=128, required=False, label="Event id", help_text="Exact; other filters unused."
    )
    status = forms.ChoiceField(
        choices=[("", "any"), ("success", "success"), ("error", "error")], required=False
    )
    cost_source = forms.ChoiceField(
        choices=[("", "any"), *((label, label) for _, label in CostSource.choices)],
        required=False,
        label="Cost source",
    )
    provider = forms.CharField(max_length=200, required=False)
    model = forms.CharField(max_length=200, required=False)
    end_user = forms.CharField(max_length=200, required=False, label="End user")
    cursor = forms.CharField(max_length=1000, required=False, widget=forms.HiddenInput)

    def clean_tenant(self) -> Tenant:
        slug = self.cleaned_data["tenant"].strip()
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise forms.ValidationError(f"No tenant {slug!r}.")
        return tenant


def key_value(event: UsageEvent) -> str:
    """An event's key as the delete checkbox sends it: its time (ISO, UTC), `|`, its id."""
    return f"{event.occurred_at.astimezone(UTC).isoformat()}|{event.event_id}"


def parse_keys(values: list[str]) -> list[tuple[str, datetime]]:
    """The checked keys (`key_value`); a malformed one is a clear 400."""
    keys = []
    for value in values:
        at_text, sep, event_id = value.partition("|")
        try:
            at = datetime.fromisoformat(at_text)
        except ValueError:
            at = None
        if (
            not sep
            or not event_id
            or len(event_id) > 128
            or "\x00" in event_id
            or at is None
            or at.tzinfo is None
            or not EARLIEST <= at < LATEST
        ):
            raise DomainError(f"Not an event key: {value[:200]!r}.", field=KEY_FIELD)
        keys.append((event_id, at.astimezone(UTC)))
    return list(dict.fromkeys(keys))


class StoreEventsMixin:
    """Adds the view to `UsageEventAdmin` (`store_events_urls`)."""

    admin_site: admin.AdminSite
    model: type[UsageEvent]

    def store_events_url(self, **params: Any) -> str:
        url = reverse("admin:usage_usageevent_store")
        query = {k: v for k, v in params.items() if v not in (None, "")}
        return f"{url}?{urlencode(query)}" if query else url

    def can_delete_stored(self, request: HttpRequest) -> bool:
        return bool(request.user.is_superuser)

    def store_events_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):  # type: ignore[attr-defined]
            raise PermissionDenied
        if request.method == "POST":
            return self._store_delete(request)
        form = StoreEventsForm(request.GET if "tenant" in request.GET else None)
        context: dict[str, Any] = {"form": form, "events": [], "next_url": None, "rows": []}
        status = 200
        if form.is_bound and not form.is_valid():
            status = 400
        elif form.is_bound:
            try:
                self._fill(form.cleaned_data, context)
            except DomainError as error:  # a bad cursor (400), the store unreachable (503)
                messages.error(request, error.message)
                status = int(error.status_code)
        return self._render(request, context, status)

    def _fill(self, data: dict[str, Any], context: dict[str, Any]) -> None:
        tenant: Tenant = data["tenant"]
        store = event_store()
        if data["event_id"]:
            found = store.lookup(tenant, data["event_id"], None)
            events, next_cursor = ([found] if found else []), None
        else:
            query = event_query(
                time_range=None,
                filters=UsageFilters(
                    provider=data["provider"] or None,
                    model=data["model"] or None,
                    end_user=data["end_user"] or None,
                ),
                status=data["status"] or None,
                cost_source=data["cost_source"] or None,
            )
            page = store.page(tenant, query, data["cursor"] or None, PER_PAGE)
            events, next_cursor = page.events, page.next_cursor
        filters = {k: v for k, v in data.items() if k not in ("tenant", "cursor")}
        context.update(
            tenant=tenant,
            events=events,
            rows=[
                {
                    "event": e,
                    "key": key_value(e),
                    "cost": format_usd(e.cost_nanos),
                    "source": e.get_cost_source_display(),
                    "status": "error" if e.is_error else "success",
                }
                for e in events
            ],
            first_url=self.store_events_url(tenant=tenant.slug, **filters)
            if data["cursor"]
            else None,
            next_url=self.store_events_url(tenant=tenant.slug, cursor=next_cursor, **filters)
            if next_cursor
            else None,
        )

    def _store_delete(self, request: HttpRequest) -> HttpResponse:
        if not self.can_delete_stored(request):
            raise PermissionDenied
        slug = request.POST.get("tenant", "")
        valid = 0 < len(slug) <= 100 and "\x00" not in slug  # PostgreSQL refuses NUL
        tenant = Tenant.objects.filter(slug=slug).first() if valid else None
        if tenant is None:
            messages.error(request, "Choose a tenant first.")
            return self._render(request, {"form": StoreEventsForm()}, 400)
        back = self.store_events_url(tenant=tenant.slug)
        try:
            keys = parse_keys(request.POST.getlist(KEY_FIELD))
        except DomainError as error:
            messages.error(request, error.message)
            return self._render(request, {"form": StoreEventsForm()}, 400)
        if not keys:
            messages.warning(request, "No events were selected: nothing was deleted.")
            return HttpResponseRedirect(back)
        if "confirm" not in request.POST:
            context = {"tenant": tenant, "keys": keys, "values": request.POST.getlist(KEY_FIELD)}
            return self._render(request, context, 200, confirm=True)
        try:
            deleted = usage_events_delete(tenant=tenant, keys=keys)
        except (RewriteUnavailable, ServiceUnavailable) as error:
            messages.error(request, error.message)
        else:
            messages.success(
                request,
                f"Deleted {plural(deleted, 'event')} of {tenant.slug}; the rollups of their "
                "hours were rebuilt.",
            )
        return HttpResponseRedirect(back)

    def _render(
        self, request: HttpRequest, context: dict[str, Any], status: int, confirm: bool = False
    ) -> HttpResponse:
        store = event_store()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Delete events?" if confirm else f"Events in the {store.label} event store",
            "store": store,
            "confirm": confirm,
            "can_delete": self.can_delete_stored(request),
            "key_field": KEY_FIELD,
            "per_page": PER_PAGE,
            **context,
        }
        return TemplateResponse(request, TEMPLATE, context, status=status)
