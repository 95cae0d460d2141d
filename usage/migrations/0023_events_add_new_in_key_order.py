"""Ingest's one-round-trip function (`usage.newevents`) again, one change on 0022's: a batch of
several events is inserted in the events' key order, the id compared by code point (`ORDER BY
e.tenant_id, e.occurred_at, e.event_id COLLATE "C"`, `usage.storage.event_order`), the order
every other statement that inserts events uses. Inserted in the batch's order, two requests
storing the same events listed otherwise (a resend, the one by this function, the other by the
path that reads which events are new) could each insert an event the other then waits for: a
deadlock, which PostgreSQL ends by failing one (group commit retried it; a batch answered 503).
In one order the second waits for the first's first event, then finds them all stored. The
same signature (32 arguments): the processes of the previous release keep calling it.

Migration 0020's function of the release before (the events' 30 arrays, returning a count),
kept while that release could still run, is dropped: no code calls it.

Its body is `usage.newevents.function_body()` as of this migration
(tests/usage/test_ingest_one_trip.py checks that the code and the database agree). Reversing
restores 0022's body and 0020's function."""

from importlib import import_module

from django.db import migrations

first = import_module("usage.migrations.0019_events_add_new_function")  # 30 arguments
lighter = import_module("usage.migrations.0020_events_add_new_lighter")  # their last body
names = import_module("usage.migrations.0021_events_add_new_names")  # 32 arguments
previous = import_module("usage.migrations.0022_events_add_new_one_event")

# 0022's body with its one change: the rows of a batch of several events sorted before the
# insert (the events' alias list, the last thing before RETURNING, occurs there only).
UNSORTED = "cache_hit, prompt_hash) RETURNING"
assert " ".join(previous.BODY.split()).count(UNSORTED) == 1
BODY = " ".join(previous.BODY.split()).replace(
    UNSORTED,
    'cache_hit, prompt_hash) ORDER BY e.tenant_id, e.occurred_at, e.event_id COLLATE "C" RETURNING',
)


def _replace(schema_editor, body):
    schema_editor.execute(
        f"CREATE OR REPLACE FUNCTION usage_events_add_new({names.ARGUMENTS}) RETURNS int4[] "
        "LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan "
        f"AS $body${body}$body$"
    )


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    _replace(schema_editor, BODY)
    schema_editor.execute(f"DROP FUNCTION IF EXISTS usage_events_add_new({first.ARGUMENTS})")


def restore(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    lighter.replace_body(schema_editor, lighter.BODY)  # 0020's function, as 0022 left it
    _replace(schema_editor, previous.BODY)


class Migration(migrations.Migration):
    dependencies = [("usage", "0022_events_add_new_one_event")]

    operations = [migrations.RunPython(create, restore)]
