"""What the OpenAPI schema (`/api/schema/`) says beyond the views' own annotations.

- The Bearer API key is a security scheme (beside the session cookie of logged-in members).
- Every API operation documents the errors it can answer, in the one error shape.
- Strings the API refuses characters in say so with a `pattern` (costmon.core.inputs): names in
  request bodies, and every free-form query parameter (no NUL).

The schema is checked against the running API by a schemathesis run in the test suite
(tests/costmon/test_schema.py).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers

from costmon.core.exceptions import RETRY_AFTER_SECONDS

# No control characters or line breaks. (Lone surrogates, refused too, are not Unicode
# characters at all: JSON Schema strings cannot hold them, and its regex engines refuse the range.)
_REFUSED_IN_NAMES = r"\u0000-\u001f\u007f-\u009f\u2028\u2029"
NAME_PATTERN = rf"^[^{_REFUSED_IN_NAMES}]*$"
# Free text may also hold tab, line feed and carriage return.
TEXT_PATTERN = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
QUERY_PATTERN = r"^[^\u0000]*$"


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "costmon.core.authentication.ApiKeyAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "An API key (`manage.py create_api_key <tenant> --scopes ingest,read,admin`), "
                "sent as `Authorization: Bearer cm_...`. Its scopes decide what it may call."
            ),
        }


class ErrorItem(serializers.Serializer):
    index = serializers.IntegerField(
        required=False, help_text="The event's position in a usage batch (and 0 for a check)."
    )
    field = serializers.CharField(
        allow_null=True, help_text="The refused field or parameter (`tags.team`), or null."
    )
    message = serializers.CharField()


class Error(serializers.Serializer):
    """Every API error. A usage batch (and a check) lists `errors` only; others also carry
    `detail` (one line) and, for a refused parameter, `field`."""

    detail = serializers.CharField(required=False)
    field = serializers.CharField(required=False)
    errors = ErrorItem(many=True)


ERRORS = {
    400: "The request is not valid: `errors` names each problem.",
    401: "No API key (or session), or a wrong or revoked one.",
    403: "The key lacks the scope this call needs (or, for a member, the role).",
    404: "No such object in this tenant (or no such tenant among a member's).",
    413: "The body is larger than COSTMON_MAX_BODY_BYTES.",
    415: "The body is not JSON (`Content-Type: application/json`).",
    503: f"The database cannot be reached; try again after `Retry-After` seconds "
    f"({RETRY_AFTER_SECONDS}).",
}
_TENANT = OpenApiParameter(
    "tenant",
    str,
    description="For a logged-in member of several tenants: the tenant's slug (an API key "
    "always acts for its own tenant).",
)
_RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    int,
    location=OpenApiParameter.HEADER,
    response=[503],
    description="Seconds to wait before trying again.",
)


class CostmonAutoSchema(AutoSchema):
    """drf-spectacular's schema, with every operation's error answers documented."""

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        codes = [400, 401, 403, 404, 503]
        if self.method in ("POST", "PUT", "PATCH") and self._get_request_body() is not None:
            codes.append(415)
        for code in codes:
            if str(code) not in responses:
                response = OpenApiResponse(Error, description=ERRORS[code])
                responses[str(code)] = self._get_response_for_code(response, str(code))
        return responses

    def get_override_parameters(self) -> list[Any]:
        return [*super().get_override_parameters(), _TENANT, _RETRY_AFTER]

    def get_auth(self) -> list[dict[str, list[str]]]:
        # Only the API key and the session authenticate: no anonymous access (the `{}` DRF
        # would add for AllowAny views never applies here).
        return [entry for entry in super().get_auth() if entry]


def _patterned(schema: dict[str, Any], pattern: str) -> None:
    kind = schema.get("type")
    is_string = kind == "string" or (isinstance(kind, list) and "string" in kind)
    if is_string and not {"enum", "format", "pattern"} & schema.keys():
        schema["pattern"] = pattern


def _walk(schema: Any, *, free_text: frozenset[str]) -> None:
    """Give every plain string of a request schema the name pattern (`free_text` properties:
    the text pattern), through objects, arrays and maps."""
    if not isinstance(schema, dict):
        return
    for name, prop in (schema.get("properties") or {}).items():
        _patterned(prop, TEXT_PATTERN if name in free_text else NAME_PATTERN)
        _walk(prop, free_text=frozenset())
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _patterned(schema[key], NAME_PATTERN)
            _walk(schema[key], free_text=frozenset())
    for key in ("oneOf", "anyOf", "allOf"):
        for option in schema.get(key) or ():
            _walk(option, free_text=free_text)


def patterns_hook(result: dict[str, Any], generator: Any, **kwargs: Any) -> dict[str, Any]:
    """SPECTACULAR_SETTINGS postprocessing hook: the character rules of costmon.core.inputs as
    patterns, on request bodies and query parameters."""
    free_text = frozenset({"reason"})
    for name, schema in result.get("components", {}).get("schemas", {}).items():
        if name.endswith("Request"):  # COMPONENT_SPLIT_REQUEST: request-only components
            _walk(schema, free_text=free_text)
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", ()):
                if parameter.get("in") in ("query", "path"):
                    _patterned(parameter.get("schema", {}), QUERY_PATTERN)
            for media in (operation.get("requestBody") or {}).get("content", {}).values():
                _walk(media.get("schema"), free_text=free_text)
    return result
