"""API keys as authentication sees them: the hash of a secret, and the principal a secret
stands for, kept per process and invalidated everywhere when the key is revoked."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from costmon.core.cache import VersionedCache
from costmon.core.models import ApiKey, Tenant
from costmon.core.tenancy import unscoped

# Without the shared cache, how long a process trusts a key it has seen (a revocation in
# another process takes this long to apply there).
_TTL_WITHOUT_SHARED_CACHE = 60.0


def hash_secret(secret: str) -> str:
    # Keys are 256 random bits, so a fast hash is enough (as for GitHub tokens): no dictionary
    # attack can work, and authentication stays fast.
    return hashlib.sha256(secret.encode()).hexdigest()


def auth_cache_key(secret_hash: str) -> str:
    """The shared version of a key's principal: revoking the key stamps a new one."""
    return f"costmon:apikey:{secret_hash}"


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

    Each process keeps what it found per key and, with Redis, asks again only after
    COSTMON_SHARED_RECHECK_MS: revoking a key stamps a new shared version, so a revoked key
    stops working everywhere within that time (at once in the process that revoked it).
    """
    parts = secret.split("_", 2)
    prefix = f"{parts[0]}_{parts[1]}" if len(parts) == 3 else ""
    return _principals.get((hash_secret(secret), prefix))


def _principal_from_database(presented: tuple[str, str]) -> KeyPrincipal | str:
    digest, prefix = presented
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
    api_key_touch(api_key_id=key.pk)
    return KeyPrincipal(
        key_id=key.pk, tenant=key.tenant, scopes=tuple(key.scopes), prefix=key.prefix
    )


def principal_forget(secret_hash: str) -> None:
    """After revoking a key: every process stops trusting what it had found for it."""
    _principals.bump(auth_cache_key(secret_hash))


def clear_local() -> None:
    _principals.forget()


def api_key_touch(*, api_key_id: int) -> None:
    """Record use at most once a minute per key: one conditional UPDATE, no read."""
    now = timezone.now()
    with unscoped():
        ApiKey.objects.unscoped().filter(pk=api_key_id).exclude(
            last_used_at__gt=now - timedelta(minutes=1)
        ).update(last_used_at=now)


# Keyed by (digest, prefix): the prefix finds the row through its unique index.
_principals: VersionedCache[tuple[str, str], KeyPrincipal | str] = VersionedCache(
    version_keys=lambda presented: (auth_cache_key(presented[0]),),
    load=_principal_from_database,
    ttl=lambda: _TTL_WITHOUT_SHARED_CACHE if not settings.REDIS_URL else 0.0,
)
