"""Columns packed as binary arrays (usage.pgarrays) arrive in PostgreSQL as the values sent."""

from __future__ import annotations

import pytest
from django.db import connection

from costmon.core.tenancy import raw_cursor
from tests.helpers import requires_postgresql
from usage.pgarrays import packed_array, register

pytestmark = [pytest.mark.django_db, requires_postgresql]

CASES = [
    ("int2", [0, 1, -1, 32767, -32768]),
    ("int4", [7, None, 2**31 - 1, -(2**31), 0, None]),
    ("int8", [2**63 - 1, -(2**63), 5, None]),
    ("bool", [True, False, None, True]),
    ("int4", [3]),
    ("text", ["ev-1", None, "", "naïve €", "日本語", "x" * 300]),
    ("text", ["only"]),
]


@pytest.mark.parametrize(("type_name", "values"), CASES)
def test_a_packed_column_reads_back_as_sent(type_name, values):
    with raw_cursor(connection) as cursor:
        register(cursor)
        cursor.execute(
            f"SELECT %b::{type_name}[], array_length(%b::{type_name}[], 1)",
            [packed_array(values, type_name)] * 2,
            binary=True,
        )
        assert cursor.fetchone() == (values, len(values))


def test_a_column_of_nulls_is_sent_as_null():
    assert packed_array([None, None], "int8") is None
