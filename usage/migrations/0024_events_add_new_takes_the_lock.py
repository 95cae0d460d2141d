"""Ingest's one-round-trip function (`usage.newevents`) again, one change on 0023's: it takes the
tenant's ingest lock itself, first (`pg_advisory_xact_lock_shared(7401, tenant id mod 2e9)`, as
`usage.transactions` names it), so a small group's transaction has one statement less. The same
signature (32 arguments). Code of this release no longer takes the lock before calling the
function: migrate before starting it, as with every release. The previous release's processes
take the lock twice meanwhile (a shared lock, the same transaction: harmless).

Its body is `usage.newevents.function_body()` as of this migration
(tests/usage/test_ingest_one_trip.py checks that the code and the database agree). Reversing
restores 0023's body."""

from importlib import import_module

from django.db import migrations

previous = import_module("usage.migrations.0023_events_add_new_in_key_order")

START = "DECLARE stored integer; ids int4[]; BEGIN "
assert previous.BODY.count(START) == 1
BODY = previous.BODY.replace(
    START, f"{START}PERFORM pg_advisory_xact_lock_shared(7401, mod($1[1], 2000000000)::int4); "
)


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        previous._replace(schema_editor, BODY)


def restore(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        previous._replace(schema_editor, previous.BODY)


class Migration(migrations.Migration):
    dependencies = [("usage", "0023_events_add_new_in_key_order")]

    operations = [migrations.RunPython(create, restore)]
