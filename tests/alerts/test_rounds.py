"""Rounds of rules fanned out per tenant: which tenants are due, the lease that keeps a
tenant's rounds apart, and exactly one notification when rounds overlap."""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from alerts import rules as alert_rules
from alerts.models import Alert, AlertRule, Channel, Notification, RuleRound
from alerts.rounds import FREQUENT, HOURLY, KINDS, next_due, rule_round_run
from alerts.services import EvaluationReport, channel_save, tenant_rules_evaluate
from alerts.tasks import evaluate_frequent_rules, evaluate_hourly_rules
from budgets.models import CounterUpdate
from budgets.services import budget_create, budget_update
from budgets.updates import counter_updates_sweep
from costmon.core.models import Tenant
from costmon.core.tenancy import tenant_context, unscoped
from tests.alerts.conftest import make_rule
from tests.helpers import event, post_usage
from usage.models import UsageEvent
from usage.signals import BulkLoaded, bulk_loaded, usage_rewritten

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "frozen")]
TODAY = "2026-11-21T11:00:00Z"  # NOW is 12:00 UTC
postgres_only = pytest.mark.skipif(
    os.environ.get("COSTMON_TEST_DB") == "sqlite", reason="row-level security is PostgreSQL's"
)


def today(**fields: Any) -> dict[str, Any]:
    return event(occurred_at=TODAY, **fields)


def dispatch(capture: Any, task: Any = evaluate_frequent_rules, sweep: bool = True) -> set[str]:
    """Beat's task (the rounds run inline, Celery being eager in tests); the slugs of the
    tenants whose round ran now. Beat's sweeper has applied and removed the counter updates
    ingest left (every 20 seconds, here at once) unless `sweep` is False."""
    if sweep:
        counter_updates_sweep(min_age_seconds=0)
    with capture(execute=True):
        task()
    with unscoped():
        return set(
            RuleRound.objects.unscoped()
            .filter(started_at=timezone.now())
            .values_list("tenant__slug", flat=True)
        )


def sent(tenant: Tenant) -> list[tuple[str, str]]:
    with unscoped():
        return list(
            Notification.objects.for_tenant(tenant)
            .order_by("pk")
            .values_list("kind", "alert__title")
        )


@pytest.fixture
def globex_mail(outsider: Tenant) -> Channel:
    with unscoped():
        return channel_save(
            channel=Channel(
                tenant=outsider, name="ops", kind="email", config={"to": ["ops@globex.example"]}
            )
        )


@pytest.fixture
def two_tenants(acme, outsider, webhook, globex_mail, ingest_client, outsider_client):
    """acme: $0.0027 today against a $0.002 rule; globex (the outsider): $0.00135 against
    $0.001."""
    make_rule(acme, [webhook], kind="spend", threshold_usd=Decimal("0.002"))
    make_rule(outsider, [globex_mail], kind="spend", threshold_usd=Decimal("0.001"))
    post_usage(ingest_client, [today(event_id="a"), today(event_id="b")])
    post_usage(outsider_client, today(event_id="g"))


def test_beat_runs_a_round_per_tenant_and_each_tenant_hears_only_its_own_alert(
    acme, outsider, two_tenants, receiver, django_capture_on_commit_callbacks
):
    assert dispatch(django_capture_on_commit_callbacks) == {"acme", "globex"}
    assert sent(acme) == [("alert", "Spend today is above $0.002")]
    assert sent(outsider) == [("alert", "Spend today is above $0.001")]
    [received] = receiver.requests
    assert (received.json["tenant"], received.json["figure"]) == ("acme", "$0.0027")
    [email] = mail.outbox
    assert (email.to, "acme" in email.body) == (["ops@globex.example"], False)
    with tenant_context(acme):
        assert list(Alert.objects.values_list("figure", flat=True)) == ["$0.0027"]
        assert list(RuleRound.objects.values_list("tenant__slug", flat=True)) == ["acme"]


def test_a_minute_later_without_changes_no_tenant_is_evaluated(
    two_tenants, frozen, django_capture_on_commit_callbacks
):
    dispatch(django_capture_on_commit_callbacks)
    frozen.shift(60)
    assert dispatch(django_capture_on_commit_callbacks) == set()
    assert evaluate_frequent_rules() == 0


def test_new_usage_makes_only_its_tenant_due_and_its_alert_rises_a_level(
    acme, outsider, two_tenants, ingest_client, frozen, django_capture_on_commit_callbacks
):
    budget_create(tenant=acme, data={"name": "Daily", "period": "day", "limit_usd": "0.004"})
    make_rule(acme, [], kind="budget")
    dispatch(django_capture_on_commit_callbacks)
    frozen.shift(60)
    post_usage(ingest_client, today(event_id="c"))  # $0.00405 of $0.004
    assert dispatch(django_capture_on_commit_callbacks) == {"acme"}
    with unscoped():
        levels = set(Alert.objects.for_tenant(acme).values_list("level", "figure"))
    assert levels == {("above", "$0.00405"), ("exceeded", "$0.00405")}
    frozen.shift(60)
    assert dispatch(django_capture_on_commit_callbacks) == set()


def test_a_changed_rule_or_budget_makes_its_tenant_due(
    acme, two_tenants, frozen, django_capture_on_commit_callbacks
):
    budget = budget_create(tenant=acme, data={"name": "Monthly", "limit_usd": "100"})
    rule = make_rule(acme, [], kind="budget")
    dispatch(django_capture_on_commit_callbacks)
    frozen.shift(60)
    with unscoped():
        rule.cooldown_minutes = 30
        rule.save()
    assert dispatch(django_capture_on_commit_callbacks) == {"acme"}
    frozen.shift(60)
    budget_update(budget=budget, data={"limit_usd": "0.001"})
    assert dispatch(django_capture_on_commit_callbacks) == {"acme"}
    with unscoped():
        assert Alert.objects.for_tenant(acme).filter(level="exceeded").count() == 1
    frozen.shift(60)
    with unscoped():
        AlertRule.objects.for_tenant(acme).filter(kind="budget").delete()
    assert dispatch(django_capture_on_commit_callbacks) == {"acme"}


def test_the_tenants_midnight_resolves_yesterdays_alert_without_new_usage(
    acme, webhook, ingest_client, frozen, django_capture_on_commit_callbacks
):
    with unscoped():
        Tenant.objects.filter(pk=acme.pk).update(timezone="Asia/Kolkata")  # UTC+05:30
    make_rule(acme, [webhook], kind="spend", threshold_usd=Decimal("0.002"), notify_resolved=True)
    post_usage(ingest_client, [today(event_id="a"), today(event_id="b")])
    frozen.move_to("2026-11-21T18:00:00Z")  # 23:30 in Kolkata
    assert dispatch(django_capture_on_commit_callbacks) == {"acme"}
    frozen.move_to("2026-11-21T18:29:00Z")
    assert dispatch(django_capture_on_commit_callbacks) == set()
    frozen.move_to("2026-11-21T18:30:00Z")  # midnight in Kolkata: a new day
    assert dispatch(django_capture_on_commit_callbacks) == {"acme"}
    assert [kind for kind, _ in sent(acme)] == ["alert", "resolved"]


def test_a_reminder_goes_when_the_cooldown_ends_without_new_usage(
    acme, webhook, ingest_client, frozen, django_capture_on_commit_callbacks
):
    make_rule(acme, [webhook], kind="spend", threshold_usd=Decimal("0.001"), cooldown_minutes=30)
    post_usage(ingest_client, today(event_id="a"))
    dispatch(django_capture_on_commit_callbacks)
    frozen.shift(29 * 60)
    assert dispatch(django_capture_on_commit_callbacks) == set()
    frozen.shift(60)
    assert dispatch(django_capture_on_commit_callbacks) == {"acme"}
    assert [kind for kind, _ in sent(acme)] == ["alert", "reminder"]


def test_every_tenant_is_evaluated_at_least_hourly(
    acme, outsider, two_tenants, frozen, django_capture_on_commit_callbacks
):
    dispatch(django_capture_on_commit_callbacks)
    with unscoped():
        due = {
            t.slug: next_due(tenant=t, kinds=KINDS[FREQUENT], now=timezone.now())
            for t in (acme, outsider)
        }
    start = timezone.now()
    # Within the hour, spread over its last ten minutes by tenant (their cooldowns are 60).
    for at in due.values():
        assert start + timedelta(minutes=50) < at <= start + timedelta(hours=1)
    frozen.shift(60 * 60)
    assert dispatch(django_capture_on_commit_callbacks) == {"acme", "globex"}


def test_bulk_loads_and_rewritten_usage_make_their_tenant_due(
    acme, outsider, two_tenants, frozen, django_capture_on_commit_callbacks
):
    dispatch(django_capture_on_commit_callbacks)
    frozen.shift(60)
    bulk_loaded.send(
        sender=UsageEvent, load=BulkLoaded(tenant=acme, examined=1, inserted=1, cost_nanos=1)
    )
    assert dispatch(django_capture_on_commit_callbacks) == {"acme"}
    frozen.shift(60)
    usage_rewritten.send(sender=UsageEvent, tenant_id=outsider.pk)
    assert dispatch(django_capture_on_commit_callbacks) == {"globex"}


def test_pending_counter_updates_keep_a_tenant_due_until_a_round_after_they_went(
    acme, two_tenants, frozen, django_capture_on_commit_callbacks
):
    dispatch(django_capture_on_commit_callbacks)
    with unscoped():
        CounterUpdate.objects.all().delete()
        update = CounterUpdate.objects.create(tenant=acme, payload="{}")
    for _ in range(2):
        frozen.shift(60)
        assert dispatch(django_capture_on_commit_callbacks, sweep=False) == {"acme"}
    with unscoped():
        update.delete()  # the sweeper applied it
    frozen.shift(60)
    assert dispatch(django_capture_on_commit_callbacks, sweep=False) == {"acme"}
    frozen.shift(60)
    assert dispatch(django_capture_on_commit_callbacks, sweep=False) == set()


def test_a_round_that_claims_before_a_batchs_counter_update_is_applied_runs_once_more(
    acme, outsider, two_tenants, frozen, django_capture_on_commit_callbacks
):
    """Ingest marks the tenant in the batch's transaction, before Redis takes the batch: a
    round claiming in between may read counters without it, so it leaves the tenant due."""
    dispatch(django_capture_on_commit_callbacks)
    frozen.shift(60)
    with unscoped():
        RuleRound.objects.unscoped().filter(tenant=acme).update(dirty_since=timezone.now())
        update = CounterUpdate.objects.create(tenant=acme, payload="{}")  # committed, not applied
    assert rule_round_run(tenant_id=acme.pk, cadence=FREQUENT) is not None
    with unscoped():
        update.delete()  # applied, then swept
        assert set(
            RuleRound.objects.unscoped().values_list("tenant__slug", "counters_pending")
        ) == {("acme", True), ("globex", False)}
    frozen.shift(60)
    assert dispatch(django_capture_on_commit_callbacks, sweep=False) == {"acme"}
    frozen.shift(60)
    assert dispatch(django_capture_on_commit_callbacks, sweep=False) == set()


def test_a_rule_that_failed_is_tried_again_at_the_next_dispatch(
    acme, two_tenants, frozen, monkeypatch, django_capture_on_commit_callbacks
):
    def broken(*args: Any) -> list[Any]:
        raise RuntimeError("rollups away")

    monkeypatch.setitem(alert_rules.EVALUATORS, AlertRule.Kind.SPEND, broken)
    assert dispatch(django_capture_on_commit_callbacks) == {"acme", "globex"}
    monkeypatch.undo()
    frozen.shift(60)
    assert dispatch(django_capture_on_commit_callbacks) == {"acme", "globex"}
    assert [kind for kind, _ in sent(acme)] == ["alert"]


def test_a_round_is_skipped_while_the_tenants_previous_round_holds_its_lease(
    acme, outsider, two_tenants, frozen, django_capture_on_commit_callbacks
):
    dispatch(django_capture_on_commit_callbacks)  # creates the tenants' rows
    frozen.shift(60)
    with unscoped():
        RuleRound.objects.for_tenant(acme).update(
            lease_until=timezone.now() + timedelta(minutes=5), lease_token="other"
        )
    for tenant in (acme, outsider):
        usage_rewritten.send(sender=UsageEvent, tenant_id=tenant.pk)
    assert rule_round_run(tenant_id=acme.pk, cadence=FREQUENT) is None
    assert dispatch(django_capture_on_commit_callbacks) == {"globex"}  # acme's runs elsewhere
    frozen.shift(5 * 60)  # the lease expired: that worker died
    assert dispatch(django_capture_on_commit_callbacks) == {"acme"}
    assert [kind for kind, _ in sent(acme)] == ["alert"]


def test_hourly_rounds_run_for_every_tenant_with_hourly_rules(
    acme, outsider, two_tenants, frozen, django_capture_on_commit_callbacks
):
    make_rule(acme, [], kind="projected", threshold_usd=Decimal(1))
    make_rule(outsider, [], kind="spike")
    for _ in range(2):
        assert dispatch(django_capture_on_commit_callbacks, evaluate_hourly_rules) == {
            "acme",
            "globex",
        }
        frozen.shift(60 * 60)
    with unscoped():
        assert RuleRound.objects.unscoped().filter(cadence=HOURLY).count() == 2


@postgres_only
def test_row_level_security_hides_other_tenants_rounds(acme, outsider, two_tenants):
    rule_round_run(tenant_id=outsider.pk, cadence=FREQUENT)
    with tenant_context(acme), connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM alerts_ruleround")
        assert cursor.fetchone() == (0,)


# --- overlapping rounds -------------------------------------------------------------------------


def _at_once(work: Any, n: int = 2) -> list[Any]:
    """Run `work` in n threads (each with its own database connection) released together."""
    barrier = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            results.append(work())
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results


@pytest.mark.django_db(transaction=True)
def test_two_rounds_of_a_tenant_at_once_notify_once(acme, outsider, two_tenants, receiver):
    results = _at_once(lambda: rule_round_run(tenant_id=acme.pk, cadence=FREQUENT))
    # Usually one runs and the other is skipped (its lease is held); where writers queue
    # (SQLite), the second may run after the first: either way, one notification.
    assert sum(r.notified for r in results if r is not None) == 1
    assert sent(acme) == [("alert", "Spend today is above $0.002")]
    assert len(receiver.requests) == 1
    assert sent(outsider) == []


@pytest.mark.django_db(transaction=True)
def test_rounds_that_overlap_past_the_lease_still_notify_each_alert_once(
    acme, outsider, webhook, ingest_client, receiver
):
    # Five rules crossed at once, evaluated by two rounds at the same moment (as when a
    # round outlives its lease): each alert is claimed by one round only.
    for cents in range(1, 6):
        make_rule(acme, [webhook], kind="spend", threshold_usd=Decimal(cents) / 10_000)
    post_usage(ingest_client, [today(event_id=f"e{i}") for i in range(5)])  # $0.00675
    tenant = Tenant.objects.get(pk=acme.pk)

    def evaluate() -> EvaluationReport:
        report = EvaluationReport()
        tenant_rules_evaluate(
            tenant=tenant, kinds=KINDS[FREQUENT], now=timezone.now(), report=report
        )
        return report

    reports = _at_once(evaluate)
    assert sorted(r.firing for r in reports) == [5, 5]
    assert sum(r.notified for r in reports) == 5
    assert len(sent(acme)) == 5
    assert sorted(r.json["threshold"] for r in receiver.requests) == [
        "$0.0001",
        "$0.0002",
        "$0.0003",
        "$0.0004",
        "$0.0005",
    ]
    assert sent(outsider) == []


def test_usage_swept_between_two_dispatches_still_makes_only_its_tenant_due(
    acme, outsider, two_tenants, ingest_client, frozen, django_capture_on_commit_callbacks
):
    """Ingest does not mark the tenant itself when its spend goes through the counters: its
    pending counter update keeps the tenant due, and once the sweeper applied and removed it
    (every 20 s, so often before the next dispatch) the sweeper's `usage_counted` marks it."""
    dispatch(django_capture_on_commit_callbacks)
    frozen.shift(60)
    post_usage(ingest_client, today(event_id="swept"))
    with unscoped():
        marked = dict(RuleRound.objects.unscoped().values_list("tenant__slug", "dirty_since"))
        pending = CounterUpdate.objects.unscoped().filter(tenant=acme).exists()
    if pending:  # counters (Redis): nothing marked in the batch's transaction
        assert marked == {"acme": None, "globex": None}
        counter_updates_sweep(min_age_seconds=0)
    with unscoped():
        assert not CounterUpdate.objects.unscoped().exists()
        marked = dict(RuleRound.objects.unscoped().values_list("tenant__slug", "dirty_since"))
    assert marked["acme"] is not None and marked["globex"] is None
    assert dispatch(django_capture_on_commit_callbacks, sweep=False) == {"acme"}
    frozen.shift(60)
    assert dispatch(django_capture_on_commit_callbacks, sweep=False) == set()
