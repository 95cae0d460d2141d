"""The alerts API's reply schemas, for the OpenAPI document only (the views build their replies
with `alerts.api.rule_json` and friends; tests/costmon/test_schema.py checks the two agree)."""

from __future__ import annotations

from rest_framework import serializers

from alerts.models import RULE_FIELDS, Alert, AlertRule, Channel, Notification


class ChannelOut(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=Channel.Kind.values)
    config = serializers.DictField(help_text="A webhook's secret is shown once, at creation.")
    is_enabled = serializers.BooleanField()
    disabled_reason = serializers.CharField()
    last_error = serializers.CharField()
    last_error_at = serializers.DateTimeField(allow_null=True)
    last_success_at = serializers.DateTimeField(allow_null=True)


class ChannelList(serializers.Serializer):
    results = ChannelOut(many=True)


class RuleOut(serializers.ModelSerializer):
    channels = serializers.ListField(child=serializers.IntegerField())

    class Meta:
        model = AlertRule
        fields = ["id", *RULE_FIELDS, "channels"]


class RuleList(serializers.Serializer):
    results = RuleOut(many=True)


class AlertOut(serializers.Serializer):
    id = serializers.IntegerField()
    rule = serializers.IntegerField()
    rule_name = serializers.CharField()
    kind = serializers.ChoiceField(choices=AlertRule.Kind.values)
    scope = serializers.CharField()
    period = serializers.CharField()
    level = serializers.CharField()
    severity = serializers.ChoiceField(choices=AlertRule.Severity.values)
    status = serializers.ChoiceField(choices=Alert.Status.values)
    title = serializers.CharField()
    text = serializers.CharField()
    figure = serializers.CharField()
    threshold = serializers.CharField()
    link = serializers.CharField()
    first_seen_at = serializers.DateTimeField(allow_null=True)
    last_seen_at = serializers.DateTimeField(allow_null=True)
    last_notified_at = serializers.DateTimeField(allow_null=True)
    notify_count = serializers.IntegerField()
    resolved_at = serializers.DateTimeField(allow_null=True)
    acknowledged_at = serializers.DateTimeField(allow_null=True)


class AlertList(serializers.Serializer):
    results = AlertOut(many=True)


class NotificationOut(serializers.Serializer):
    id = serializers.IntegerField()
    channel = serializers.IntegerField()
    kind = serializers.CharField()
    status = serializers.ChoiceField(choices=Notification.Status.values)
    attempts = serializers.IntegerField()
    response_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField()
    duration_ms = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField(allow_null=True)
    sent_at = serializers.DateTimeField(allow_null=True)
