"""Events store their tags as a tag-set dictionary id: each tenant's distinct tag sets once in
`usage_tagset` (row-level security as every tenant table), `tag_set_id` (int, NULL: no tags)
on the event instead of the JSON.

PostgreSQL: the distinct (tenant, tags) of the events become tag sets (their key computed in
SQL exactly as `usage.tagsets.tag_set_key` does in Python), then the events table is rebuilt as
0012 built it (the table and its partitions renamed aside, the partitioned table created anew
with `tag_set_id` among the 4-byte columns, every month's partition, the rows copied in time
order with their set's id, the key and the prompt-hash index built after the copy, row-level
security, the old tables dropped): dropping the JSON column alone would leave its bytes in
every row. One transaction; backwards the same way with the JSON column back.

SQLite: the column added, filled from the tag sets made in Python, the JSON column removed.
"""

from __future__ import annotations

import importlib
import json
from datetime import UTC, datetime
from typing import Any

import django.db.models.deletion
from django.db import migrations, models
from django.db.migrations.operations.base import Operation

from costmon.core.rls import EnableRowLevelSecurity
from usage.partitions import TABLE, create_partition, month_start, next_month, partitions
from usage.tagsets import pairs_of, tag_set_key

_0012 = importlib.import_module("usage.migrations.0012_partitioned_events")

OLD = f"{TABLE}_before_tag_sets"
TAG_SETS = "usage_tagset"
# 0012's layout with `tags jsonb` (backwards) and this one, with `tag_set_id` instead.
JSON_COLUMNS: str = _0012.COLUMNS
SET_COLUMNS = JSON_COLUMNS.replace(
    "    session_id integer,\n", "    session_id integer,\n    tag_set_id integer,\n"
).replace("    tags jsonb,\n", "")
# The key of a set of tags in SQL: `usage.tagsets.tag_set_key` (names sorted by bytes, which
# for UTF-8 is Python's order of code points; lengths in characters on both sides).
KEY_SQL = (
    "encode(substring(sha256(convert_to((SELECT string_agg(length(t.k)::text || ':' || t.k "
    "|| length(t.v)::text || ':' || t.v, '' ORDER BY t.k COLLATE \"C\") "
    "FROM jsonb_each_text({tags}) AS t(k, v)), 'UTF8')) FROM 1 FOR 16), 'hex')::uuid"
)


def _names(columns: str) -> list[str]:
    return [line.split()[0] for line in columns.strip().splitlines()]


def _rebuild(schema_editor: Any, columns: str, select: dict[str, str], join: str) -> None:
    """The events table rebuilt with `columns`, each filled by its `select` expression (by
    default the old table's column `e.<name>`) from the old table `e` and the `join`."""
    run = schema_editor.execute
    names = _names(columns)
    values = ", ".join(select.get(n, f"e.{n}") for n in names)
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT set_config('costmon.rls_bypass', 'on', true)")
        run(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        old_parts = partitions(cursor)
        run("DROP INDEX IF EXISTS usageevent_prompt_hash_time")
        run(f"ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS usageevent_key")
        run(f"ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS usageevent_tenant_fk")
        run(f"ALTER TABLE {TABLE} RENAME TO {OLD}")
        for name, _ in old_parts:
            run(f"ALTER TABLE {name} RENAME TO {name}_old")
        run(f"ALTER SEQUENCE IF EXISTS {TABLE}_id_seq RENAME TO {OLD}_id_seq")
        run(f"CREATE TABLE {TABLE} ({columns}) PARTITION BY RANGE (occurred_at)")
        months = {month for _, month in old_parts}
        month = month_start(datetime.now(UTC))
        for _ in range(3):
            months.add(month)
            month = next_month(month)
        for month in sorted(months):
            create_partition(cursor, month)
        run(
            f"INSERT INTO {TABLE} ({', '.join(names)}) OVERRIDING SYSTEM VALUE "  # noqa: S608
            f"SELECT {values} FROM {OLD} e {join} ORDER BY e.occurred_at"
        )
        run(
            f"SELECT setval(pg_get_serial_sequence('{TABLE}', 'id'), "
            f"coalesce((SELECT max(id) FROM {OLD}), 0) + 1, false)"
        )
        run(f"DROP TABLE {OLD}")  # and its partitions
        run(
            f"ALTER TABLE {TABLE} ADD CONSTRAINT usageevent_key "
            "PRIMARY KEY (tenant_id, occurred_at, event_id)"
        )
        run(_0012.PROMPT_INDEX)
        run(_0012.FK)
        for statement in _0012.RLS:
            run(statement)
        run(f"ANALYZE {TABLE}, {TAG_SETS}")


def forwards_postgresql(schema_editor: Any) -> None:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT set_config('costmon.rls_bypass', 'on', true)")
        # An empty object is no tags (ingest stores NULL for it): no set.
        cursor.execute(
            f"INSERT INTO {TAG_SETS} (tenant_id, key, tags) "  # noqa: S608
            f"SELECT d.tenant_id, {KEY_SQL.format(tags='d.tags')}, d.tags FROM "
            f"(SELECT DISTINCT tenant_id, tags FROM {TABLE} "
            "WHERE tags IS NOT NULL AND tags <> '{}'::jsonb) d"
        )
    _rebuild(
        schema_editor,
        SET_COLUMNS,
        {"tag_set_id": "s.id"},
        f"LEFT JOIN {TAG_SETS} s ON s.tenant_id = e.tenant_id AND s.tags = e.tags",
    )


def backwards_postgresql(schema_editor: Any) -> None:
    _rebuild(
        schema_editor,
        JSON_COLUMNS,
        {"tags": "s.tags"},
        f"LEFT JOIN {TAG_SETS} s ON s.id = e.tag_set_id",
    )


def fill_sqlite(apps: Any, schema_editor: Any) -> None:
    """SQLite: a tag set for each distinct tags of each tenant, and its id on the events."""
    tag_set = apps.get_model("usage", "TagSet")
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            f"SELECT DISTINCT tenant_id, tags FROM {TABLE} WHERE tags IS NOT NULL"  # noqa: S608
        )
        found = cursor.fetchall()
        ids: dict[tuple[int, Any], int] = {}
        for tenant_id, text in found:
            tags = json.loads(text)
            if not tags:
                continue
            pairs = pairs_of(tags)
            if (tenant_id, pairs) not in ids:
                made = tag_set.objects.create(
                    tenant_id=tenant_id, key=tag_set_key(pairs), tags=dict(pairs)
                )
                ids[(tenant_id, pairs)] = made.pk
            cursor.execute(
                f"UPDATE {TABLE} SET tag_set_id = %s WHERE tenant_id = %s AND tags = %s",  # noqa: S608
                [ids[(tenant_id, pairs)], tenant_id, text],
            )


def unfill_sqlite(apps: Any, schema_editor: Any) -> None:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {TABLE} SET tags = (SELECT s.tags FROM {TAG_SETS} s "  # noqa: S608
            "WHERE s.id = tag_set_id) WHERE tag_set_id IS NOT NULL"
        )


class EventTagSets(Operation):
    """The model's `tags` becomes `tag_set`; on PostgreSQL the table rebuilt (`forwards_
    postgresql`), elsewhere the plain schema operations around a data step."""

    reversible = True

    def __init__(self) -> None:
        self.steps = [
            migrations.AddField(
                model_name="usageevent",
                name="tag_set",
                field=models.ForeignKey(
                    db_constraint=False,
                    db_index=False,
                    null=True,
                    on_delete=django.db.models.deletion.DO_NOTHING,
                    related_name="+",
                    to="usage.tagset",
                ),
            ),
            migrations.RunPython(fill_sqlite, unfill_sqlite),
            migrations.RemoveField(model_name="usageevent", name="tags"),
        ]

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (self.__class__.__qualname__, [], {})

    def state_forwards(self, app_label: str, state: Any) -> None:
        for step in self.steps:
            step.state_forwards(app_label, state)

    def _states(self, app_label: str, start: Any) -> list[Any]:
        states = [start]
        for step in self.steps:
            state = states[-1].clone()
            step.state_forwards(app_label, state)
            states.append(state)
        return states

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor == "postgresql":
            forwards_postgresql(schema_editor)
            return
        states = self._states(app_label, from_state)
        for i, step in enumerate(self.steps):
            step.database_forwards(app_label, schema_editor, states[i], states[i + 1])

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor == "postgresql":
            backwards_postgresql(schema_editor)
            return
        states = self._states(app_label, to_state)
        for i in reversed(range(len(self.steps))):
            self.steps[i].database_backwards(app_label, schema_editor, states[i + 1], states[i])

    def describe(self) -> str:
        return "Usage events hold a tag-set id instead of their tags' JSON"


class Migration(migrations.Migration):
    dependencies = [
        ("costmon", "0004_tenant_statement_markup_percent"),
        ("usage", "0012_partitioned_events"),
    ]

    operations = [
        migrations.CreateModel(
            name="TagSet",
            fields=[
                ("id", models.AutoField(primary_key=True, serialize=False)),
                ("key", models.UUIDField()),
                ("tags", models.JSONField()),
                (
                    "tenant",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        to="costmon.tenant",
                    ),
                ),
            ],
        ),
        migrations.AddConstraint(
            model_name="tagset",
            constraint=models.UniqueConstraint(fields=("tenant", "key"), name="tagset_unique"),
        ),
        EnableRowLevelSecurity("usage_tagset"),
        EventTagSets(),
    ]
