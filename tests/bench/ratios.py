"""In-process ratios of the benchmark: the naive ORM baseline, costmon's ingest service and
raw COPY, on the same rows (tests/bench/run.py)."""

from __future__ import annotations

import time
from typing import Any

from tests.bench.harness import Context, Row, say
from tests.bench.phases import fresh_batches


def measure_ratios(bench: Any) -> dict[str, float]:
    """events/s of the naive baseline, of `usage_record_batch`, and of COPY, same rows."""
    from django.db import connection, transaction

    from costmon.core.tenancy import raw_cursor, tenant_context
    from usage import dimensions, rows, services, tagsets
    from usage.models import Dimension, TagSet, UsageEvent

    say("in-process ratios: naive ORM baseline, the ingest service, raw COPY")
    out: dict[str, float] = {}
    batches = fresh_batches(1000, 6, stream=901)
    with tenant_context(bench):
        # The naive baseline: per event, look up or create each name and insert one row, each
        # statement its own commit (a stock ModelSerializer view without ATOMIC_REQUESTS).
        from usage.catalog import catalog_for

        catalog = catalog_for(bench.pk)
        started = time.perf_counter()
        for e in batches[0]:
            dims = {}
            for kind, value in (
                (Dimension.Kind.PROVIDER, e.provider),
                (Dimension.Kind.MODEL, e.model),
                (Dimension.Kind.OPERATION, e.operation),
                (Dimension.Kind.END_USER, e.end_user),
            ):
                dims[kind], _ = Dimension.objects.get_or_create(
                    tenant=bench, kind=kind, value=value
                )
            cost, source, price_id = rows.price_event(catalog, e)
            tag_set = None
            if e.tags:
                pairs = tagsets.pairs_of(e.tags)
                tag_set, _ = TagSet.objects.get_or_create(
                    tenant=bench, key=tagsets.tag_set_key(pairs), defaults={"tags": dict(pairs)}
                )
            UsageEvent.objects.create(
                tenant=bench,
                event_id=e.event_id,
                occurred_at=e.occurred_at,
                provider=dims[Dimension.Kind.PROVIDER],
                model=dims[Dimension.Kind.MODEL],
                operation=dims[Dimension.Kind.OPERATION],
                end_user=dims[Dimension.Kind.END_USER],
                tag_set=tag_set,
                input_tokens=e.input_tokens,
                output_tokens=e.output_tokens,
                cached_input_tokens=e.cached_input_tokens,
                cache_write_tokens=e.cache_write_tokens,
                reasoning_tokens=e.reasoning_tokens,
                cost_nanos=cost,
                cost_source=source,
                price_id=price_id,
                latency_ms=e.latency_ms,
                is_error=e.is_error,
                cache_hit=e.cache_hit,
            )
        out["naive"] = len(batches[0]) / (time.perf_counter() - started)

        # costmon's ingest service, batch after batch (validation is in the HTTP figures).
        started = time.perf_counter()
        for batch in batches[1:4]:
            services.usage_record_batch(tenant=bench, events=batch)
        out["service"] = 3000 / (time.perf_counter() - started)

        # Raw COPY of the same rows into a copy of the events table with the same indexes.
        table = UsageEvent._meta.db_table
        columns = rows.EVENT_COLUMNS
        dims_all = dimensions.dimension_ids(
            tenant=bench, wanted=dimensions.dimension_keys([e for b in batches[4:] for e in b])
        )
        event_rows = [
            rows.event_row(
                tenant_id=bench.pk,
                event=e,
                dims=dims_all,
                priced=rows.price_event(catalog, e),
                api_key_id=0,
            )
            for e in (e for b in batches[4:] for e in b)
        ]
        with transaction.atomic():
            tagsets.with_tag_set_ids(event_rows)
        copied = [[row[c] for c in columns] for row in event_rows]
        with transaction.atomic(), raw_cursor(connection) as cursor:
            cursor.execute(
                f"CREATE TEMP TABLE bench_copy (LIKE {table} INCLUDING ALL) ON COMMIT DROP"
            )
            started = time.perf_counter()
            with cursor.copy(f"COPY bench_copy ({', '.join(columns)}) FROM STDIN") as copy:
                for values in copied:
                    copy.write_row(values)
            out["copy"] = len(copied) / (time.perf_counter() - started)
    return out


def ratio_rows(context: Context) -> list[Row]:
    b = context.baseline
    return [
        Row(
            "naive baseline: one ORM insert per event (in process)",
            f"{b['naive']:,.0f} events/s",
            "",
            None,
        ),
        Row("costmon's ingest service (in process)", f"{b['service']:,.0f} events/s", "", None),
        Row("raw PostgreSQL COPY of the same rows", f"{b['copy']:,.0f} events/s", "", None),
        Row(
            "service: speed-up over the naive baseline",
            f"{b['service'] / b['naive']:.1f}x",
            "",
            None,
        ),
        Row("service: fraction of the COPY rate", f"{b['service'] / b['copy']:.0%}", "", None),
    ]
