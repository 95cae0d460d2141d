"""Three token counts of an event that are zero for most calls (cached input, cache writes,
reasoning) may be NULL, which ingest and the bulk loader now store for zero and the model reads
back as 0 (`usage.models.ZeroAsNullIntegerField`): a NULL costs a row nothing, 8 to 12 bytes
in most rows (the benchmark's medium set: 136 bytes of table per event instead of 146).

Nothing is rewritten: dropping NOT NULL changes the catalog only (PostgreSQL: on the
partitioned table and so on every partition, instantly; SQLite: Django rebuilds its table),
and the rows already stored keep their zeros, which read the same. Their space comes back as
retention drops their months. Backwards, the NULLs become zeros again before NOT NULL returns.
"""

from typing import Any

from django.db import migrations

import usage.models.events

TABLE = "usage_usageevent"
COUNTS = ("cached_input_tokens", "cache_write_tokens", "reasoning_tokens")


def nulls_to_zeros(apps: Any, schema_editor: Any) -> None:
    sets = ", ".join(f"{c} = coalesce({c}, 0)" for c in COUNTS)
    where = " OR ".join(f"{c} IS NULL" for c in COUNTS)
    with schema_editor.connection.cursor() as cursor:
        if schema_editor.connection.vendor == "postgresql":
            # Every tenant's rows (row-level security would show none without a tenant).
            cursor.execute("SELECT set_config('costmon.rls_bypass', 'on', true)")
        cursor.execute(f"UPDATE {TABLE} SET {sets} WHERE {where}")  # noqa: S608


class Migration(migrations.Migration):
    dependencies = [("usage", "0016_event_rewrites")]

    operations = [
        *(
            migrations.AlterField(
                model_name="usageevent",
                name=name,
                field=usage.models.events.ZeroAsNullIntegerField(),
            )
            for name in COUNTS
        ),
        # Last, so that backwards it runs first: zeros back before NOT NULL is.
        migrations.RunPython(migrations.RunPython.noop, nulls_to_zeros),
    ]

