"""The anomaly rule (kind "anomaly"): the last complete hour against its hour-of-week band
(usage.anomalies), on five generated weeks in America/New_York. A normal week raises nothing;
an injected spike raises exactly one alert, with exact figures; a missing busy hour does not
alert (only spikes do); the outsider's spike raises nothing for acme; the old spike kind is
untouched (tests/alerts/test_rules.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from alerts.admin.rules import rule_condition
from alerts.models import Alert, AlertRule
from alerts.rules import HOURLY_KINDS, evaluate_anomaly
from alerts.services import alert_rules_evaluate, rule_validate
from costmon.core import tenancy
from costmon.core.models import Tenant
from costmon.core.money import format_money
from tests.alerts.conftest import make_rule
from tests.weekly import record, weekly_pattern

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
TZ = "America/New_York"
WEEK5_START = datetime(2026, 11, 9, 5, tzinfo=UTC)  # Monday 9 November 00:00 EST
SPIKE = datetime(2026, 11, 11, 19, tzinfo=UTC)  # Wednesday 14:00 EST
DROP = datetime(2026, 11, 12, 15, tzinfo=UTC)  # Thursday 10:00 EST


@pytest.fixture
def usage(acme: Tenant, outsider: Tenant) -> dict[datetime, int]:
    with tenancy.unscoped():
        acme.timezone = TZ
        acme.save(update_fields=["timezone"])
        pattern = weekly_pattern(tz=TZ, first_monday=date(2026, 10, 12), weeks=5)
        pattern[SPIKE] = 500_000
        pattern[DROP] = 0
        record(acme, pattern)
        record(outsider, {datetime(2026, 11, 13, 15, tzinfo=UTC): 5_000_000}, prefix="g")
    return pattern


def anomaly_rule(tenant: Tenant, **fields: Any) -> AlertRule:
    with tenancy.unscoped():
        settings = {"trailing_days": 28, "multiplier": Decimal(2), "min_volume": Decimal("0.05")}
        return make_rule(tenant, [], kind="anomaly", **{**settings, **fields})


def test_only_the_spike_hour_alerts_over_the_whole_week(usage, acme):
    rule = anomaly_rule(acme)
    fired = {}
    with tenancy.tenant_context(acme):
        for h in range(168):
            now = WEEK5_START + timedelta(hours=h + 1, minutes=5)  # just after each hour ends
            if conditions := evaluate_anomaly(rule, acme, now):
                fired[now - timedelta(hours=1, minutes=5)] = conditions
    assert list(fired) == [SPIKE]
    (condition,) = fired[SPIKE]
    assert (condition.level, condition.period, condition.period_label) == (
        "anomaly",
        "2026111119",
        "2026-11-11 14:00",
    )
    # The generated Wednesdays at 14:00 of weeks 1-4 have a median of 97,000 tokens ($0.097):
    # the band's top is 2 x $0.097.
    assert (condition.figure, condition.threshold) == (
        format_money(500_000_000),
        format_money(194_000_000),
    )
    assert condition.title == (
        f"Unusual cost: {format_money(500_000_000)} in the hour from Wed 14:00, "
        f"usually {format_money(97_000_000)}"
    )
    assert "learned from the last 4 weeks" in condition.text


def test_the_rule_raises_one_alert_through_the_service(usage, acme):
    anomaly_rule(acme)
    spike_end = SPIKE + timedelta(hours=1, minutes=1)
    report = alert_rules_evaluate(kinds=[str(k) for k in HOURLY_KINDS], now=spike_end)
    assert report.firing == 1
    with tenancy.unscoped():
        (alert,) = Alert.objects.unscoped().all()
    assert alert.tenant_id == acme.pk and alert.level == "anomaly"
    # The next hour is back to usual: nothing more fires.
    again = alert_rules_evaluate(
        kinds=[str(k) for k in HOURLY_KINDS], now=spike_end + timedelta(hours=1)
    )
    assert again.firing == 0


def test_a_minimum_volume_above_the_spike_keeps_it_quiet(usage, acme):
    rule = anomaly_rule(acme, min_volume=Decimal("0.60"))  # the spike is $0.50
    with tenancy.tenant_context(acme):
        assert evaluate_anomaly(rule, acme, SPIKE + timedelta(hours=1)) == []


def test_the_outsiders_spike_raises_nothing_for_acme_nor_for_itself(usage, acme, outsider):
    acme_rule = anomaly_rule(acme)
    globex_rule = anomaly_rule(outsider)
    after = datetime(2026, 11, 13, 16, 1, tzinfo=UTC)
    with tenancy.tenant_context(acme):
        assert evaluate_anomaly(acme_rule, acme, after) == []
    with tenancy.tenant_context(outsider):
        assert evaluate_anomaly(globex_rule, outsider, after) == []  # no history of its own


def test_an_anomaly_rule_needs_two_whole_weeks_of_history(acme):
    rule = AlertRule(tenant=acme, name="odd hours", kind="anomaly", trailing_days=7)
    with pytest.raises(ValidationError) as caught:
        rule_validate(rule)
    assert caught.value.message_dict["trailing_days"] == [
        "An anomaly rule learns from the same hour of the last whole weeks: set trailing_days "
        "to 14 to 56 (28 is four weeks)."
    ]
    rule.trailing_days = 28
    rule_validate(rule)


def test_the_api_creates_anomaly_rules_and_says_what_a_short_history_needs(acme, admin_client_key):
    body = {"name": "odd hours", "kind": "anomaly", "multiplier": "2", "min_volume": "0.05"}
    short = admin_client_key.post(
        "/api/v1/alert-rules/", {**body, "trailing_days": 7}, format="json"
    )
    assert short.status_code == 400
    assert "set trailing_days to 14 to 56" in short.content.decode()
    made = admin_client_key.post(
        "/api/v1/alert-rules/", {**body, "trailing_days": 28}, format="json"
    )
    assert made.status_code == 201, made.content
    assert (made.json()["kind"], made.json()["trailing_days"]) == ("anomaly", 28)


def test_the_admin_describes_anomaly_and_price_rules_as_what_they_are(acme):
    anomaly = AlertRule(tenant=acme, kind="anomaly", multiplier=Decimal("2.5"), trailing_days=28)
    prices = AlertRule(tenant=acme, kind="price_changed")
    assert rule_condition(anomaly) == "above the hour-of-week band (2.5x, 4 weeks)"
    assert rule_condition(prices) == "catalog prices changed"
