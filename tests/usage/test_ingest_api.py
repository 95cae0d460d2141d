from __future__ import annotations

import threading
from collections import Counter
from decimal import Decimal

import pytest
import time_machine
from django.db import connection
from django.db.models import Sum
from rest_framework.test import APIClient

from budgets.services import budget_create
from costmon.core.periods import EARLIEST, LATEST
from costmon.core.services import api_key_create, api_key_revoke
from tests.budgets.conftest import check
from tests.clickhouse import assert_store_rollups_exact
from tests.helpers import event, post_usage, stored_events
from usage.eventstore.current import event_store
from usage.models import (
    CostSource,
    HourlyRollup,
    ModelAlias,
    ModelHourlyRollup,
    ModelPrice,
    UsageEvent,
)
from usage.user_sums import user_sums

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "unscoped")]
NOW = "2026-11-21T12:00:00Z"


@pytest.fixture(autouse=True)
def _frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


ROLLUP_FIELDS = {
    "calls": "calls",
    "cost": "cost_nanos",
    "input": "input_tokens",
    "output": "output_tokens",
}


def rollup_totals(tenant):
    """The tenant's rollup sums, the same in each rollup: by end user (in PostgreSQL, or in the
    event store that keeps them) and by model."""
    sums = {name: Sum(column) for name, column in ROLLUP_FIELDS.items()}
    by_model = ModelHourlyRollup.objects.for_tenant(tenant).aggregate(**sums)
    if event_store().keeps_user_rollups:
        assert not HourlyRollup.objects.for_tenant(tenant).exists()
        found = Counter()
        for g in user_sums(tenant, EARLIEST, LATEST, by=("end_user", "api_key")):
            found.update({name: g.sums[column] for name, column in ROLLUP_FIELDS.items()})
        by_user = {name: found[name] if found else None for name in ROLLUP_FIELDS}
    else:
        by_user = HourlyRollup.objects.for_tenant(tenant).aggregate(**sums)
    assert by_user == by_model
    return by_model


def test_it_prices_the_documented_examples_exactly(ingest_client, acme):
    response = post_usage(
        ingest_client,
        [
            event(event_id="a", input_tokens=450, output_tokens=180),
            event(
                event_id="b",
                provider="openai",
                model="text-embedding-3-large",
                operation="embed",
                input_tokens=1000,
                output_tokens=0,
            ),
            event(
                event_id="c",
                provider="openai",
                model="gpt-4o-mini",
                input_tokens=1500,
                output_tokens=500,
            ),
        ],
    )
    assert response.status_code == 201, response.content
    assert response.json() == {
        "events": [
            {"event_id": "a", "cost_usd": "0.00135", "cost_source": "computed", "duplicate": False},
            {"event_id": "b", "cost_usd": "0.00013", "cost_source": "computed", "duplicate": False},
            {
                "event_id": "c",
                "cost_usd": "0.000525",
                "cost_source": "computed",
                "duplicate": False,
            },
        ]
    }
    assert UsageEvent.objects.for_tenant(acme).aggregate(c=Sum("cost_nanos"))["c"] == 2_005_000


def test_a_single_object_is_accepted_and_dated_model_names_find_their_price(ingest_client):
    response = post_usage(
        ingest_client,
        event(
            provider="openai", model="gpt-4o-mini-2024-07-18", input_tokens=1500, output_tokens=500
        ),
    )
    assert response.status_code == 201
    assert response.json()["events"][0]["cost_usd"] == "0.000525"


def test_cached_and_cache_write_tokens_are_parts_of_input_priced_at_their_rates(ingest_client):
    # haiku 4.5: 1000 input of which 600 cache reads ($0.10) and 200 cache writes ($1.25);
    # 200 plain at $1, 100 output at $5: 200*1 + 600*0.1 + 200*1.25 + 100*5 = 1010 -> $0.00101
    response = post_usage(
        ingest_client,
        event(
            input_tokens=1000, cached_input_tokens=600, cache_write_tokens=200, output_tokens=100
        ),
    )
    assert response.json()["events"][0]["cost_usd"] == "0.00101"


def test_an_application_cache_hit_costs_nothing_and_counts_as_a_hit(ingest_client, acme):
    response = post_usage(ingest_client, event(cache_hit=True, input_tokens=450, output_tokens=180))
    assert response.json()["events"][0] == {
        "event_id": "evt-1",
        "cost_usd": "0",
        "cost_source": "computed",
        "duplicate": False,
    }
    rollup = HourlyRollup.objects.for_tenant(acme).get()
    assert (rollup.calls, rollup.cache_hits, rollup.cost_nanos) == (1, 1, 0)


def test_a_callers_cost_is_kept_exactly_and_marked(ingest_client, acme):
    response = post_usage(ingest_client, event(cost_usd="0.123456789"))
    assert response.json()["events"][0] == {
        "event_id": "evt-1",
        "cost_usd": "0.123456789",
        "cost_source": "caller",
        "duplicate": False,
    }
    assert UsageEvent.objects.for_tenant(acme).get().cost_source == CostSource.CALLER


def test_a_json_number_cost_is_read_as_an_exact_decimal(ingest_client):
    response = ingest_client.post(
        "/api/v1/usage/",
        data=b'{"provider":"openai","model":"x","cost_usd":0.1}',
        content_type="application/json",
    )
    assert response.json()["events"][0]["cost_usd"] == "0.1"


def test_duplicate_event_id_is_not_counted_twice(ingest_client, acme, outsider, store):
    batch = [event(event_id="a"), event(event_id="b", input_tokens=1000, output_tokens=0)]
    assert post_usage(ingest_client, batch).status_code == 201
    again = post_usage(ingest_client, [*batch, event(event_id="c")])
    assert again.status_code == 201
    assert [(e["event_id"], e["duplicate"], e["cost_usd"]) for e in again.json()["events"]] == [
        ("a", True, "0.00135"),
        ("b", True, "0.001"),
        ("c", False, "0.00135"),
    ]
    assert len(stored_events(acme)) == 3
    assert stored_events(outsider) == []
    assert rollup_totals(acme) == {"calls": 3, "cost": 3_700_000, "input": 1900, "output": 360}


def test_the_same_event_id_twice_in_one_batch_counts_once(ingest_client, acme, store):
    response = post_usage(ingest_client, [event(event_id="a"), event(event_id="a")])
    assert [e["duplicate"] for e in response.json()["events"]] == [False, True]
    assert [e.event_id for e in stored_events(acme)] == ["a"]
    assert rollup_totals(acme)["calls"] == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_of_one_batch_are_counted_once(acme, outsider, prices, store):
    """Five clients send the same batch at once: each event is stored, rolled up and counted
    once. Its names are known beforehand (a first batch), so no insert of a new name makes the
    five wait for each other: only the store's own exactly-once design keeps them apart."""
    secret = api_key_create(tenant=acme, scopes="ingest").secret
    budget_create(tenant=acme, data={"name": "Month", "limit_usd": Decimal("100")})
    warm = APIClient()
    warm.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    post_usage(warm, [event(event_id=f"w{i}", end_user=f"u{i}") for i in range(7)])
    batch = [event(event_id=f"e{i}", end_user=f"u{i % 7}") for i in range(200)]
    statuses: list[int] = []
    barrier = threading.Barrier(5)

    def send() -> None:
        from django.db import connection as thread_connection
        from rest_framework.test import APIClient

        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        barrier.wait()
        statuses.append(post_usage(client, batch).status_code)
        thread_connection.close()

    threads = [threading.Thread(target=send) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [201] * 5
    assert len(stored_events(acme)) == 207
    assert stored_events(outsider) == []
    assert rollup_totals(acme) == {
        "calls": 207,
        "cost": 207 * 1_350_000,
        "input": 207 * 450,
        "output": 207 * 180,
    }
    assert_store_rollups_exact(acme)  # the ClickHouse store's own, key by key
    assert_store_rollups_exact(outsider)
    # The spend counter (Redis) that budgets read: each event once.
    assert check(warm).json()["budgets"][0]["used_usd"] == str(Decimal("0.00135") * 207)


def test_rollups_equal_the_sum_of_their_events(ingest_client, acme):
    batch = [
        event(
            event_id=f"e{i}",
            occurred_at=f"2026-11-20T{i % 24:02d}:{i % 60:02d}:00Z",
            end_user=f"u{i % 5}",
            model=["claude-haiku-4-5", "gpt-4o-mini"][i % 2],
            provider=["anthropic", "openai"][i % 2],
            input_tokens=100 + i,
            output_tokens=i,
            latency_ms=100 + i,
            status="error" if i % 10 == 0 else "success",
        )
        for i in range(300)
    ]
    assert post_usage(ingest_client, batch).status_code == 201
    ev = UsageEvent.objects.for_tenant(acme)
    assert ev.count() == 300
    assert rollup_totals(acme) == {
        "calls": ev.count(),
        "cost": ev.aggregate(s=Sum("cost_nanos"))["s"],
        "input": ev.aggregate(s=Sum("input_tokens"))["s"],
        "output": ev.aggregate(s=Sum("output_tokens"))["s"],
    }
    assert HourlyRollup.objects.for_tenant(acme).aggregate(
        e=Sum("errors"), l=Sum("latency_ms_sum")
    ) == {
        "e": 30,
        "l": sum(100 + i for i in range(300)),
    }


def test_an_unknown_model_is_stored_unpriced_and_priced_once_a_price_exists(ingest_client, acme):
    response = post_usage(
        ingest_client,
        [event(event_id="x", provider="newco", model="brainy-1"), event(event_id="y")],
    )
    assert response.json()["events"][0]["cost_source"] == "unpriced"
    assert HourlyRollup.objects.for_tenant(acme).aggregate(u=Sum("unpriced_calls"))["u"] == 1

    ModelPrice.objects.create(
        provider="newco",
        model="brainy-1",
        effective_from="2026-01-01T00:00:00Z",
        input_per_mtok=Decimal(2),
        output_per_mtok=Decimal(10),
    )
    from usage.maintenance import usage_reprice_unpriced

    report = usage_reprice_unpriced(tenant=acme)
    assert (report.changed, report.still_unpriced) == (1, 0)
    priced = UsageEvent.objects.for_tenant(acme).get(event_id="x")
    assert (priced.cost_nanos, priced.cost_source) == (
        2_700_000,
        CostSource.COMPUTED,
    )  # 450*2 + 180*10
    assert rollup_totals(acme)["cost"] == 2_700_000 + 1_350_000
    assert HourlyRollup.objects.for_tenant(acme).aggregate(u=Sum("unpriced_calls"))["u"] == 0


def test_one_pass_over_every_tenant_prices_their_waiting_events_with_one_global_index(
    ingest_client, outsider_client, acme, outsider, monkeypatch
):
    from usage import catalog
    from usage.repricing import reprice_unpriced_usage

    for client in (ingest_client, outsider_client):
        post_usage(client, [event(event_id="x", provider="newco", model="brainy-1")])
    # The outsider has its own rate for the name: the shared global index must not replace it.
    ModelPrice.objects.create(
        tenant=outsider,
        provider="newco",
        model="brainy-1",
        effective_from="2026-01-01T00:00:00Z",
        input_per_mtok=Decimal(1),
        output_per_mtok=Decimal(1),
    )
    ModelPrice.objects.create(
        provider="newco",
        model="brainy-1",
        effective_from="2026-01-01T00:00:00Z",
        input_per_mtok=Decimal(2),
        output_per_mtok=Decimal(10),
    )
    loads = []
    real_load = catalog._load_global_list

    def counted(held):
        loads.append(held)
        return real_load(held)

    monkeypatch.setattr(catalog, "_load_global_list", counted)

    assert reprice_unpriced_usage() == 2
    assert loads == [frozenset()]  # two tenants, one read of the global list
    assert UsageEvent.objects.for_tenant(acme).get(event_id="x").cost_nanos == 2_700_000
    # 450*1 + 180*1 at the outsider's own rate
    assert UsageEvent.objects.for_tenant(outsider).get(event_id="x").cost_nanos == 630_000
    assert rollup_totals(acme)["cost"] == 2_700_000
    assert rollup_totals(outsider)["cost"] == 630_000


def test_an_event_is_priced_with_the_price_in_force_when_it_occurred(ingest_client):
    ModelPrice.objects.create(
        provider="anthropic",
        model="claude-haiku-4-5",
        effective_from="2026-11-20T12:00:00Z",
        input_per_mtok=Decimal(2),
        output_per_mtok=Decimal(10),
    )
    response = post_usage(
        ingest_client,
        [
            event(event_id="before", occurred_at="2026-11-20T11:59:59Z"),
            event(event_id="after", occurred_at="2026-11-20T12:00:00Z"),
        ],
    )
    assert [e["cost_usd"] for e in response.json()["events"]] == ["0.00135", "0.0027"]


def test_a_tenant_override_and_alias_price_a_deployment_name(
    ingest_client, acme, outsider, outsider_client
):
    ModelPrice.objects.create(
        tenant=acme,
        provider="openai",
        model="gpt-4o",
        effective_from="2025-01-01T00:00:00Z",
        input_per_mtok=Decimal(2),
        output_per_mtok=Decimal(8),
    )
    ModelAlias.objects.create(
        tenant=acme,
        alias="prod-4o-eastus",
        provider="azure",
        target_provider="openai",
        target_model="gpt-4o",
    )
    deployment = event(
        provider="azure", model="prod-4o-eastus", input_tokens=1000, output_tokens=1000
    )
    assert post_usage(ingest_client, deployment).json()["events"][0]["cost_usd"] == "0.01"
    # The outsider has neither the alias nor the negotiated rate.
    assert post_usage(outsider_client, deployment).json()["events"][0]["cost_source"] == "unpriced"
    plain = event(provider="openai", model="gpt-4o", input_tokens=1000, output_tokens=1000)
    assert (
        post_usage(outsider_client, {**plain, "event_id": "o2"}).json()["events"][0]["cost_usd"]
        == "0.0125"
    )


def test_the_long_context_tier_applies_above_its_threshold(ingest_client):
    ModelPrice.objects.create(
        provider="anthropic",
        model="claude-sonnet-4-5",
        effective_from="2025-01-01T00:00:00Z",
        input_per_mtok=Decimal(3),
        output_per_mtok=Decimal(15),
        long_context_threshold=200_000,
        long_input_per_mtok=Decimal(6),
        long_output_per_mtok=Decimal("22.50"),
    )
    response = post_usage(
        ingest_client,
        [
            event(
                event_id="short",
                model="claude-sonnet-4-5",
                input_tokens=200_000,
                output_tokens=1000,
            ),
            event(
                event_id="long", model="claude-sonnet-4-5", input_tokens=200_001, output_tokens=1000
            ),
        ],
    )
    assert [e["cost_usd"] for e in response.json()["events"]] == ["0.615", "1.222506"]


def test_a_bad_batch_lists_every_error_and_stores_nothing(ingest_client, acme):
    response = post_usage(
        ingest_client,
        [
            event(event_id="ok"),
            {"provider": "openai", "input_tokens": -5, "colour": "red"},
            event(event_id="late", occurred_at="2026-11-23T12:00:00Z", output_tokens="many"),
            "not an object",
        ],
    )
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert {(e["index"], e["field"]) for e in errors} == {
        (1, "model"),
        (1, "input_tokens"),
        (1, "colour"),
        (2, "occurred_at"),
        (2, "output_tokens"),
        (3, None),
    }
    assert all(e["message"] for e in errors)
    assert UsageEvent.objects.for_tenant(acme).count() == 0
    assert HourlyRollup.objects.for_tenant(acme).count() == 0


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"input_tokens": 10**9}, "input_tokens", "check the units"),
        ({"input_tokens": 1.5}, "input_tokens", "whole number"),
        ({"input_tokens": True}, "input_tokens", "whole number"),
        ({"cached_input_tokens": 500}, "cached_input_tokens", "exceed input_tokens"),
        ({"occurred_at": "yesterday"}, "occurred_at", "ISO 8601"),
        ({"occurred_at": "1999-12-31T00:00:00Z"}, "occurred_at", "after 2000"),
        ({"cost_usd": "abc"}, "cost_usd", "decimal"),
        ({"cost_usd": "-1"}, "cost_usd", "negative"),
        ({"status": "ok"}, "status", "success"),
        ({"cache_hit": "yes"}, "cache_hit", "true or false"),
        ({"tags": ["a"]}, "tags", "object"),
        ({"tags": {"team": 5}}, "tags.team", "strings"),
        ({"model": 42}, "model", "string"),
        ({"model": "x" * 201}, "model", "200"),
        ({"event_id": ""}, "event_id", "non-empty"),
        ({"latency_ms": -1}, "latency_ms", "between"),
        ({"end_user": "user\x00-1"}, "end_user", "NUL"),
        ({"event_id": "evt\x00"}, "event_id", "NUL"),
        ({"tags": {"team": "a\x00"}}, "tags.team", "NUL"),
    ],
)
def test_each_bad_field_gets_a_message_a_person_can_act_on(
    ingest_client, overrides, field, fragment
):
    response = post_usage(ingest_client, event(**overrides))
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert (error["index"], error["field"]) == (0, field)
    assert fragment in error["message"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "fragment"),
    [
        (b'{"provider": ', "application/json", 400, "Malformed JSON"),
        (b"[]", "application/json", 400, "at least one"),
        (b'"hello"', "application/json", 400, "JSON object"),
        (
            b"provider=openai",
            "application/x-www-form-urlencoded",
            400,
            "Content-Type: application/json",
        ),
    ],
)
def test_a_malformed_body_gets_a_clear_400(ingest_client, body, content_type, status, fragment):
    response = ingest_client.post("/api/v1/usage/", data=body, content_type=content_type)
    assert response.status_code == status
    assert fragment in response.json()["detail"]


def test_a_body_over_the_limit_gets_413(ingest_client, settings):
    settings.COSTMON_MAX_BODY_BYTES = 2048
    response = post_usage(ingest_client, [event(event_id=f"e{i}") for i in range(50)])
    assert response.status_code == 413
    assert "split the batch" in response.json()["detail"]


def test_too_many_events_in_one_request_is_refused(ingest_client, settings):
    settings.COSTMON_MAX_BATCH_EVENTS = 3
    response = post_usage(ingest_client, [event(event_id=f"e{i}") for i in range(4)])
    assert response.status_code == 400
    assert "at most 3" in response.json()["detail"]


def test_a_batch_of_a_thousand_events_is_accepted(ingest_client, acme):
    response = post_usage(
        ingest_client, [event(event_id=f"e{i}", end_user=f"u{i % 50}") for i in range(1000)]
    )
    assert response.status_code == 201
    assert len(response.json()["events"]) == 1000
    assert rollup_totals(acme)["cost"] == 1000 * 1_350_000


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (None, "credentials were not provided"),
        ("Bearer cm_nope_nope", "Invalid API key"),
        ("Token abc", "Authorization: Bearer"),
    ],
)
def test_a_missing_or_wrong_key_gets_401(client, acme, header, fragment):
    kwargs = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.post(
        "/api/v1/usage/", data=event(), content_type="application/json", **kwargs
    )
    assert response.status_code == 401
    assert fragment in response.json()["detail"]


def test_a_revoked_key_gets_401_at_once(acme):
    from rest_framework.test import APIClient

    issued = api_key_create(tenant=acme, scopes="ingest")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.secret}")
    assert post_usage(client, event()).status_code == 201  # now cached as valid
    api_key_revoke(api_key=issued.api_key)
    response = post_usage(client, event(event_id="2"))
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_a_key_without_the_ingest_scope_gets_403(read_client):
    response = post_usage(read_client, event())
    assert response.status_code == 403
    assert "ingest" in response.json()["detail"]


def test_the_same_event_id_in_two_tenants_is_two_events(
    ingest_client, outsider_client, acme, outsider, store
):
    assert post_usage(ingest_client, event()).json()["events"][0]["duplicate"] is False
    assert post_usage(outsider_client, event()).json()["events"][0]["duplicate"] is False
    assert len(stored_events(acme)) == 1
    assert len(stored_events(outsider)) == 1


def test_it_hides_other_tenants_events(ingest_client, outsider_client, acme, outsider, store):
    post_usage(outsider_client, event(event_id="secret", end_user="globex-ceo"))
    post_usage(ingest_client, event(event_id="mine"))
    read = api_key_create(tenant=acme, scopes="read").secret
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {read}")
    listed = client.get("/api/v1/usage/").json()["results"]
    assert [e["event_id"] for e in listed] == ["mine"]
    csv_body = b"".join(client.get("/api/v1/usage/?format=csv").streaming_content).decode()
    assert "globex-ceo" not in csv_body and "mine" in csv_body


def test_ingest_does_no_more_than_a_handful_of_queries(
    ingest_client, django_assert_max_num_queries, settings
):
    settings.COSTMON_CATALOG_TTL_SECONDS = 60
    post_usage(ingest_client, event(event_id="warm"))  # key and catalog now cached
    # PostgreSQL: lock, dictionary lookup/insert (1) in a savepoint (2), events and rollups in
    # another (2), counter update, release, and the alerts app's mark that the tenant's next
    # rule round is due (alerts.rounds). Outside a test's transaction the savepoints are BEGIN
    # and COMMIT, and the events' transaction is one pipeline
    # (tests/usage/test_ingest_round_trips.py). SQLite: the dictionary takes 3, the rollups 3
    # (hourly, by model, daily by end user), no lock and no counters.
    with django_assert_max_num_queries(10 if connection.vendor == "postgresql" else 13):
        response = post_usage(
            ingest_client, [event(event_id=f"e{i}", end_user=f"u{i}") for i in range(100)]
        )
    assert response.status_code == 201
