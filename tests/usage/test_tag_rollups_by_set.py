"""The tag rollups a batch adds to: on PostgreSQL the statement that stores the events sums them
by model and tag set first and then adds each group once per tag of its set
(`usage.storage.with_rollups`); the sums per tag must be those of the events, whichever sets
carry the tag, on the one-round-trip path, the path that reads which events are new, and the
bulk loader."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from tests.helpers import event, requires_postgresql
from usage import newevents
from usage.ingest import parse_batch
from usage.models import TagHourlyRollup
from usage.services import usage_record_batch
from usage.storage import TAG_ORDER, events_copy, with_rollups

pytestmark = [pytest.mark.usefixtures("prices", "unscoped")]
HAIKU = 1_350_000  # nano-USD: 450 input tokens at $1/M, 180 output at $5/M
INPUT_ONLY = 1_000_000  # 1,000 input tokens at $1/M


def tag_sums(tenant: Any) -> dict[tuple[str, str, str], tuple[int, int, int, int]]:
    """(calls, input tokens, cost, latency count) by (model, tag name, tag value)."""
    return {
        (r.model.value, r.tag_name, r.tag_value): (
            r.calls,
            r.input_tokens,
            r.cost_nanos,
            r.latency_count,
        )
        for r in TagHourlyRollup.objects.for_tenant(tenant).select_related("model")
    }


def batch(prefix: str) -> list[Any]:
    both = {"team": "search", "env": "prod"}
    return parse_batch(
        [
            event(event_id=f"{prefix}1", tags=both, latency_ms=120),
            event(event_id=f"{prefix}2", tags=dict(both)),  # the same set in another dict
            # A set of its own holding one of the first set's tags.
            event(
                event_id=f"{prefix}3", tags={"team": "search"}, input_tokens=1000, output_tokens=0
            ),
            event(event_id=f"{prefix}4", tags={"env": "dev"}, model="claude-haiku-4-5-20251001"),
            event(event_id=f"{prefix}5"),  # no tags: in no tag rollup
        ]
    )


EXPECTED = {
    ("claude-haiku-4-5", "team", "search"): (3, 1900, 2 * HAIKU + INPUT_ONLY, 1),
    ("claude-haiku-4-5", "env", "prod"): (2, 900, 2 * HAIKU, 1),
    ("claude-haiku-4-5-20251001", "env", "dev"): (1, 450, HAIKU, 0),
}


@pytest.mark.django_db(transaction=True)  # ingest's pipeline needs autocommit around it
def test_each_tag_sums_the_events_of_every_set_that_carries_it(acme, outsider):
    usage_record_batch(tenant=acme, events=batch("a"))
    usage_record_batch(
        tenant=outsider, events=parse_batch([event(event_id="o1", tags={"team": "search"})])
    )
    assert tag_sums(acme) == EXPECTED
    assert tag_sums(outsider) == {("claude-haiku-4-5", "team", "search"): (1, 450, HAIKU, 0)}
    # A second batch in the same hour adds to the same rows; a resend of it adds nothing
    # (it goes by the path that reads which events are new).
    usage_record_batch(tenant=acme, events=batch("b"))
    usage_record_batch(tenant=acme, events=batch("b"))
    assert tag_sums(acme) == {key: tuple(2 * v for v in values) for key, values in EXPECTED.items()}
    assert tag_sums(outsider) == {("claude-haiku-4-5", "team", "search"): (1, 450, HAIKU, 0)}


@requires_postgresql
@pytest.mark.django_db
def test_the_bulk_loader_sums_tags_by_set_the_same_way(acme, outsider):
    from usage.catalog import catalog_for
    from usage.dimensions import dimension_ids, dimension_keys
    from usage.rows import event_row, price_event

    events = batch("a")
    catalog = catalog_for(acme.pk)
    dims = dimension_ids(tenant=acme, wanted=dimension_keys(events))
    rows = [
        event_row(
            tenant_id=acme.pk, event=e, dims=dims, priced=price_event(catalog, e), api_key_id=0
        )
        for e in events
    ]
    assert events_copy(rows) == (5, 4 * HAIKU + INPUT_ONLY, 0)
    assert tag_sums(acme) == EXPECTED
    assert tag_sums(outsider) == {}


@requires_postgresql
@pytest.mark.django_db
def test_tag_rows_are_locked_in_the_order_python_sorts_them_whatever_the_collation():
    # Ingest's other path (usage.rollup_writes) sorts the tag rollups' keys in Python, by code
    # point; the one-trip function and the bulk loader sort in SQL. With the database's own
    # collation (en_US: "a" < "B"), the two could lock the same rows in different orders.
    # The names and values as an en_US database would hold them: ICU's collation (PostgreSQL
    # builds ship it), else the system's en_US; one of the two is on any usual server.
    pairs = [("team", "a"), ("team", "B"), ("Team", "z"), ("_env", "é"), ("team", "Z9")]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT collname FROM pg_collation WHERE collname IN "
            "('en-US-x-icu', 'en_US.utf8', 'en_US.UTF-8') ORDER BY collname DESC LIMIT 1"
        )
        found = cursor.fetchone()
        assert found is not None, "no en_US collation in this PostgreSQL"
        en_us = f'COLLATE "{found[0]}"'
        rows = (
            "SELECT t.* FROM (SELECT 1, 2, 3, 4, 5, n {0}, v {0} FROM unnest(%s::text[], "
            "%s::text[]) AS x(n, v)) AS t(a, b, c, d, e, tag_name, tag_value) ORDER BY {1}"
        )
        params = [[n for n, _ in pairs], [v for _, v in pairs]]
        cursor.execute(rows.format(en_us, "1, 2, 3, 4, 5, 6, 7"), params)
        assert [row[5:] for row in cursor.fetchall()] != sorted(pairs)  # the collation's order
        cursor.execute(rows.format(en_us, TAG_ORDER), params)
        assert [row[5:] for row in cursor.fetchall()] == sorted(pairs)
    assert f"ORDER BY {TAG_ORDER}" in with_rollups("INSERT", tags=True)
    body = newevents.function_body()
    assert body.count(f"ORDER BY {TAG_ORDER}") == 2  # a batch's statement and one event's
