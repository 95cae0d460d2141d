"""The OpenAPI schema tells the truth: schemathesis drives every operation of `/api/schema/`
in-process with an admin API key (positive and negative data, every check), while an outsider
tenant's data must stay untouched and unseen.

Longer runs: COSTMON_SCHEMATHESIS_EXAMPLES=500 (examples per operation and phase; default 15),
and COSTMON_SCHEMATHESIS_SEED to replay one (README, "The API schema").
"""

from __future__ import annotations

import os
import secrets
from decimal import Decimal
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from alerts.models import AlertRule, Channel
from budgets.emergency_stop import emergency_stop_trip
from budgets.models import Budget
from budgets.services import budget_create
from costmon.core.models import Tenant
from costmon.core.services import api_key_create
from tests.helpers import event, post_usage
from usage.models import UsageEvent

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "unscoped")]

EXAMPLES = int(os.environ.get("COSTMON_SCHEMATHESIS_EXAMPLES", "15"))
SEED = os.environ.get("COSTMON_SCHEMATHESIS_SEED")

# Every check. An exclusion needs its reason beside it.
CONFIG = f"""
{"seed = " + SEED if SEED else ""}

[checks]
enabled = true

[generation]
max-examples = {EXAMPLES}

# Exclusions, each with its reason. positive_data_acceptance ("every request the schema
# allows is accepted") cannot hold where the API's rules are beyond JSON Schema; the schema
# then allows more than the API, and the negative check still holds it to its schema.

[[operations]]
# An event's occurred_at must lie between 2000-01-01 and now + COSTMON_FUTURE_SKEW_SECONDS (time
# relative), cached_input_tokens + cache_write_tokens may not exceed input_tokens (across
# fields) and a decimal string cost_usd must be at most 100,000.
include-operation-id = "usage_record"
checks.positive_data_acceptance.enabled = false

[[operations]]
# start must come before end, the range span at most 800 days, a cursor be one a page gave.
include-operation-id = ["usage_list", "metrics_read"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# A budget's scope_value is required for some scopes and refused for others, rolling_days
# goes with a rolling period, api_key must be a key of the tenant, thresholds ascend.
include-operation-id = ["budgets_create", "budgets_update"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# Which of a rule's fields are required depends on its kind; channels must be the tenant's.
include-operation-id = ["rules_create", "rules_update"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# A channel's config keys depend on its kind, and its URLs must be public https endpoints.
include-operation-id = ["channels_create", "channels_update"]
checks.positive_data_acceptance.enabled = false

[[operations]]
# The body is protobuf bytes: a schema cannot say which bytes encode an export.
include-operation-id = "usage_record_traces"
checks.positive_data_acceptance.enabled = false
"""


class InTestTransaction:
    """The WSGI application, answering inside the running test's transaction: as Django's test
    client does, a request neither starts nor ends by closing the database connection (which
    would end the transaction), and its whole body is read before it is closed."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        signals.request_started.disconnect(close_old_connections)
        signals.request_finished.disconnect(close_old_connections)
        try:
            result = self.app(environ, start_response)
            try:
                return [b"".join(result)]
            finally:
                if hasattr(result, "close"):
                    result.close()
        finally:
            signals.request_started.connect(close_old_connections)
            signals.request_finished.connect(close_old_connections)


schema = schemathesis.openapi.from_wsgi(
    "/api/schema/",
    InTestTransaction(get_wsgi_application()),
    config=SchemathesisConfig.from_str(CONFIG),
)


@pytest.fixture
def admin_key(acme: Tenant, ingest_client: Any) -> str:
    """acme's admin key, with usage, a budget, a rule with its channel and a stop to read."""
    assert post_usage(ingest_client, [event(occurred_at=None, event_id="a1")]).status_code == 201
    budget_create(tenant=acme, data={"name": "Monthly", "limit_usd": Decimal("10")})
    return api_key_create(tenant=acme, scopes="ingest,read,admin").secret


# The outsider's names, made at run time: schemathesis also tries the string constants it finds
# in the source, and must not stumble on these.
SECRETS = [f"globex-{name}-{secrets.token_hex(6)}" for name in ("event", "ops", "spend", "stop")]


@pytest.fixture
def outsider_state(outsider: Tenant, outsider_client: Any) -> dict[str, Any]:
    """The outsider's data, which nothing acme's key does may change or reveal."""
    event_id, channel_name, rule_name, reason = SECRETS
    body = event(occurred_at=None, event_id=event_id, end_user=event_id)
    assert post_usage(outsider_client, body).status_code == 201
    budget_create(tenant=outsider, data={"name": rule_name, "limit_usd": Decimal("5")})
    channel = Channel.objects.create(tenant=outsider, name=channel_name, kind="email", config={})
    rule = AlertRule.objects.create(tenant=outsider, name=rule_name, kind="spend")
    rule.channels.add(channel)
    emergency_stop_trip(tenant=outsider, reason=reason, duration_minutes=60)
    return snapshot(outsider)


def snapshot(tenant: Tenant) -> dict[str, Any]:
    return {
        "events": sorted(
            UsageEvent.objects.for_tenant(tenant).values_list("event_id", "cost_nanos")
        ),
        "budgets": sorted(
            Budget.objects.for_tenant(tenant).values_list("name", "limit_usd", "is_active")
        ),
        "channels": sorted(Channel.objects.for_tenant(tenant).values_list("name", "is_enabled")),
        "rules": sorted(
            AlertRule.objects.for_tenant(tenant).values_list("name", "is_active", "channels")
        ),
    }


@pytest.mark.slow  # schemathesis: hundreds of generated requests
@schema.parametrize()
@settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        # The tenants and keys are made once per operation; each example adds to them.
        HealthCheck.function_scoped_fixture,
    ],
)
def test_the_api_keeps_to_its_schema(case: Any, admin_key: str, outsider_state: Any, outsider):
    response = case.call(headers={"Authorization": f"Bearer {admin_key}"})
    case.validate_response(response, headers={"Authorization": f"Bearer {admin_key}"})
    assert snapshot(outsider) == outsider_state
    for name in SECRETS:
        assert name not in response.text, name


# --- what the schema declares ------------------------------------------------------------------


@pytest.fixture
def document(client: Any) -> dict[str, Any]:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    return response.json()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, methods in document["paths"].items()
        for method, op in methods.items()
    ]


def test_every_operation_declares_the_bearer_key_and_its_errors(document):
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    ops = operations(document)
    assert len(ops) == 26  # GET /api/v1/usage/<event_id>/ included
    for path, method, op in ops:
        assert op["security"] == [{"bearerAuth": []}, {"cookieAuth": []}], (path, method)
        assert {"400", "401", "403", "404", "503"} <= op["responses"].keys(), (path, method)
        assert "Retry-After" in op["responses"]["503"]["headers"], (path, method)


def test_every_reply_and_body_has_a_typed_schema(document):
    def typed(schema: dict[str, Any]) -> bool:
        return (
            "$ref" in schema
            or "properties" in schema
            or "oneOf" in schema
            or (schema.get("type") == "string")
        )

    for path, method, op in operations(document):
        for code, response in op["responses"].items():
            for media, content in response.get("content", {}).items():
                assert typed(content["schema"]), (path, method, code, media)
        if method in ("post", "patch") and path not in (
            "/api/v1/channels/{channel_id}/test/",
            "/api/v1/alerts/{alert_id}/acknowledge/",
        ):
            body = op["requestBody"]["content"]["application/json"]["schema"]
            assert body != {"type": "object"}, (path, method)
    usage = document["paths"]["/api/v1/usage/"]["post"]["requestBody"]["content"]
    [single, batch] = usage["application/json"]["schema"]["oneOf"]
    assert single["required"] == ["provider", "model"]
    assert batch["items"] == single
    assert single["additionalProperties"] is False
