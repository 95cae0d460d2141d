"""Staff's admin for tenants, memberships and API keys.

Admin is staff's tool for every tenant: `StaffAdminMiddleware` runs its requests unscoped, and
each tenant-owned admin below also reads through `objects.unscoped()`, so the cross-tenant read
is named where it happens rather than inherited from the middleware.
"""

from __future__ import annotations

import zoneinfo
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse

from costmon.core.models import ApiKey, Membership, Tenant
from costmon.core.services import api_key_create, api_key_revoke


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


class TenantOwnedAdmin(admin.ModelAdmin):
    """Base for models with a tenant: staff see every tenant's rows, through an explicit
    unscoped read (the default manager fails closed outside a tenant context)."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        qs = self.model.objects.unscoped()
        ordering = self.get_ordering(request)
        return qs.order_by(*ordering) if ordering else qs


class ReadOnlyAdminMixin:
    """For rows only services write (alerts, notifications, syncs, counter records): staff
    read them, and add, change and delete are off unless the admin turns one back on with
    `allow_add`, `allow_change` or `allow_delete` (then the usual permissions apply)."""

    allow_add = False
    allow_change = False
    allow_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if not self.allow_add:
            return False
        if isinstance(self, admin.options.InlineModelAdmin):
            return bool(super().has_add_permission(request, obj))  # type: ignore[misc]
        return bool(super().has_add_permission(request))  # type: ignore[misc]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.allow_change and bool(super().has_change_permission(request, obj))  # type: ignore[misc]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.allow_delete and bool(super().has_delete_permission(request, obj))  # type: ignore[misc]


# --- tenants ----------------------------------------------------------------------------------


class TenantForm(forms.ModelForm):
    class Meta:
        model = Tenant
        fields = ("slug", "name", "timezone", "prices_auto_apply", "statement_markup_percent")

    def clean_timezone(self) -> str:
        name = self.cleaned_data["timezone"].strip()
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise forms.ValidationError(
                f"Unknown time zone {name!r}; use an IANA name such as Europe/Paris."
            ) from None
        return name


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    form = TenantForm
    list_display = ("slug", "name", "timezone", "prices_auto_apply", "created_at")
    search_fields = ("slug", "name")
    readonly_fields = ("created_at",)

    def has_delete_permission(self, request: HttpRequest, obj: Tenant | None = None) -> bool:
        # Deleting a tenant cascades to every event it ever sent; admin's confirmation page
        # would list millions of rows. That is a job for a command, not a button.
        return False


# --- memberships ------------------------------------------------------------------------------


@admin.register(Membership)
class MembershipAdmin(TenantOwnedAdmin):
    list_display = ("tenant", "user", "role", "created_at")
    list_filter = ("role", "tenant")
    search_fields = ("user__username", "tenant__slug")
    list_select_related = ("tenant", "user")
    autocomplete_fields = ("tenant", "user")
    readonly_fields = ("created_at",)


# --- API keys ---------------------------------------------------------------------------------


class RevokedFilter(admin.SimpleListFilter):
    title = "revoked"
    parameter_name = "revoked"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(revoked_at__isnull=True)
        return queryset


class ApiKeyAddForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=ApiKey.Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=[ApiKey.Scope.INGEST],
        help_text="ingest: send usage; read: read costs; admin: change budgets (implies read).",
    )

    class Meta:
        model = ApiKey
        fields = ("tenant", "name", "scopes")


@admin.register(ApiKey)
class ApiKeyAdmin(TenantOwnedAdmin):
    list_display = (
        "prefix",
        "name",
        "tenant",
        "scope_list",
        "created_at",
        "last_used_at",
        "revoked",
    )
    list_filter = ("tenant", RevokedFilter)
    search_fields = ("prefix", "name", "tenant__slug")
    list_select_related = ("tenant",)
    autocomplete_fields = ("tenant",)
    ordering = ("-created_at",)
    actions = ("revoke_keys",)

    # The secret is shown once, on the page answering the add form; only its hash is stored
    # and it is never displayed.
    _add_fields = ("tenant", "name", "scopes")
    _change_fields = (
        "name",
        "tenant",
        "prefix",
        "scope_list",
        "created_at",
        "last_used_at",
        "revoked_at",
    )

    @admin.display(description="scopes")
    def scope_list(self, obj: ApiKey) -> str:
        return ", ".join(obj.scopes)

    @admin.display(description="revoked", boolean=True, ordering="revoked_at")
    def revoked(self, obj: ApiKey) -> bool:
        return obj.revoked_at is not None

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        return self._add_fields if obj is None else self._change_fields

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        return () if obj is None else self._change_fields[1:]

    def get_form(
        self, request: HttpRequest, obj: ApiKey | None = None, change: bool = False, **kwargs: Any
    ) -> type[ModelForm]:
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        # Keys are revoked, not deleted: revoking also drops the authentication cache entry,
        # and the row keeps telling staff which key sent what.
        return False

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            # Only the name is editable; writing just it never undoes a revocation made meanwhile.
            obj.save(update_fields=["name"])
            return
        issued = api_key_create(
            tenant=obj.tenant, scopes=form.cleaned_data["scopes"], name=obj.name
        )
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(issued.api_key, field.attname))
        obj._state.adding = False
        obj._issued_secret = issued.secret  # type: ignore[attr-defined]  # for response_add

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        secret = getattr(obj, "_issued_secret", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        # Rendered as the answer to the POST rather than through messages, so the secret is
        # never written to the session or a cookie.
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "opts": self.opts,
            "api_key": obj,
            "secret": secret,
            "changelist_url": reverse("admin:costmon_apikey_changelist"),
            "add_url": reverse("admin:costmon_apikey_add"),
        }
        return TemplateResponse(request, "admin/costmon/apikey/secret_once.html", context)

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        active = list(queryset.filter(revoked_at__isnull=True))
        for key in active:
            api_key_revoke(api_key=key)
        already = queryset.count() - len(active)
        text = f"Revoked {plural(len(active), 'key')}."
        if already:
            text += f" {plural(already, 'key')} already revoked."
        self.message_user(request, text, messages.SUCCESS)
