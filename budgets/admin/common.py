"""What the budgets admins share: configuration rows bump the tenant's version after the commit."""

from __future__ import annotations

from functools import partial
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from budgets.config import bump
from costmon.core.admin import TenantOwnedAdmin


def bump_after_commit(*tenant_ids: int | None) -> None:
    # After the commit: a check reloading between the bump and the commit would keep the old
    # configuration under the new version.
    for tenant_id in set(tenant_ids):
        transaction.on_commit(partial(bump, tenant_id))


def copy_saved(target: Any, saved: Any) -> None:
    """Make the admin's unsaved instance the row a service wrote, for the admin's log and
    redirect."""
    for field in type(saved)._meta.concrete_fields:
        setattr(target, field.attname, getattr(saved, field.attname))
    target._state.adding = False
    target._state.db = saved._state.db


class ConfigAdmin(TenantOwnedAdmin):
    """Rows the pre-flight check reads from its per-process configuration: every write bumps
    the version of the tenant it belongs to (None: a global row), and of the tenant it left."""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        tenants = [obj.tenant_id]
        if change and "tenant" in form.changed_data:
            tenants.append(form.initial.get("tenant"))
        bump_after_commit(*tenants)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        tenant_id = obj.tenant_id
        super().delete_model(request, obj)
        bump_after_commit(tenant_id)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        tenant_ids = set(queryset.values_list("tenant_id", flat=True))
        super().delete_queryset(request, queryset)
        bump_after_commit(*tenant_ids)
