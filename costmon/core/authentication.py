"""API authentication: `Authorization: Bearer <api key>`."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from threading import Lock

import structlog
from django.conf import settings
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from costmon.core.cache import cache_get, cache_set
from costmon.core.models import ApiKey, Tenant
from costmon.core.services import api_key_touch, auth_cache_key, hash_secret
from costmon.core.tenancy import unscoped

log = structlog.get_logger(__name__)
_CACHE_SECONDS = 60
_lock = Lock()
# secret digest -> (principal, when the shared cache last confirmed it)
_local: dict[str, tuple[KeyPrincipal, float]] = {}


@dataclass(frozen=True)
class KeyPrincipal:
    """What the API knows about the caller once its key checks out (cached, no model row)."""

    key_id: int
    tenant: Tenant
    scopes: tuple[str, ...]
    prefix: str

    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_superuser = False

    @property
    def tenant_id(self) -> int:
        return self.tenant.pk

    def has_scope(self, scope: str) -> bool:
        if scope == ApiKey.Scope.READ and ApiKey.Scope.ADMIN in self.scopes:
            return True
        return scope in self.scopes


def principal_for_secret(secret: str) -> KeyPrincipal | str:
    """The principal for a presented key, or the reason it is refused.

    With Redis, each process keeps the principals it has seen and asks Redis again only after
    COSTMON_SHARED_RECHECK_MS: revoking deletes the shared entry, so a revoked key stops working
    everywhere within that time (at once in the process that revoked it).
    """
    digest = hash_secret(secret)
    shared = bool(settings.REDIS_URL)  # without Redis the cache is this process's own already
    now = time.monotonic()
    hit = _local.get(digest)
    if shared and hit is not None and now - hit[1] < settings.COSTMON_SHARED_RECHECK_MS / 1000:
        return hit[0]
    cached = cache_get(auth_cache_key(digest))
    if isinstance(cached, KeyPrincipal):
        _remember(digest, cached, now, shared)
        return cached
    parts = secret.split("_", 2)
    prefix = f"{parts[0]}_{parts[1]}" if len(parts) == 3 else ""
    with unscoped():
        key = (
            ApiKey.objects.unscoped().select_related("tenant").filter(prefix=prefix).first()
            if prefix
            else None
        )
    if key is None or not hmac.compare_digest(key.secret_hash, digest):
        return "Invalid API key. Create one with `manage.py create_api_key <tenant-slug> --scopes ...`."
    if key.revoked_at is not None:
        return f"This API key ({key.prefix}) was revoked on {key.revoked_at:%Y-%m-%d %H:%M} UTC."
    principal = KeyPrincipal(
        key_id=key.pk, tenant=key.tenant, scopes=tuple(key.scopes), prefix=key.prefix
    )
    cache_set(auth_cache_key(digest), principal, _CACHE_SECONDS)
    _remember(digest, principal, now, shared)
    api_key_touch(api_key_id=key.pk)
    return principal


def _remember(digest: str, principal: KeyPrincipal, now: float, shared: bool) -> None:
    if shared:
        with _lock:
            _local[digest] = (principal, now)


def forget(secret_hash: str) -> None:
    """Drop this process's copy of a key's principal (after revoking it)."""
    with _lock:
        _local.pop(secret_hash, None)


def clear_local() -> None:
    with _lock:
        _local.clear()


def bearer_secret(header: str) -> str | None:
    """The key in an `Authorization: Bearer <key>` header; None for any other shape."""
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1]


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[KeyPrincipal, KeyPrincipal] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        secret = bearer_secret(header)
        if secret is None:
            raise exceptions.AuthenticationFailed(
                "Send the API key as `Authorization: Bearer <key>`."
            )
        result = principal_for_secret(secret)
        if isinstance(result, str):
            raise exceptions.AuthenticationFailed(result)
        return result, result

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="costmon"'
