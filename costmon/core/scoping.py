"""Which tenant a request acts for, and what it may do there.

API views subclass `TenantAPIView`: it resolves the tenant once (from the API key, or for a
logged-in member from `?tenant=<slug>` / their only tenant), checks the view's scope, and puts
the tenant in context for the rest of the request. Views get `self.tenant` and never look a
tenant up themselves.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.http import HttpRequest
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.views import APIView

from costmon.core import tenancy
from costmon.core.authentication import bearer_secret
from costmon.core.exceptions import DomainError
from costmon.core.keys import KeyPrincipal, principal_for_secret
from costmon.core.models import ApiKey, Membership, Tenant

# What each membership role may do through the API.
ROLE_SCOPES = {
    Membership.Role.VIEWER: {ApiKey.Scope.READ},
    Membership.Role.ADMIN: {ApiKey.Scope.READ, ApiKey.Scope.ADMIN, ApiKey.Scope.INGEST},
    Membership.Role.OWNER: {ApiKey.Scope.READ, ApiKey.Scope.ADMIN, ApiKey.Scope.INGEST},
}


def tenants_for_user(user: Any) -> list[Tenant]:
    """The tenants a dashboard user may open: their memberships, or all for a superuser."""
    if not getattr(user, "is_authenticated", False):
        return []
    if getattr(user, "is_superuser", False):
        return list(Tenant.objects.all())
    with tenancy.unscoped():
        return list(Tenant.objects.filter(memberships__user=user).distinct())


def user_scopes(user: Any, tenant: Tenant) -> set[str]:
    if getattr(user, "is_superuser", False):
        return set(ApiKey.Scope.values)
    with tenancy.unscoped():
        role = (
            Membership.objects.unscoped()
            .filter(tenant=tenant, user=user)
            .values_list("role", flat=True)
            .first()
        )
    return {str(s) for s in ROLE_SCOPES.get(Membership.Role(role), set())} if role else set()


class TenantAPIView(APIView):
    required_scope: ClassVar[str] = ApiKey.Scope.READ
    # Per-method scopes, e.g. {"POST": "admin"}; methods not listed need `required_scope`.
    method_scopes: ClassVar[dict[str, str]] = {}

    tenant: Tenant
    api_key_id: int | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # As PostHog's routing does: the tenant comes from here, never from a view's override.
        if "get_queryset" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} must not override get_queryset; use selectors with self.tenant."
            )

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        for name, values in request.query_params.lists():
            # No stored name holds NUL (PostgreSQL text cannot): a filter with one is a mistake.
            if "\x00" in name or any("\x00" in value for value in values):
                raise DomainError(
                    f"The {name.replace(chr(0), '%00')} parameter holds a NUL character (%00), "
                    "which no name can hold.",
                    field=name.replace("\x00", ""),
                )
        scope = self._scope(request)
        principal = request.user
        if isinstance(principal, KeyPrincipal):
            if not principal.has_scope(scope):
                raise exceptions.PermissionDenied(
                    f"This API key lacks the '{scope}' scope. Create a key with "
                    f"`--scopes {scope}` for this call."
                )
            self._enter(principal.tenant, principal.key_id)
        else:
            tenant = self._tenant_for_user(request)
            if scope not in user_scopes(request.user, tenant):
                raise exceptions.PermissionDenied(
                    f"Your role in {tenant.slug} does not allow this ({scope})."
                )
            self._enter(tenant, None)

    def enter_as_key(self, request: HttpRequest) -> bool:
        """For views that answer without DRF's request machinery (hot paths): when `request`
        carries a valid API key with the scope it needs, act as that key (as `initial` does) and
        return True. False otherwise, and then DRF must answer: its authentication and
        permission checks give the caller the right error."""
        secret = bearer_secret(request.META.get("HTTP_AUTHORIZATION", ""))
        if secret is None:
            return False
        principal = principal_for_secret(secret)
        if isinstance(principal, str) or not principal.has_scope(self._scope(request)):
            return False
        request.user = principal  # type: ignore[assignment]  # as DRF's authentication does
        self._enter(principal.tenant, principal.key_id)
        return True

    def drf_error(self, request: HttpRequest, exc: Exception) -> Any:
        """For the hot paths of `enter_as_key`: what DRF's `dispatch` answers when the handler
        raises `exc` (the same status, body and headers; unknown exceptions propagate)."""
        self.args, self.format_kwarg = (), None
        self.kwargs: dict[str, Any] = {}
        drf_request = self.request = self.initialize_request(request)
        self.headers = self.default_response_headers
        drf_request.accepted_renderer, drf_request.accepted_media_type = (
            self.perform_content_negotiation(drf_request)
        )
        return self.finalize_response(drf_request, self.handle_exception(exc))

    def _scope(self, request: HttpRequest | Request) -> str:
        return self.method_scopes.get(request.method or "", self.required_scope)

    def _enter(self, tenant: Tenant, api_key_id: int | None) -> None:
        self.tenant = tenant
        self.api_key_id = api_key_id
        # The request's context: the middleware resets it when the response is done.
        tenancy.activate(tenant.pk)

    def _tenant_for_user(self, request: Request) -> Tenant:
        allowed = tenants_for_user(request.user)
        slug = request.query_params.get("tenant")
        if slug:
            for tenant in allowed:
                if tenant.slug == slug:
                    return tenant
            # 404, not 403: an outsider learns nothing about which tenants exist.
            raise exceptions.NotFound(f"No tenant {slug!r} among yours.")
        session_tenant = request.session.get("tenant_id") if hasattr(request, "session") else None
        for tenant in allowed:
            if tenant.pk == session_tenant:
                return tenant
        if len(allowed) == 1:
            return allowed[0]
        if not allowed:
            raise exceptions.NotFound("You are not a member of any tenant.")
        raise exceptions.ValidationError(
            {"tenant": "You belong to several tenants: add ?tenant=<slug>."}
        )
