"""The budgets API's request and reply schemas, for the OpenAPI document only (the views build
their replies with `budgets.api.budgets.budget_json` and friends; tests/costmon/test_schema.py checks
the two agree)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from budgets.models import Budget
from costmon.core.inputs import USD_TEXT_PATTERN
from costmon.core.openapi import NAME_PATTERN

_NAME = {"type": "string", "maxLength": 255, "pattern": NAME_PATTERN}


def check_request_schema() -> dict[str, Any]:
    """`POST /api/v1/check/` as `budgets.api.check.parse_check` takes it."""
    tokens = {"type": ["integer", "null"], "minimum": 0, "maximum": 100_000_000}
    return {
        "type": "object",
        "properties": {
            "end_user": {**_NAME, "type": ["string", "null"]},
            "provider": {**_NAME, "type": ["string", "null"]},
            "model": {**_NAME, "type": ["string", "null"]},
            "operation": {**_NAME, "type": ["string", "null"]},
            "event_id": {
                **_NAME,
                "type": ["string", "null"],
                "description": "The event_id you will report: its usage settles the reservation.",
            },
            "tags": {
                "type": ["object", "null"],
                "propertyNames": {"pattern": NAME_PATTERN},
                "additionalProperties": {"type": "string", "pattern": NAME_PATTERN},
            },
            "estimated_input_tokens": tokens,
            "estimated_output_tokens": tokens,
            "estimated_cost_usd": {
                "type": ["string", "number", "null"],
                "pattern": USD_TEXT_PATTERN,
                "minimum": 0,
                "maximum": 100_000,
                "description": "The call's cost in USD; without it the tokens are priced.",
            },
            "reserve": {
                "type": "boolean",
                "description": "Hold the estimate on every hard budget that applies.",
            },
        },
        "additionalProperties": False,
    }


class BudgetState(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    scope = serializers.ChoiceField(choices=Budget.Scope.values)
    scope_value = serializers.CharField()
    period = serializers.ChoiceField(choices=Budget.Period.values)
    limit_usd = serializers.CharField()
    used_usd = serializers.CharField()
    reserved_usd = serializers.CharField()
    remaining_usd = serializers.CharField()
    percent = serializers.FloatField()
    status = serializers.ChoiceField(choices=["ok", "warning", "critical", "exceeded"])
    resets_at = serializers.DateTimeField(allow_null=True)
    enforcement = serializers.ChoiceField(choices=["soft", "hard"])
    fail_mode = serializers.ChoiceField(
        choices=["closed", "open"],
        help_text="When spend cannot be known at all: closed refuses calls, open allows them.",
    )
    end_user = serializers.CharField(
        required=False, allow_null=True, help_text="every_end_user budgets: the end user."
    )


class BudgetOut(BudgetState):
    api_key = serializers.IntegerField(allow_null=True)
    rolling_days = serializers.IntegerField(allow_null=True)
    thresholds = serializers.ListField(child=serializers.FloatField())
    suggested_model = serializers.CharField()
    is_active = serializers.BooleanField()
    fail_mode_inherited = serializers.BooleanField(
        help_text="The fail mode comes from the tenant's default (none set on the budget)."
    )
    projected_usd = serializers.CharField(allow_null=True)
    period_start = serializers.DateTimeField(allow_null=True)
    source = serializers.CharField()


class BudgetList(serializers.Serializer):
    results = BudgetOut(many=True)


class CheckWarning(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class CheckReply(serializers.Serializer):
    allowed = serializers.BooleanField()
    reasons = serializers.ListField(child=serializers.CharField())
    budgets = BudgetState(many=True)
    warnings = CheckWarning(many=True)
    suggested_model = serializers.CharField(allow_null=True)
    reservation_id = serializers.CharField(allow_null=True)
    estimated_cost_usd = serializers.CharField()
    source = serializers.ChoiceField(
        choices=["redis", "database", "none"],
        help_text="Where spend was read: Redis counters, PostgreSQL while the counters cannot "
        "be used, or none when spend could not be known at all.",
    )
    fail_mode = serializers.ChoiceField(
        choices=["closed", "open"],
        allow_null=True,
        help_text="Null while spend was known; otherwise the fail mode that decided the call.",
    )


class Stop(serializers.Serializer):
    id = serializers.IntegerField()
    scope = serializers.ChoiceField(choices=["tenant", "global"])
    reason = serializers.CharField()
    tripped_at = serializers.DateTimeField(allow_null=True)
    tripped_by = serializers.CharField(allow_null=True)
    rule_id = serializers.IntegerField(allow_null=True)
    spend_at_trip_usd = serializers.CharField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    lifted_at = serializers.DateTimeField(allow_null=True)
    lifted_by = serializers.CharField(allow_null=True)
    lift_reason = serializers.CharField()
    active = serializers.BooleanField()


class EmergencyStopReply(serializers.Serializer):
    active = serializers.BooleanField()
    stop = Stop(allow_null=True)
    history = Stop(many=True)
