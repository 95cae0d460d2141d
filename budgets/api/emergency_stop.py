"""Emergency stop API: read it with its history, trip it, lift it."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from budgets.api.budgets import iso_time
from budgets.emergency_stop import emergency_stop_active, emergency_stop_lift, emergency_stop_trip
from budgets.models import EmergencyStop
from budgets.openapi import (
    EmergencyStopReply,
)
from budgets.selectors import emergency_stop_history
from costmon.core.exceptions import Conflict
from costmon.core.fields import (
    StrictCharField,
    StrictChoiceField,
    StrictIntegerField,
)
from costmon.core.models import ApiKey
from costmon.core.money import format_usd
from costmon.core.openapi import Error
from costmon.core.scoping import TenantAPIView


def stop_json(stop: EmergencyStop) -> dict[str, Any]:
    return {
        "id": stop.pk,
        "scope": "tenant" if stop.tenant_id else "global",
        "reason": stop.reason,
        "tripped_at": iso_time(stop.tripped_at),
        "tripped_by": stop.tripped_by.get_username()
        if stop.tripped_by
        else ("rule" if stop.rule_id else ("api key" if stop.tripped_by_key_id else None)),
        "rule_id": stop.rule_id,
        "spend_at_trip_usd": format_usd(stop.spend_at_trip_nanos)
        if stop.spend_at_trip_nanos is not None
        else None,
        "expires_at": iso_time(stop.expires_at),
        "lifted_at": iso_time(stop.lifted_at),
        "lifted_by": stop.lifted_by.get_username()
        if stop.lifted_by
        else ("api key" if stop.lifted_by_key_id else None),
        "tripped_by_key": stop.tripped_by_key.prefix if stop.tripped_by_key else None,
        "lifted_by_key": stop.lifted_by_key.prefix if stop.lifted_by_key else None,
        "lift_reason": stop.lift_reason,
        "active": stop.is_active_at(timezone.now()),
    }


class EmergencyStopInput(serializers.Serializer):
    action = StrictChoiceField(choices=["trip", "lift"])
    reason = StrictCharField(
        multiline=True, max_length=500, required=False, allow_blank=True, default=""
    )
    duration_minutes = StrictIntegerField(
        required=False, default=60, min_value=1, max_value=7 * 24 * 60
    )


class EmergencyStopApi(TenantAPIView):
    method_scopes = {"GET": ApiKey.Scope.READ, "POST": ApiKey.Scope.ADMIN}

    def _reply(self) -> dict[str, Any]:
        active = emergency_stop_active(tenant=self.tenant)
        return {
            "active": active is not None,
            "stop": stop_json(active) if active else None,
            "history": [stop_json(s) for s in emergency_stop_history(tenant=self.tenant)],
        }

    @extend_schema(
        operation_id="emergency_stop_read",
        summary="The emergency stop and its history",
        responses={200: EmergencyStopReply},
    )
    def get(self, request: Request) -> Response:
        return Response(self._reply())

    @extend_schema(
        operation_id="emergency_stop_change",
        summary="Trip or lift the tenant's emergency stop (admin scope)",
        request=EmergencyStopInput,
        responses={
            200: EmergencyStopReply,
            409: OpenApiResponse(Error, description="A lift with no stop to lift."),
        },
    )
    def post(self, request: Request) -> Response:
        incoming = EmergencyStopInput(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        user = request.user if getattr(request.user, "pk", None) and not self.api_key_id else None
        if data["action"] == "trip":
            emergency_stop_trip(
                tenant=self.tenant,
                reason=data["reason"] or "tripped through the API",
                duration_minutes=data["duration_minutes"],
                user=user,
                api_key_id=self.api_key_id,
            )
        elif (
            emergency_stop_lift(
                tenant=self.tenant, user=user, api_key_id=self.api_key_id, reason=data["reason"]
            )
            is None
        ):
            raise Conflict("There is no emergency stop to lift for this tenant.", field="action")
        return Response(self._reply())
