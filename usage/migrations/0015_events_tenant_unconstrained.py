"""The events table's tenant is no foreign key constraint any more on PostgreSQL: checking it
ran a query per inserted event at commit (see `usage.models.UsageEvent`). SQLite keeps its
table as it is (Django would rebuild the whole table to drop it)."""

from typing import Any

import django.db.models.deletion
from django.db import migrations, models

TABLE = "usage_usageevent"
FK = (  # as migration 0012 added it
    f"ALTER TABLE {TABLE} ADD CONSTRAINT usageevent_tenant_fk FOREIGN KEY (tenant_id) "
    "REFERENCES costmon_tenant(id) DEFERRABLE INITIALLY DEFERRED"
)


def forwards(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS usageevent_tenant_fk")


def backwards(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FK)


class Migration(migrations.Migration):
    dependencies = [
        ("costmon", "0004_tenant_statement_markup_percent"),
        ("usage", "0014_event_stamps"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="usageevent",
                    name="tenant",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        to="costmon.tenant",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(forwards, backwards)],
        ),
    ]
