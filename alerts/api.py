"""Alerts API: rules, channels (with a test send), and the alerts themselves."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from django.db import transaction
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from alerts.models import RULE_FIELDS, Alert, AlertRule, Channel, Notification
from alerts.openapi import (
    AlertList,
    AlertOut,
    ChannelList,
    ChannelOut,
    NotificationOut,
    RuleList,
    RuleOut,
)
from alerts.services import alert_acknowledge, channel_save, channel_send_test, rule_validate
from costmon.core.exceptions import DomainError, NotFound
from costmon.core.fields import (
    StrictBooleanField,
    StrictCharField,
    StrictChoiceField,
    StrictIntegerField,
    StrictModelSerializer,
)
from costmon.core.models import ApiKey
from costmon.core.scoping import TenantAPIView


def _iso(moment: Any) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def channel_json(channel: Channel) -> dict[str, Any]:
    config = dict(channel.config)
    if "secret" in config:
        config["secret"] = config["secret"][:4] + "…"  # shown once, at creation
    return {
        "id": channel.pk,
        "name": channel.name,
        "kind": channel.kind,
        "config": config,
        "is_enabled": channel.is_enabled,
        "disabled_reason": channel.disabled_reason,
        "last_error": channel.last_error,
        "last_error_at": _iso(channel.last_error_at),
        "last_success_at": _iso(channel.last_success_at),
    }


def rule_json(rule: AlertRule) -> dict[str, Any]:
    data: dict[str, Any] = {"id": rule.pk}
    for name in RULE_FIELDS:
        value = getattr(rule, name)
        data[name] = (
            str(value)
            if value is not None
            and name in ("threshold_usd", "threshold_percent", "multiplier", "min_volume")
            else value
        )
    data["channels"] = [c.pk for c in rule.channels.all()]
    return data


def alert_json(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.pk,
        "rule": alert.rule_id,
        "rule_name": alert.rule.name,
        "kind": alert.rule.kind,
        "scope": alert.scope,
        "period": alert.period,
        "level": alert.level,
        "severity": alert.severity,
        "status": alert.status,
        "title": alert.title,
        "text": alert.text,
        "figure": alert.figure,
        "threshold": alert.threshold,
        "link": alert.link,
        "first_seen_at": _iso(alert.first_seen_at),
        "last_seen_at": _iso(alert.last_seen_at),
        "last_notified_at": _iso(alert.last_notified_at),
        "notify_count": alert.notify_count,
        "resolved_at": _iso(alert.resolved_at),
        "acknowledged_at": _iso(alert.acknowledged_at),
    }


def notification_json(n: Notification) -> dict[str, Any]:
    return {
        "id": n.pk,
        "channel": n.channel_id,
        "kind": n.kind,
        "status": n.status,
        "attempts": n.attempts,
        "response_code": n.response_code,
        "error": n.error,
        "duration_ms": n.duration_ms,
        "created_at": _iso(n.created_at),
        "sent_at": _iso(n.sent_at),
    }


class ChannelInput(serializers.Serializer):
    name = StrictCharField(max_length=100)
    kind = StrictChoiceField(choices=Channel.Kind.choices)
    config = serializers.DictField(
        help_text="slack: {url}; webhook: {url, secret?}; email: {to: [addresses]}"
    )
    is_enabled = StrictBooleanField(required=False, default=True)


class RuleInput(StrictModelSerializer):
    channels = serializers.ListField(child=StrictIntegerField(), required=False, default=list)

    class Meta:
        model = AlertRule
        fields = [*RULE_FIELDS, "channels"]


class _Crud(TenantAPIView):
    method_scopes: ClassVar[dict[str, str]] = {
        "GET": ApiKey.Scope.READ,
        "POST": ApiKey.Scope.ADMIN,
        "PATCH": ApiKey.Scope.ADMIN,
        "DELETE": ApiKey.Scope.ADMIN,
    }


class ChannelListApi(_Crud):
    @extend_schema(
        operation_id="channels_list", summary="Notification channels", responses={200: ChannelList}
    )
    def get(self, request: Request) -> Response:
        return Response(
            {
                "results": [
                    channel_json(c)
                    for c in Channel.objects.for_tenant(self.tenant).order_by("name")
                ]
            }
        )

    @extend_schema(
        operation_id="channels_create",
        summary="Add a channel (slack: {url}; webhook: {url, secret?}; email: {to: [...]})",
        request=ChannelInput,
        responses={201: ChannelOut},
    )
    def post(self, request: Request) -> Response:
        incoming = ChannelInput(data=request.data)
        incoming.is_valid(raise_exception=True)
        channel = channel_save(channel=Channel(tenant=self.tenant, **incoming.validated_data))
        data = channel_json(channel)
        if "secret" in channel.config:
            data["config"]["secret"] = channel.config["secret"]  # the only time it is shown
        return Response(data, status=201)


class ChannelDetailApi(_Crud):
    def _channel(self, channel_id: int) -> Channel:
        channel = Channel.objects.for_tenant(self.tenant).filter(pk=channel_id).first()
        if channel is None:
            raise NotFound(f"No channel {channel_id} in this tenant.")
        return channel

    @extend_schema(operation_id="channels_read", summary="One channel", responses={200: ChannelOut})
    def get(self, request: Request, channel_id: int) -> Response:
        return Response(channel_json(self._channel(channel_id)))

    @extend_schema(
        operation_id="channels_update",
        summary="Change a channel",
        request=ChannelInput,
        responses={200: ChannelOut},
    )
    def patch(self, request: Request, channel_id: int) -> Response:
        channel = self._channel(channel_id)
        incoming = ChannelInput(data=request.data, partial=True)
        incoming.is_valid(raise_exception=True)
        for name, value in incoming.validated_data.items():
            setattr(channel, name, value)
        if incoming.validated_data.get("is_enabled"):
            channel.disabled_reason = ""
        return Response(channel_json(channel_save(channel=channel)))

    @extend_schema(
        operation_id="channels_delete", summary="Delete a channel", responses={204: None}
    )
    def delete(self, request: Request, channel_id: int) -> Response:
        self._channel(channel_id).delete()
        return Response(status=204)


class ChannelTestApi(_Crud):
    method_scopes: ClassVar[dict[str, str]] = {"POST": ApiKey.Scope.ADMIN}

    @extend_schema(
        operation_id="channels_test",
        summary="Send a test notification now",
        request=None,
        responses={
            200: NotificationOut,
            502: OpenApiResponse(
                NotificationOut,
                description="The channel's own server refused or failed: the record says why.",
            ),
        },
    )
    def post(self, request: Request, channel_id: int) -> Response:
        channel = Channel.objects.for_tenant(self.tenant).filter(pk=channel_id).first()
        if channel is None:
            raise NotFound(f"No channel {channel_id} in this tenant.")
        notification = channel_send_test(channel=channel)
        return Response(
            notification_json(notification), status=200 if notification.status == "sent" else 502
        )


def _channels_of(tenant: Any, ids: list[int]) -> list[Channel]:
    found = list(Channel.objects.for_tenant(tenant).filter(pk__in=ids))
    missing = sorted(set(ids) - {c.pk for c in found})
    if missing:
        raise DomainError(
            f"No channel {', '.join(map(str, missing))} in this tenant.", field="channels"
        )
    return found


class RuleListApi(_Crud):
    @extend_schema(operation_id="rules_list", summary="Alert rules", responses={200: RuleList})
    def get(self, request: Request) -> Response:
        rules = (
            AlertRule.objects.for_tenant(self.tenant).prefetch_related("channels").order_by("name")
        )
        return Response({"results": [rule_json(r) for r in rules]})

    @extend_schema(
        operation_id="rules_create",
        summary="Add an alert rule",
        request=RuleInput,
        responses={201: RuleOut},
    )
    def post(self, request: Request) -> Response:
        incoming = RuleInput(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = dict(incoming.validated_data)
        channels = _channels_of(self.tenant, data.pop("channels", []))
        rule = AlertRule(tenant=self.tenant, **data)
        rule_validate(rule)
        with transaction.atomic():
            rule.save()
            rule.channels.set(channels)
        return Response(rule_json(rule), status=201)


class RuleDetailApi(_Crud):
    def _rule(self, rule_id: int) -> AlertRule:
        rule = AlertRule.objects.for_tenant(self.tenant).filter(pk=rule_id).first()
        if rule is None:
            raise NotFound(f"No alert rule {rule_id} in this tenant.")
        return rule

    @extend_schema(operation_id="rules_read", summary="One alert rule", responses={200: RuleOut})
    def get(self, request: Request, rule_id: int) -> Response:
        return Response(rule_json(self._rule(rule_id)))

    @extend_schema(
        operation_id="rules_update",
        summary="Change an alert rule",
        request=RuleInput,
        responses={200: RuleOut},
    )
    def patch(self, request: Request, rule_id: int) -> Response:
        rule = self._rule(rule_id)
        incoming = RuleInput(rule, data=request.data, partial=True)
        incoming.is_valid(raise_exception=True)
        data = dict(incoming.validated_data)
        channels = (
            _channels_of(self.tenant, data.pop("channels")) if "channels" in request.data else None
        )
        for name, value in data.items():
            setattr(rule, name, value)
        rule_validate(rule)
        with transaction.atomic():
            rule.save()
            if channels is not None:
                rule.channels.set(channels)
        return Response(rule_json(rule))

    @extend_schema(
        operation_id="rules_delete", summary="Delete an alert rule", responses={204: None}
    )
    def delete(self, request: Request, rule_id: int) -> Response:
        self._rule(rule_id).delete()
        return Response(status=204)


class AlertListApi(TenantAPIView):
    required_scope = ApiKey.Scope.READ

    @extend_schema(
        operation_id="alerts_list",
        summary="Alerts, newest first (at most 200)",
        parameters=[
            OpenApiParameter("status", str, enum=["", *Alert.Status.values]),
            OpenApiParameter("severity", str, enum=["", *AlertRule.Severity.values]),
            OpenApiParameter("kind", str, enum=["", *AlertRule.Kind.values]),
            OpenApiParameter("rule", str, pattern="^[0-9]{0,18}$", description="A rule's id"),
            OpenApiParameter("acknowledged", str, enum=["", "true", "false"]),
        ],
        responses={200: AlertList},
    )
    def get(self, request: Request) -> Response:
        qs = Alert.objects.for_tenant(self.tenant).select_related("rule").order_by("-first_seen_at")
        params = request.query_params
        for name, lookup, allowed in (
            ("status", "status", Alert.Status.values),
            ("severity", "severity", AlertRule.Severity.values),
            ("kind", "rule__kind", AlertRule.Kind.values),
        ):
            if value := params.get(name):
                if value not in allowed:
                    raise DomainError(f"{name} must be one of {', '.join(allowed)}.", field=name)
                qs = qs.filter(**{lookup: value})
        if rule := params.get("rule"):
            if not re.fullmatch("[0-9]{1,18}", rule):
                raise DomainError("rule must be a rule id.", field="rule")
            qs = qs.filter(rule_id=int(rule))
        if acknowledged := params.get("acknowledged"):
            if acknowledged not in ("true", "false"):
                raise DomainError("acknowledged must be true or false.", field="acknowledged")
            qs = qs.filter(acknowledged_at__isnull=acknowledged == "false")
        return Response({"results": [alert_json(a) for a in qs[:200]]})


class AlertAcknowledgeApi(TenantAPIView):
    required_scope = ApiKey.Scope.ADMIN

    @extend_schema(
        operation_id="alerts_acknowledge",
        summary="Acknowledge an alert",
        request=None,
        responses={200: AlertOut},
    )
    def post(self, request: Request, alert_id: int) -> Response:
        alert = (
            Alert.objects.for_tenant(self.tenant).select_related("rule").filter(pk=alert_id).first()
        )
        if alert is None:
            raise NotFound(f"No alert {alert_id} in this tenant.")
        user = request.user if getattr(request.user, "pk", None) and not self.api_key_id else None
        return Response(alert_json(alert_acknowledge(alert=alert, user=user)))
