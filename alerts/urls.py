from django.urls import path

from alerts import api
from costmon.core import converters

converters.register()

urlpatterns = [
    path("alert-rules/", api.RuleListApi.as_view(), name="api-alert-rules"),
    path("alert-rules/<id:rule_id>/", api.RuleDetailApi.as_view(), name="api-alert-rule"),
    path("channels/", api.ChannelListApi.as_view(), name="api-channels"),
    path("channels/<id:channel_id>/", api.ChannelDetailApi.as_view(), name="api-channel"),
    path("channels/<id:channel_id>/test/", api.ChannelTestApi.as_view(), name="api-channel-test"),
    path("alerts/", api.AlertListApi.as_view(), name="api-alerts"),
    path(
        "alerts/<id:alert_id>/acknowledge/",
        api.AlertAcknowledgeApi.as_view(),
        name="api-alert-ack",
    ),
]
