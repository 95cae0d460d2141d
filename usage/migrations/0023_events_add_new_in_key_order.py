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

BODY = """
DECLARE stored integer; ids int4[]; BEGIN IF cardinality($31) > 0 THEN INSERT INTO usage_dimension
(tenant_id, kind, value) SELECT $1[1], w.kind, w.value FROM unnest($31, $32) AS w(kind, value) ORDER
BY w.kind, w.value ON CONFLICT (tenant_id, kind, value) DO NOTHING; SELECT array_agg((SELECT d.id
FROM usage_dimension d WHERE d.tenant_id = $1[1] AND d.kind = w.kind AND d.value = w.value) ORDER BY
w.n) INTO ids FROM unnest($31, $32) WITH ORDINALITY AS w(kind, value, n); IF array_position(ids,
NULL) IS NOT NULL THEN RAISE EXCEPTION 'usage: a new name of the batch was not found'; END IF; END
IF; IF cardinality($1) = 1 THEN WITH fresh AS (INSERT INTO usage_usageevent (tenant_id, event_id,
occurred_at, provider_id, model_id, operation_id, end_user_id, session_id, api_key_id, tag_set_id,
input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens,
cache_write_1h_tokens, input_audio_tokens, output_audio_tokens, input_image_tokens,
output_image_tokens, web_search_calls, output_images, service_tier, cost_nanos, cost_source,
price_id, latency_ms, is_error, cache_hit, prompt_hash) VALUES ($1[1], $2[1], $3[1],
coalesce(ids[-$4[1]], $4[1]), coalesce(ids[-$5[1]], $5[1]), coalesce(ids[-$6[1]], $6[1]),
coalesce(ids[-$7[1]], $7[1]), coalesce(ids[-$8[1]], $8[1]), $9[1], $10[1], $11[1], $12[1], $13[1],
$14[1], $15[1], $16[1], $17[1], $18[1], $19[1], $20[1], $21[1], $22[1], $23[1], $24[1], $25[1],
$26[1], $27[1], $28[1], $29[1], $30[1]) RETURNING tenant_id, provider_id, model_id, operation_id,
end_user_id, api_key_id, occurred_at, tag_set_id, is_error, cache_hit, cost_source, input_tokens,
output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens, cost_nanos, latency_ms,
date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour), by_tag AS (INSERT
INTO usage_taghourlyrollup AS r (tenant_id, hour, provider_id, model_id, operation_id, tag_name,
tag_value, calls, errors, cache_hits, unpriced_calls, input_tokens, output_tokens,
cached_input_tokens, cache_write_tokens, reasoning_tokens, cost_nanos, latency_ms_sum,
latency_count) SELECT f.tenant_id, f.hour, f.provider_id, f.model_id, f.operation_id, t.tag_name,
t.tag_value, 1, is_error::int, cache_hit::int, (cost_source = 2)::int, input_tokens, output_tokens,
coalesce(cached_input_tokens, 0), coalesce(cache_write_tokens, 0), coalesce(reasoning_tokens, 0),
cost_nanos, coalesce(latency_ms, 0), (latency_ms IS NOT NULL)::int FROM fresh f JOIN usage_tagset s
ON s.id = f.tag_set_id, jsonb_each_text(s.tags) AS t(tag_name, tag_value) ORDER BY 1, 2, 3, 4, 5,
t.tag_name COLLATE "C", t.tag_value COLLATE "C" ON CONFLICT (tenant_id, hour, provider_id, model_id,
operation_id, tag_name, tag_value) DO UPDATE SET calls=r.calls+excluded.calls,
errors=r.errors+excluded.errors, cache_hits=r.cache_hits+excluded.cache_hits,
unpriced_calls=r.unpriced_calls+excluded.unpriced_calls,
input_tokens=r.input_tokens+excluded.input_tokens,
output_tokens=r.output_tokens+excluded.output_tokens,
cached_input_tokens=r.cached_input_tokens+excluded.cached_input_tokens,
cache_write_tokens=r.cache_write_tokens+excluded.cache_write_tokens,
reasoning_tokens=r.reasoning_tokens+excluded.reasoning_tokens,
cost_nanos=r.cost_nanos+excluded.cost_nanos,
latency_ms_sum=r.latency_ms_sum+excluded.latency_ms_sum,
latency_count=r.latency_count+excluded.latency_count), by_user_day AS (INSERT INTO
usage_enduserdailyrollup AS r (tenant_id, day, end_user_id, calls, errors, cache_hits,
unpriced_calls, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
reasoning_tokens, cost_nanos, latency_ms_sum, latency_count) SELECT tenant_id, date_trunc('day',
occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', end_user_id, 1, is_error::int, cache_hit::int,
(cost_source = 2)::int, input_tokens, output_tokens, coalesce(cached_input_tokens, 0),
coalesce(cache_write_tokens, 0), coalesce(reasoning_tokens, 0), cost_nanos, coalesce(latency_ms, 0),
(latency_ms IS NOT NULL)::int FROM fresh ON CONFLICT (tenant_id, day, end_user_id) DO UPDATE SET
calls=r.calls+excluded.calls, errors=r.errors+excluded.errors,
cache_hits=r.cache_hits+excluded.cache_hits,
unpriced_calls=r.unpriced_calls+excluded.unpriced_calls,
input_tokens=r.input_tokens+excluded.input_tokens,
output_tokens=r.output_tokens+excluded.output_tokens,
cached_input_tokens=r.cached_input_tokens+excluded.cached_input_tokens,
cache_write_tokens=r.cache_write_tokens+excluded.cache_write_tokens,
reasoning_tokens=r.reasoning_tokens+excluded.reasoning_tokens,
cost_nanos=r.cost_nanos+excluded.cost_nanos,
latency_ms_sum=r.latency_ms_sum+excluded.latency_ms_sum,
latency_count=r.latency_count+excluded.latency_count), by_model AS (INSERT INTO
usage_modelhourlyrollup AS r (tenant_id, hour, provider_id, model_id, operation_id, calls, errors,
cache_hits, unpriced_calls, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
reasoning_tokens, cost_nanos, latency_ms_sum, latency_count) SELECT tenant_id, hour, provider_id,
model_id, operation_id, 1, is_error::int, cache_hit::int, (cost_source = 2)::int, input_tokens,
output_tokens, coalesce(cached_input_tokens, 0), coalesce(cache_write_tokens, 0),
coalesce(reasoning_tokens, 0), cost_nanos, coalesce(latency_ms, 0), (latency_ms IS NOT NULL)::int
FROM fresh ON CONFLICT (tenant_id, hour, provider_id, model_id, operation_id) DO UPDATE SET
calls=r.calls+excluded.calls, errors=r.errors+excluded.errors,
cache_hits=r.cache_hits+excluded.cache_hits,
unpriced_calls=r.unpriced_calls+excluded.unpriced_calls,
input_tokens=r.input_tokens+excluded.input_tokens,
output_tokens=r.output_tokens+excluded.output_tokens,
cached_input_tokens=r.cached_input_tokens+excluded.cached_input_tokens,
cache_write_tokens=r.cache_write_tokens+excluded.cache_write_tokens,
reasoning_tokens=r.reasoning_tokens+excluded.reasoning_tokens,
cost_nanos=r.cost_nanos+excluded.cost_nanos,
latency_ms_sum=r.latency_ms_sum+excluded.latency_ms_sum,
latency_count=r.latency_count+excluded.latency_count), hourly AS (INSERT INTO usage_hourlyrollup AS
r (tenant_id, hour, provider_id, model_id, operation_id, end_user_id, api_key_id, calls, errors,
cache_hits, unpriced_calls, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
reasoning_tokens, cost_nanos, latency_ms_sum, latency_count) SELECT tenant_id, hour, provider_id,
model_id, operation_id, end_user_id, api_key_id, 1, is_error::int, cache_hit::int, (cost_source =
2)::int, input_tokens, output_tokens, coalesce(cached_input_tokens, 0), coalesce(cache_write_tokens,
0), coalesce(reasoning_tokens, 0), cost_nanos, coalesce(latency_ms, 0), (latency_ms IS NOT
NULL)::int FROM fresh ON CONFLICT (tenant_id, hour, provider_id, model_id, operation_id,
end_user_id, api_key_id) DO UPDATE SET calls=r.calls+excluded.calls,
errors=r.errors+excluded.errors, cache_hits=r.cache_hits+excluded.cache_hits,
unpriced_calls=r.unpriced_calls+excluded.unpriced_calls,
input_tokens=r.input_tokens+excluded.input_tokens,
output_tokens=r.output_tokens+excluded.output_tokens,
cached_input_tokens=r.cached_input_tokens+excluded.cached_input_tokens,
cache_write_tokens=r.cache_write_tokens+excluded.cache_write_tokens,
reasoning_tokens=r.reasoning_tokens+excluded.reasoning_tokens,
cost_nanos=r.cost_nanos+excluded.cost_nanos,
latency_ms_sum=r.latency_ms_sum+excluded.latency_ms_sum,
latency_count=r.latency_count+excluded.latency_count) SELECT count(*) INTO stored FROM fresh; ELSE
WITH fresh AS (INSERT INTO usage_usageevent (tenant_id, event_id, occurred_at, provider_id,
model_id, operation_id, end_user_id, session_id, api_key_id, tag_set_id, input_tokens,
output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens, cache_write_1h_tokens,
input_audio_tokens, output_audio_tokens, input_image_tokens, output_image_tokens, web_search_calls,
output_images, service_tier, cost_nanos, cost_source, price_id, latency_ms, is_error, cache_hit,
prompt_hash) SELECT e.tenant_id, e.event_id, e.occurred_at, coalesce(ids[-e.provider_id],
e.provider_id), coalesce(ids[-e.model_id], e.model_id), coalesce(ids[-e.operation_id],
e.operation_id), coalesce(ids[-e.end_user_id], e.end_user_id), coalesce(ids[-e.session_id],
e.session_id), e.api_key_id, e.tag_set_id, e.input_tokens, e.output_tokens, e.cached_input_tokens,
e.cache_write_tokens, e.reasoning_tokens, e.cache_write_1h_tokens, e.input_audio_tokens,
e.output_audio_tokens, e.input_image_tokens, e.output_image_tokens, e.web_search_calls,
e.output_images, e.service_tier, e.cost_nanos, e.cost_source, e.price_id, e.latency_ms, e.is_error,
e.cache_hit, e.prompt_hash FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
$15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30) AS e(tenant_id,
event_id, occurred_at, provider_id, model_id, operation_id, end_user_id, session_id, api_key_id,
tag_set_id, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens,
cache_write_1h_tokens, input_audio_tokens, output_audio_tokens, input_image_tokens,
output_image_tokens, web_search_calls, output_images, service_tier, cost_nanos, cost_source,
price_id, latency_ms, is_error, cache_hit, prompt_hash) ORDER BY e.tenant_id, e.occurred_at,
e.event_id COLLATE "C" RETURNING tenant_id, provider_id, model_id, operation_id, end_user_id,
api_key_id, occurred_at, tag_set_id, is_error, cache_hit, cost_source, input_tokens, output_tokens,
cached_input_tokens, cache_write_tokens, reasoning_tokens, cost_nanos, latency_ms,
date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour), by_tag AS (INSERT
INTO usage_taghourlyrollup AS r (tenant_id, hour, provider_id, model_id, operation_id, tag_name,
tag_value, calls, errors, cache_hits, unpriced_calls, input_tokens, output_tokens,
cached_input_tokens, cache_write_tokens, reasoning_tokens, cost_nanos, latency_ms_sum,
latency_count) SELECT g.tenant_id, g.hour, g.provider_id, g.model_id, g.operation_id, t.tag_name,
t.tag_value, sum(g.calls), sum(g.errors), sum(g.cache_hits), sum(g.unpriced_calls),
sum(g.input_tokens), sum(g.output_tokens), sum(g.cached_input_tokens), sum(g.cache_write_tokens),
sum(g.reasoning_tokens), sum(g.cost_nanos), sum(g.latency_ms_sum), sum(g.latency_count) FROM (SELECT
tenant_id, hour, provider_id, model_id, operation_id, tag_set_id, count(*) AS calls, count(*) FILTER
(WHERE is_error) AS errors, count(*) FILTER (WHERE cache_hit) AS cache_hits, count(*) FILTER (WHERE
cost_source = 2) AS unpriced_calls, sum(input_tokens) AS input_tokens, sum(output_tokens) AS
output_tokens, coalesce(sum(cached_input_tokens), 0) AS cached_input_tokens,
coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens, coalesce(sum(reasoning_tokens), 0) AS
reasoning_tokens, sum(cost_nanos) AS cost_nanos, coalesce(sum(latency_ms), 0) AS latency_ms_sum,
count(latency_ms) AS latency_count FROM fresh WHERE tag_set_id IS NOT NULL GROUP BY 1, 2, 3, 4, 5,
6) g JOIN usage_tagset s ON s.id = g.tag_set_id, jsonb_each_text(s.tags) AS t(tag_name, tag_value)
GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, t.tag_name COLLATE "C", t.tag_value COLLATE "C"
ON CONFLICT (tenant_id, hour, provider_id, model_id, operation_id, tag_name, tag_value) DO UPDATE
SET calls=r.calls+excluded.calls, errors=r.errors+excluded.errors,
cache_hits=r.cache_hits+excluded.cache_hits,
unpriced_calls=r.unpriced_calls+excluded.unpriced_calls,
input_tokens=r.input_tokens+excluded.input_tokens,
output_tokens=r.output_tokens+excluded.output_tokens,
cached_input_tokens=r.cached_input_tokens+excluded.cached_input_tokens,
cache_write_tokens=r.cache_write_tokens+excluded.cache_write_tokens,
reasoning_tokens=r.reasoning_tokens+excluded.reasoning_tokens,
cost_nanos=r.cost_nanos+excluded.cost_nanos,
latency_ms_sum=r.latency_ms_sum+excluded.latency_ms_sum,
latency_count=r.latency_count+excluded.latency_count), by_user_day AS (INSERT INTO
usage_enduserdailyrollup AS r (tenant_id, day, end_user_id, calls, errors, cache_hits,
unpriced_calls, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
reasoning_tokens, cost_nanos, latency_ms_sum, latency_count) SELECT tenant_id, date_trunc('day',
occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', end_user_id, count(*), count(*) FILTER (WHERE
is_error), count(*) FILTER (WHERE cache_hit), count(*) FILTER (WHERE cost_source = 2),
sum(input_tokens), sum(output_tokens), coalesce(sum(cached_input_tokens), 0),
coalesce(sum(cache_write_tokens), 0), coalesce(sum(reasoning_tokens), 0), sum(cost_nanos),
coalesce(sum(latency_ms), 0), count(latency_ms) FROM fresh GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 ON
CONFLICT (tenant_id, day, end_user_id) DO UPDATE SET calls=r.calls+excluded.calls,
errors=r.errors+excluded.errors, cache_hits=r.cache_hits+excluded.cache_hits,
unpriced_calls=r.unpriced_calls+excluded.unpriced_calls,
input_tokens=r.input_tokens+excluded.input_tokens,
output_tokens=r.output_tokens+excluded.output_tokens,
cached_input_tokens=r.cached_input_tokens+excluded.cached_input_tokens,
cache_write_tokens=r.cache_write_tokens+excluded.cache_write_tokens,
reasoning_tokens=r.reasoning_tokens+excluded.reasoning_tokens,
cost_nanos=r.cost_nanos+excluded.cost_nanos,
latency_ms_sum=r.latency_ms_sum+excluded.latency_ms_sum,
latency_count=r.latency_count+excluded.latency_count), by_model AS (INSERT INTO
usage_modelhourlyrollup AS r (tenant_id, hour, provider_id, model_id, operation_id, calls, errors,
cache_hits, unpriced_calls, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
reasoning_tokens, cost_nanos, latency_ms_sum, latency_count) SELECT tenant_id, hour, provider_id,
model_id, operation_id, count(*), count(*) FILTER (WHERE is_error), count(*) FILTER (WHERE
cache_hit), count(*) FILTER (WHERE cost_source = 2), sum(input_tokens), sum(output_tokens),
coalesce(sum(cached_input_tokens), 0), coalesce(sum(cache_write_tokens), 0),
coalesce(sum(reasoning_tokens), 0), sum(cost_nanos), coalesce(sum(latency_ms), 0), count(latency_ms)
FROM fresh GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5 ON CONFLICT (tenant_id, hour, provider_id,
model_id, operation_id) DO UPDATE SET calls=r.calls+excluded.calls, errors=r.errors+excluded.errors,
cache_hits=r.cache_hits+excluded.cache_hits,
unpriced_calls=r.unpriced_calls+excluded.unpriced_calls,
input_tokens=r.input_tokens+excluded.input_tokens,
output_tokens=r.output_tokens+excluded.output_tokens,
cached_input_tokens=r.cached_input_tokens+excluded.cached_input_tokens,
cache_write_tokens=r.cache_write_tokens+excluded.cache_write_tokens,
reasoning_tokens=r.reasoning_tokens+excluded.reasoning_tokens,
cost_nanos=r.cost_nanos+excluded.cost_nanos,
latency_ms_sum=r.latency_ms_sum+excluded.latency_ms_sum,
latency_count=r.latency_count+excluded.latency_count), hourly AS (INSERT INTO usage_hourlyrollup AS
r (tenant_id, hour, provider_id, model_id, operation_id, end_user_id, api_key_id, calls, errors,
cache_hits, unpriced_calls, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
reasoning_tokens, cost_nanos, latency_ms_sum, latency_count) SELECT tenant_id, hour, provider_id,
model_id, operation_id, end_user_id, api_key_id, count(*), count(*) FILTER (WHERE is_error),
count(*) FILTER (WHERE cache_hit), count(*) FILTER (WHERE cost_source = 2), sum(input_tokens),
sum(output_tokens), coalesce(sum(cached_input_tokens), 0), coalesce(sum(cache_write_tokens), 0),
coalesce(sum(reasoning_tokens), 0), sum(cost_nanos), coalesce(sum(latency_ms), 0), count(latency_ms)
FROM fresh GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, 6, 7 ON CONFLICT (tenant_id, hour,
provider_id, model_id, operation_id, end_user_id, api_key_id) DO UPDATE SET
calls=r.calls+excluded.calls, errors=r.errors+excluded.errors,
cache_hits=r.cache_hits+excluded.cache_hits,
unpriced_calls=r.unpriced_calls+excluded.unpriced_calls,
input_tokens=r.input_tokens+excluded.input_tokens,
output_tokens=r.output_tokens+excluded.output_tokens,
cached_input_tokens=r.cached_input_tokens+excluded.cached_input_tokens,
cache_write_tokens=r.cache_write_tokens+excluded.cache_write_tokens,
reasoning_tokens=r.reasoning_tokens+excluded.reasoning_tokens,
cost_nanos=r.cost_nanos+excluded.cost_nanos,
latency_ms_sum=r.latency_ms_sum+excluded.latency_ms_sum,
latency_count=r.latency_count+excluded.latency_count) SELECT count(*) INTO stored FROM fresh; END
IF; IF stored <> cardinality($1) THEN RAISE EXCEPTION USING ERRCODE = 'CM001', MESSAGE = 'usage: an
event of the batch is stored already'; END IF; RETURN ids; END
"""


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
