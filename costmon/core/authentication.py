"""API authentication: `Authorization: Bearer <api key>`."""

from __future__ import annotations

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from costmon.core.keys import KeyPrincipal, principal_for_secret


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
