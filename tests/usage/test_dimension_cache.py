"""Dictionary ids are remembered per process once committed, so a batch of known names costs
no dictionary query; ids from a rolled-back transaction are never remembered."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from costmon.core.tenancy import tenant_context
from tests.helpers import requires_postgresql
from usage.dimensions import dimension_ids, forget_known_dimensions
from usage.models import Dimension

pytestmark = pytest.mark.django_db(transaction=True)
KIND = Dimension.Kind


def dictionary_queries(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries if "usage_dimension" in q["sql"]]


def ids(tenant, *names: str) -> dict[tuple[int, str], int]:
    with tenant_context(tenant), transaction.atomic():
        return dimension_ids(tenant=tenant, wanted=[(KIND.END_USER, n) for n in names])


def test_known_names_cost_no_query_after_the_commit(acme, outsider):
    first = ids(acme, "ann", "bob")
    with CaptureQueriesContext(connection) as queries:
        again = ids(acme, "bob", "ann")
    assert again == first
    assert dictionary_queries(queries) == []
    # A new name is looked up (and created) alone; the known one still comes from memory.
    with CaptureQueriesContext(connection) as queries:
        more = ids(acme, "ann", "cy")
    assert more[(KIND.END_USER, "ann")] == first[(KIND.END_USER, "ann")]
    assert dictionary_queries(queries)
    # Another tenant's names are its own rows, never acme's ids.
    theirs = ids(outsider, "ann")
    assert theirs[(KIND.END_USER, "ann")] != first[(KIND.END_USER, "ann")]
    with tenant_context(outsider):
        assert list(Dimension.objects.for_tenant(outsider).values_list("value", flat=True)) == [
            "ann"
        ]


def test_ids_created_in_a_rolled_back_transaction_are_not_remembered(acme):
    class Abort(Exception):
        pass

    with pytest.raises(Abort), tenant_context(acme), transaction.atomic():
        dimension_ids(tenant=acme, wanted=[(KIND.END_USER, "ghost")])
        raise Abort
    with CaptureQueriesContext(connection) as queries:
        created = ids(acme, "ghost")
    assert dictionary_queries(queries)  # looked up again: the first row never existed
    with tenant_context(acme):
        assert (
            Dimension.objects.for_tenant(acme).get(value="ghost").pk
            == created[(KIND.END_USER, "ghost")]
        )


@requires_postgresql  # SQLite adds names through the ORM
def test_new_names_are_added_and_read_in_one_statement(acme, outsider):
    before = ids(acme, "ann")
    with CaptureQueriesContext(connection) as queries:
        got = ids(acme, "ann", "bob", "cy")  # "ann" is remembered: only two are asked for
    assert len(dictionary_queries(queries)) == 1
    # Names another process stored (not remembered here) and a new one: one statement too.
    forget_known_dimensions()
    with CaptureQueriesContext(connection) as queries:
        mixed = ids(acme, "cy", "dee", "bob")
    assert len(dictionary_queries(queries)) == 1
    with tenant_context(acme):
        stored = {(d.kind, d.value): d.pk for d in Dimension.objects.all()}
    assert {**got, **mixed} == stored
    assert set(stored) == {(KIND.END_USER, n) for n in ("ann", "bob", "cy", "dee")}
    assert got[(KIND.END_USER, "ann")] == before[(KIND.END_USER, "ann")]
    theirs = ids(outsider, "bob")
    assert theirs[(KIND.END_USER, "bob")] not in stored.values()
