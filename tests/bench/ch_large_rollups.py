"""The large set's rollups (tests/bench/ch_large.py, step "rollups"), from its events.

- The ClickHouse store's hourly rollups by every dimension: the table emptied, then each
  tenant's month summed from the events table by the store's own sums (`chrows.SUM_SQL`, keyed
  as `chrollups.ROLLUP_COLUMNS`) with `INSERT ... SELECT ... GROUP BY`: what
  `clickhouse_rollups_rebuild` inserts into an empty table, without reading the sums into
  Python a day at a time. The product's rebuild then checks a day of each tenant
  (`chrebuild.rollups_rebuild`): it must change no key.
- PostgreSQL's rollups by model and by tag (the dashboard's totals, charts and spend by tag,
  the metrics API by model): the data-set tenants' rows deleted, then written by COPY from
  ClickHouse's sums (by model from the store's rollups; by tag from the events grouped by tag
  set, each set's tags from PostgreSQL's `TagSet`). The kept sums of past days are forgotten.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.bench.ch_large import execute, store
from tests.bench.harness import PG_ADMIN, say


def store_rollups() -> int:
    """The store's rollups from its events; rows written (before merges)."""
    from usage.eventstore.chrollups import DIMENSIONS, ROLLUP_COLUMNS, ROLLUPS
    from usage.eventstore.chrows import SUM_SQL, TABLE
    from usage.rollups import ROLLUP_SUMS

    sums = dict(SUM_SQL)
    execute("OPTIMIZE TABLE usage_events_buffer")
    execute(f"TRUNCATE TABLE {ROLLUPS}")
    months = execute(f"SELECT DISTINCT tenant_id, toYYYYMM(occurred_at) FROM {TABLE} ORDER BY 1, 2")
    ids = ", ".join(DIMENSIONS)
    for tenant_id, month in months:
        execute(
            f"INSERT INTO {ROLLUPS} ({', '.join(ROLLUP_COLUMNS)}) SELECT tenant_id, "
            f"toStartOfHour(occurred_at) AS h, {ids}, "
            f"{', '.join(sums[name] for name in ROLLUP_SUMS)} FROM {TABLE} "
            f"WHERE tenant_id = {int(tenant_id)} AND toYYYYMM(occurred_at) = {int(month)} "
            f"GROUP BY tenant_id, h, {ids}",
            max_threads=2,
        )
        say(f"store rollups: tenant {tenant_id}, month {month}")
    ((rows,),) = execute(f"SELECT count() FROM {ROLLUPS}")
    return int(rows)


def rebuild_check() -> int:
    """The product's rebuild over the last whole day of each data-set tenant: keys changed."""
    from costmon.core.models import Tenant
    from costmon.core.tenancy import unscoped
    from usage.eventstore.chrebuild import rollups_rebuild

    until = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    changed = 0
    with unscoped():
        for tenant in Tenant.objects.filter(slug__startswith="demo"):
            report = rollups_rebuild(store(), tenant, since=until - timedelta(days=1), until=until)
            changed += report.keys_changed
    return changed


def dataset_tenants() -> list[int]:
    """The seeded tenants (demo, demo-2, ...): the ones the set is made of."""
    from costmon.core.models import Tenant
    from costmon.core.tenancy import unscoped

    with unscoped():
        return list(Tenant.objects.filter(slug__startswith="demo").values_list("pk", flat=True))


def _copy(table: str, columns: Iterable[str], rows: Iterable[tuple[Any, ...]]) -> int:
    import psycopg
    from django.conf import settings

    name = settings.DATABASES["default"]["NAME"]
    written = 0
    with psycopg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}") as conn, conn.cursor() as cur:
        cur.execute("SET costmon.rls_bypass = 'on'")
        with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
                written += 1
    return written


def postgres_rollups() -> tuple[int, int]:
    """PostgreSQL's rollups by model and by tag of the tenants in the store; rows written."""
    from costmon.core.tenancy import unscoped
    from usage import settled
    from usage.eventstore.chrollups import ROLLUPS
    from usage.eventstore.chrows import TABLE
    from usage.models import ModelHourlyRollup, TagHourlyRollup, TagSet
    from usage.rollups import MODEL_ROLLUP_KEY, ROLLUP_SUMS, TAG_ROLLUP_KEY

    held = {int(t) for (t,) in execute(f"SELECT DISTINCT tenant_id FROM {ROLLUPS}")}
    tenants = [t for t in dataset_tenants() if t in held]
    with unscoped():
        ModelHourlyRollup.objects.unscoped().filter(tenant_id__in=tenants).delete()
        TagHourlyRollup.objects.unscoped().filter(tenant_id__in=tenants).delete()
        tag_sets = {s.pk: s.tags for s in TagSet.objects.unscoped().filter(tenant_id__in=tenants)}
    summed = ", ".join(f"sum({name})" for name in ROLLUP_SUMS)
    keys = "tenant_id, h, provider_id, model_id, operation_id"

    def hour(seconds: int) -> datetime:
        return datetime.fromtimestamp(int(seconds), UTC)

    def by_model() -> Iterable[tuple[Any, ...]]:
        for tenant_id in tenants:
            for row in execute(
                f"SELECT {keys}, {summed} FROM (SELECT *, toUInt32(hour) AS h FROM {ROLLUPS} "
                f"WHERE tenant_id = {tenant_id}) GROUP BY {keys}"
            ):
                yield (row[0], hour(row[1]), *row[2:])

    models = _copy(ModelHourlyRollup._meta.db_table, [*MODEL_ROLLUP_KEY, *ROLLUP_SUMS], by_model())
    say(f"PostgreSQL rollups by model: {models:,} rows")
    from usage.eventstore.chrows import SUM_SQL

    sums = dict(SUM_SQL)

    def by_tag() -> Iterable[tuple[Any, ...]]:
        for tenant_id in tenants:
            found: dict[tuple[Any, ...], list[int]] = {}
            for row in execute(
                f"SELECT {keys}, tag_set_id, {', '.join(sums[n] for n in ROLLUP_SUMS)} FROM "
                f"(SELECT *, toUInt32(toStartOfHour(occurred_at)) AS h FROM {TABLE} "
                f"WHERE tenant_id = {tenant_id} AND tag_set_id != 0) GROUP BY {keys}, tag_set_id"
            ):
                for name, value in tag_sets[row[5]].items():
                    key = (*row[:5], name, value)
                    was = found.setdefault(key, [0] * len(ROLLUP_SUMS))
                    for i, v in enumerate(row[6:]):
                        was[i] += int(v)
            for key, values in sorted(found.items()):
                yield (key[0], hour(key[1]), *key[2:], *values)

    tags = _copy(TagHourlyRollup._meta.db_table, [*TAG_ROLLUP_KEY, *ROLLUP_SUMS], by_tag())
    say(f"PostgreSQL rollups by tag: {tags:,} rows")
    for tenant_id in tenants:
        settled.bump(tenant_id)
    return models, tags


def totals_check() -> None:
    """Every tenant's calls and cost in the events, the store's rollups and PostgreSQL's rollups
    by model are equal, to the nano-dollar (or the step fails)."""
    from django.db.models import Sum

    from costmon.core.tenancy import unscoped
    from usage.eventstore.chrollups import ROLLUPS
    from usage.eventstore.chrows import TABLE
    from usage.models import ModelHourlyRollup

    events = execute(f"SELECT tenant_id, count(), sum(cost_nanos) FROM {TABLE} GROUP BY tenant_id")
    rollups = execute(
        f"SELECT tenant_id, sum(calls), sum(cost_nanos) FROM {ROLLUPS} GROUP BY tenant_id"
    )
    with unscoped():
        postgres = ModelHourlyRollup.objects.unscoped().values_list("tenant_id")
        by_model = list(postgres.annotate(c=Sum("calls"), n=Sum("cost_nanos")).order_by())
    tenants = set(dataset_tenants())
    wanted = {int(t): (int(c), int(n)) for t, c, n in events if int(t) in tenants}
    for name, held in (("store rollups", rollups), ("PostgreSQL by model", by_model)):
        found = {int(t): (int(c), int(n)) for t, c, n in held if int(t) in wanted}
        if found != wanted:
            raise SystemExit(f"{name} differ from the events: {found} != {wanted}")
    say(f"totals agree: {sum(c for c, _ in wanted.values()):,} events, rollups of both stores")


def rollups_fill() -> dict[str, Any]:
    import time

    figures: dict[str, Any] = {}
    started = time.monotonic()
    figures["store rollup rows"] = store_rollups()
    figures["store rollups s"] = time.monotonic() - started
    started = time.monotonic()
    figures["rebuild keys changed"] = rebuild_check()
    figures["rebuild check s"] = time.monotonic() - started
    started = time.monotonic()
    figures["postgres model rows"], figures["postgres tag rows"] = postgres_rollups()
    figures["postgres rollups s"] = time.monotonic() - started
    totals_check()
    for name, value in figures.items():
        say(f"rollups: {name} = {value:,.1f}" if isinstance(value, float) else f"{name} {value:,}")
    return figures
