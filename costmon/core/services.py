"""Writes for tenants, memberships and API keys."""

from __future__ import annotations

import secrets
import zoneinfo
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from costmon.core.keys import hash_secret, principal_forget
from costmon.core.models import ApiKey, Membership, Tenant, slug_validator
from costmon.core.tenancy import unscoped

KEY_PREFIX = "cm_"
_PREFIX_CHARS = 8


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    secret: str  # shown once, never stored


def tenant_create(*, slug: str, name: str = "", timezone_name: str = "UTC") -> Tenant:
    slug_validator(slug)
    if Tenant.objects.filter(slug=slug).exists():
        raise ValidationError(f"A tenant with slug {slug!r} already exists.")
    try:
        zoneinfo.ZoneInfo(timezone_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            f"Unknown time zone {timezone_name!r}; use an IANA name such as Europe/Paris."
        ) from None
    return Tenant.objects.create(slug=slug, name=name or slug, timezone=timezone_name)


def membership_add(*, tenant: Tenant, user: Any, role: str = Membership.Role.VIEWER) -> Membership:
    if role not in Membership.Role.values:
        raise ValidationError(
            f"Unknown role {role!r}; use one of {', '.join(Membership.Role.values)}."
        )
    with unscoped():
        membership, _ = Membership.objects.update_or_create(
            tenant=tenant, user=user, defaults={"role": role}
        )
    return membership


def parse_scopes(raw: str | list[str]) -> list[str]:
    items = raw.split(",") if isinstance(raw, str) else raw
    scopes = sorted({s.strip().lower() for s in items if s.strip()})
    unknown = [s for s in scopes if s not in ApiKey.Scope.values]
    if unknown:
        raise ValidationError(
            f"Unknown scope {', '.join(unknown)}; use any of {', '.join(ApiKey.Scope.values)}."
        )
    if not scopes:
        raise ValidationError("Give at least one scope: ingest, read or admin.")
    return scopes


def api_key_create(*, tenant: Tenant, scopes: str | list[str], name: str = "") -> IssuedKey:
    scope_list = parse_scopes(scopes)
    prefix = KEY_PREFIX + secrets.token_hex(_PREFIX_CHARS // 2 + 1)[:_PREFIX_CHARS]
    secret = f"{prefix}_{secrets.token_urlsafe(32)}"
    with unscoped():
        key = ApiKey.objects.create(
            tenant=tenant,
            name=name,
            prefix=prefix,
            secret_hash=hash_secret(secret),
            scopes=scope_list,
        )
    return IssuedKey(api_key=key, secret=secret)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    with unscoped(), transaction.atomic():
        ApiKey.objects.unscoped().filter(pk=api_key.pk, revoked_at=None).update(
            revoked_at=timezone.now()
        )
        api_key.refresh_from_db()
    # Authentication keeps keys per process; a revoked key must stop working at once here, and
    # in other processes once they recheck the shared cache (COSTMON_SHARED_RECHECK_MS).
    principal_forget(api_key.secret_hash)
    return api_key
