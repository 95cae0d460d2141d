from __future__ import annotations

import pytest

from alerts.models import Channel
from alerts.services import channel_save
from alerts.tasks import send_daily_reports
from tests.helpers import event, post_usage

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "frozen")]


def test_yesterdays_report_goes_to_each_tenants_email_channels(
    acme, outsider, ingest_client, outsider_client, mailoutbox
):
    channel_save(
        channel=Channel(tenant=acme, name="finance", kind="email", config={"to": ["cfo@acme.test"]})
    )
    post_usage(ingest_client, [event(event_id="a"), event(event_id="b")])  # 20 November: $0.0027
    post_usage(outsider_client, event(event_id="secret", end_user="globex-ceo"))
    assert send_daily_reports() == 1
    [mail] = mailoutbox
    assert mail.to == ["cfo@acme.test"]
    assert mail.subject == "[costmon] Acme Corp: spend on Friday 20 November 2026"
    assert "$0.0027" in mail.body and "globex-ceo" not in mail.body


def test_the_report_email_shows_money_by_the_display_rule(
    acme, outsider, ingest_client, mailoutbox
):
    """Cents from $1, three significant digits below: the email is read by people; the
    cost_report command and its CSV keep every nano-dollar."""
    channel_save(
        channel=Channel(tenant=acme, name="finance", kind="email", config={"to": ["cfo@acme.test"]})
    )
    # claude-haiku-4-5 at $1/$5: $0.00135 + $0.004069 = $0.005419 exactly.
    post_usage(
        ingest_client,
        [event(event_id="a"), event(event_id="c", input_tokens=1234, output_tokens=567)],
    )
    assert send_daily_reports() == 1
    [mail] = mailoutbox
    assert "$0.00542" in mail.body
    assert "$0.005419" not in mail.body and "$0.004069" not in mail.body
    assert "$0.00271" in mail.body  # the average per call, $0.0027095
