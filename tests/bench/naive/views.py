"""The naive baseline over HTTP: a stock DRF ModelSerializer view, one insert per event.

What a first version of the endpoint would be: each name looked up or created, the event priced
and inserted by the ORM, each statement its own commit (no ATOMIC_REQUESTS), no rollups, no
budget counters. A list body is validated and saved event by event (`many=True`).
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from costmon.core.tenancy import tenant_context
from usage.catalog import catalog_for
from usage.ingest import EventIn
from usage.models import Dimension, UsageEvent
from usage.rows import price_event

_NAMES = {
    "provider": Dimension.Kind.PROVIDER,
    "model": Dimension.Kind.MODEL,
    "operation": Dimension.Kind.OPERATION,
    "end_user": Dimension.Kind.END_USER,
}


class NaiveEventSerializer(serializers.ModelSerializer):
    provider = serializers.CharField(max_length=50)
    model = serializers.CharField(max_length=200)
    operation = serializers.CharField(max_length=100, required=False, default="")
    end_user = serializers.CharField(max_length=255, required=False, default="")
    session_id = serializers.CharField(max_length=255, required=False, allow_blank=True)
    status = serializers.ChoiceField(["success", "error"], default="success")

    class Meta:
        model = UsageEvent
        fields = [
            "event_id",
            "occurred_at",
            "provider",
            "model",
            "operation",
            "end_user",
            "session_id",
            "tags",
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "latency_ms",
            "status",
            "cache_hit",
        ]

    def create(self, validated: dict[str, Any]) -> UsageEvent:
        tenant = self.context["tenant"]
        names = {name: validated.pop(name) for name in _NAMES}
        validated.pop("session_id", None)
        is_error = validated.pop("status") == "error"
        dims = {
            name: Dimension.objects.get_or_create(tenant=tenant, kind=kind, value=names[name])[0]
            for name, kind in _NAMES.items()
        }
        event = EventIn(
            event_id=validated["event_id"],
            occurred_at=validated["occurred_at"],
            provider=names["provider"],
            model=names["model"],
            operation=names["operation"],
            end_user=names["end_user"],
            session_id="",
            tags=validated.get("tags"),
            input_tokens=validated.get("input_tokens", 0),
            output_tokens=validated.get("output_tokens", 0),
            cached_input_tokens=validated.get("cached_input_tokens", 0),
            cache_write_tokens=validated.get("cache_write_tokens", 0),
            reasoning_tokens=validated.get("reasoning_tokens", 0),
            cost_usd=None,
            latency_ms=validated.get("latency_ms"),
            is_error=is_error,
            cache_hit=validated.get("cache_hit", False),
        )
        cost, source, price_id = price_event(catalog_for(tenant.pk), event)
        return UsageEvent.objects.create(
            tenant=tenant,
            **dims,
            **validated,
            is_error=is_error,
            cost_nanos=cost,
            cost_source=source,
            price_id=price_id,
        )


class NaiveUsageView(APIView):
    def post(self, request: Request) -> Response:
        tenant = request.user.tenant
        many = isinstance(request.data, list)
        serializer = NaiveEventSerializer(data=request.data, many=many, context={"tenant": tenant})
        serializer.is_valid(raise_exception=True)
        with tenant_context(tenant):
            serializer.save()
        return Response(
            {"events": len(serializer.validated_data) if many else 1},
            status=status.HTTP_201_CREATED,
        )
