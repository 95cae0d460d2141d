"""Tags as a tag-set dictionary (`usage.tagsets`): each tenant's distinct tag sets stored once,
events holding the set's id; shared between events, separate per tenant, created once under
concurrent ingest, fail closed; migration 0013 on a copy with data."""

from __future__ import annotations

import importlib
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.db.migrations.executor import MigrationExecutor
from rest_framework.test import APIClient

from costmon.core.tenancy import tenant_context, unscoped
from tests.conftest import restore_test_partitions
from tests.helpers import event, post_usage
from usage.bulk import usage_bulk_load
from usage.dimensions import dimension_ids
from usage.ingest import parse_batch
from usage.models import Dimension, TagHourlyRollup, TagSet, UsageEvent
from usage.tagsets import forget_known_tag_sets, pairs_of, tag_set_ids, tag_set_key

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices")]
PG = pytest.mark.skipif("connection.vendor != 'postgresql'")
KEY_SQL = importlib.import_module("usage.migrations.0013_event_tag_sets").KEY_SQL
Kind = Dimension.Kind


def sets_of(tenant: Any) -> dict[int, dict[str, str]]:
    with unscoped():
        return dict(TagSet.objects.for_tenant(tenant).values_list("pk", "tags"))


def canon(sets: Any) -> list[tuple[tuple[str, str], ...]]:
    """Tag sets compared whatever their keys' order."""
    return sorted(tuple(sorted(tags.items())) for tags in sets)


def tags_by_event(tenant: Any) -> dict[str, tuple[int | None, dict[str, str] | None]]:
    with unscoped():
        events = UsageEvent.objects.for_tenant(tenant).select_related("tag_set")
        return {e.event_id: (e.tag_set_id, e.tags) for e in events}


def test_events_with_the_same_tags_share_one_set(ingest_client, read_client, acme, outsider):
    batch = [
        event(event_id="a", tags={"team": "search", "env": "prod"}),
        event(event_id="b", tags={"env": "prod", "team": "search"}),  # same set, other order
        event(event_id="c", tags={"team": "ads"}),
        event(event_id="d"),
    ]
    assert post_usage(ingest_client, batch).status_code == 201
    assert post_usage(ingest_client, [event(event_id="e", tags={"team": "ads"})]).status_code == 201
    found = tags_by_event(acme)
    assert found["a"][0] == found["b"][0] != found["c"][0] == found["e"][0]
    assert found["d"] == (None, None)
    assert found["b"][1] == {"env": "prod", "team": "search"}
    assert sorted(map(sorted, sets_of(acme).values())) == [["env", "team"], ["team"]]
    assert sets_of(outsider) == {}
    # The event list shows each event's tags; a tag filter finds events through their set.
    listed = read_client.get("/api/v1/usage/?tag=team:search").json()["results"]
    assert sorted(e["event_id"] for e in listed) == ["a", "b"]
    assert listed[0]["tags"] == {"env": "prod", "team": "search"}
    untagged = read_client.get("/api/v1/usage/?end_user=user-1").json()["results"]
    assert {e["event_id"]: e["tags"] for e in untagged}["d"] == {}


def test_two_tenants_with_the_same_tags_get_separate_sets(
    ingest_client, outsider_client, read_client, acme, outsider
):
    tags = {"customer": "acme-corp"}
    assert post_usage(ingest_client, event(event_id="a", tags=tags)).status_code == 201
    assert post_usage(outsider_client, event(event_id="o", tags=tags)).status_code == 201
    mine, theirs = sets_of(acme), sets_of(outsider)
    assert list(mine.values()) == list(theirs.values()) == [tags]
    assert set(mine).isdisjoint(theirs)
    assert tags_by_event(acme)["a"][0] in mine
    assert tags_by_event(outsider)["o"][0] in theirs
    # Each tenant sees its own set and event only, whatever it asks for.
    with tenant_context(acme):
        assert list(TagSet.objects.values_list("pk", flat=True)) == list(mine)
        with connection.cursor() as cursor:
            cursor.execute("SELECT id FROM usage_tagset")
            visible = {pk for (pk,) in cursor.fetchall()}
    if connection.vendor == "postgresql":  # row-level security
        assert visible == set(mine)
    listed = read_client.get("/api/v1/usage/?tag=customer:acme-corp").json()["results"]
    assert [e["event_id"] for e in listed] == ["a"]


def test_outside_a_tenant_no_set_is_visible(ingest_client, acme):
    assert post_usage(ingest_client, event(tags={"team": "x"})).status_code == 201
    assert TagSet.objects.count() == 0
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM usage_tagset")
            assert cursor.fetchone()[0] == 0


def test_a_set_is_found_again_after_the_process_forgets_it(acme, outsider):
    with tenant_context(acme), transaction.atomic():
        first = tag_set_ids(tenant_id=acme.pk, sets=[pairs_of({"b": "2", "a": "1"})])
    forget_known_tag_sets()
    with tenant_context(acme), transaction.atomic():
        again = tag_set_ids(tenant_id=acme.pk, sets=[pairs_of({"a": "1", "b": "2"})])
    assert first == again
    with tenant_context(outsider), transaction.atomic():
        theirs = tag_set_ids(tenant_id=outsider.pk, sets=[pairs_of({"a": "1", "b": "2"})])
    assert set(theirs.values()).isdisjoint(first.values())


def test_a_bulk_load_stores_sets_once_and_fills_the_tag_rollups(acme, outsider):
    batch = [
        event(event_id=f"b{i}", tags={"team": ("x", "y")[i % 2]} if i % 3 else None)
        for i in range(30)
    ]
    usage_bulk_load(tenant=acme, events=parse_batch(batch))
    assert canon(sets_of(acme).values()) == canon([{"team": "x"}, {"team": "y"}])
    found = tags_by_event(acme)
    assert sum(1 for set_id, _ in found.values() if set_id is not None) == 20
    with unscoped():
        calls = dict(TagHourlyRollup.objects.filter(tenant=acme).values_list("tag_value", "calls"))
    assert calls == {"x": 10, "y": 10}
    assert sets_of(outsider) == {}


@PG
def test_the_key_in_sql_is_the_key_in_python():
    samples = [
        {"team": "search"},
        {"b": "1", "a": "2", "ab": "", "": "x"},
        {"1:a": "2:b", "1": ":a2:b"},
        {"é": "ü", "e": "🙂", "Z": "z", "日本": "語"},
    ]
    with connection.cursor() as cursor:
        for tags in samples:
            cursor.execute(f"SELECT {KEY_SQL.format(tags='%s::jsonb')}", [json.dumps(tags)])
            assert cursor.fetchone()[0] == tag_set_key(pairs_of(tags)), tags
    # Lengths make the text unambiguous: these two would read alike without them.
    assert tag_set_key(pairs_of({"a": "b1:c"})) != tag_set_key(pairs_of({"a": "b", "c": ""}))


@PG
@pytest.mark.django_db(transaction=True)
def test_concurrent_ingest_of_new_sets_stores_each_once(acme, outsider, ingest_client):
    """Four clients send batches that name the same new sets in different orders at once: no
    deadlock, no set twice, every event with its own tags."""
    names = [{"team": f"t{i}", "env": ("prod", "dev")[i % 2]} for i in range(12)]
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def send(n: int) -> None:
        try:
            order = names[n:] + names[:n] if n % 2 else list(reversed(names))
            batch = [event(event_id=f"c{n}-{i}", tags=t) for i, t in enumerate(order)]
            client = APIClient()
            client.credentials(**ingest_client._credentials)
            barrier.wait()
            statuses.append(post_usage(client, batch).status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [201] * 4
    stored = sets_of(acme)
    assert len(stored) == 12
    assert canon(stored.values()) == canon(names)
    found = tags_by_event(acme)
    assert len(found) == 4 * 12
    for set_id, tags in found.values():
        assert stored[set_id] == tags
    assert sets_of(outsider) == {}


# --- migration 0013 ----------------------------------------------------------------------------

BEFORE = [("usage", "0012_partitioned_events")]


def _old_rows(tenant: Any, prefix: str, count: int) -> list[dict[str, Any]]:
    dims = dimension_ids(
        tenant=tenant,
        wanted=[
            (Kind.PROVIDER, "openai"),
            (Kind.MODEL, "gpt-4o"),
            (Kind.OPERATION, "chat"),
            (Kind.END_USER, "u"),
        ],
    )
    start = datetime(2026, 9, 29, 22, tzinfo=UTC)
    tag_choices = [
        {"team": "a", "env": "prod"},
        {"env": "prod", "team": "a"},  # the same set, other order
        {"team": "b"},
        {},  # an empty object: no set
        None,
    ]
    return [
        {
            "tenant_id": tenant.pk,
            "event_id": f"{prefix}{i}",
            "occurred_at": start + timedelta(hours=13 * i),
            "provider_id": dims[(Kind.PROVIDER, "openai")],
            "model_id": dims[(Kind.MODEL, "gpt-4o")],
            "operation_id": dims[(Kind.OPERATION, "chat")],
            "end_user_id": dims[(Kind.END_USER, "u")],
            "tags": tag_choices[i % len(tag_choices)],
            "input_tokens": i,
            "cost_nanos": 1_000_001 * i,
        }
        for i in range(count)
    ]


@pytest.mark.django_db(transaction=True)
def test_migration_0013_moves_tags_into_sets_in_place(acme, outsider):
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate(BEFORE)
    try:
        old = executor.loader.project_state(BEFORE).apps.get_model("usage", "UsageEvent")
        with unscoped():
            acme_rows, outsider_rows = _old_rows(acme, "e", 40), _old_rows(outsider, "o", 10)
        with unscoped(), transaction.atomic():
            old.objects.bulk_create([old(**r) for r in acme_rows + outsider_rows])
    finally:
        MigrationExecutor(connection).migrate(latest)
        restore_test_partitions()
    for tenant, rows in ((acme, acme_rows), (outsider, outsider_rows)):
        found = tags_by_event(tenant)
        assert {e: tags for e, (_, tags) in found.items()} == {
            r["event_id"]: r["tags"] or None for r in rows
        }
        stored = sets_of(tenant)
        assert canon(stored.values()) == canon([{"team": "b"}, {"env": "prod", "team": "a"}])
        with unscoped():
            for tag_set in TagSet.objects.for_tenant(tenant):
                assert tag_set.key == tag_set_key(pairs_of(tag_set.tags))
    assert set(sets_of(acme)).isdisjoint(sets_of(outsider))
    # Ingest after the move finds the sets the migration made.
    with tenant_context(acme), transaction.atomic():
        ids = tag_set_ids(tenant_id=acme.pk, sets=[pairs_of({"team": "b"})])
    assert next(iter(ids.values())) in sets_of(acme)
    assert len(sets_of(acme)) == 2


@PG
def test_the_events_table_is_laid_out_narrow(ingest_client, acme):
    """0013's layout: no JSON column, 4-byte tenant, API key and tag-set ids, and the key's
    index packed full on every partition (a partition created on demand too)."""
    assert post_usage(ingest_client, event(occurred_at="2023-02-03T04:05:06Z")).status_code == 201
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attname, atttypid::regtype::text FROM pg_attribute "
            "WHERE attrelid = 'usage_usageevent_p202302'::regclass AND attnum > 0 "
            "AND NOT attisdropped"
        )
        types = dict(cursor.fetchall())
        cursor.execute(
            "SELECT c.reloptions FROM pg_partition_tree('usageevent_key') t "
            "JOIN pg_class c ON c.oid = t.relid"
        )
        options = {tuple(o or ()) for (o,) in cursor.fetchall()}
    assert "tags" not in types
    assert {types[c] for c in ("tenant_id", "api_key_id", "tag_set_id")} == {"integer"}
    assert options == {("fillfactor=100",)}
    assert tags_by_event(acme) == {"evt-1": (None, None)}
