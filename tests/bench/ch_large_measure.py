"""The large set's figures (tests/bench/ch_large.py, step "measure"), with the benchmark's own
pieces: bytes per event from the store's parts (`clickhouse_pass.clickhouse_storage_rows`),
reads in process through Django's test client (the metrics API by model and by end user over
30 and 90 days, the event list's first page, `event_sums` by end user from the store's
rollups and from the raw events), then over HTTP with gunicorn (`phases`: batch ingest of
1,000-event requests, single events, the dashboard overview and the metrics API this month).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from tests.bench.ch_large import execute
from tests.bench.harness import Context, Row, say


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def timed(action: Callable[[], Any], views: int) -> tuple[float, float]:
    """The first call's milliseconds and the median of the next `views`."""
    times = []
    for _ in range(views + 1):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times[0], statistics.median(times[1:] or times)


def timed_row(what: str, action: Callable[[], Any], views: int) -> Row:
    first, p50 = timed(action, views)
    return Row(what, f"{p50:,.0f} ms p50 (first {first:,.0f} ms)", "", None, key=what)


@contextlib.contextmanager
def raw_events_only() -> Iterator[None]:
    """`ClickHouseStore.event_sums` without its rollups: every sum from the raw events."""
    from usage.eventstore import clickhouse

    kept = clickhouse.rollup_event_sums
    clickhouse.rollup_event_sums = lambda *a, **kw: None  # type: ignore[assignment]
    try:
        yield
    finally:
        clickhouse.rollup_event_sums = kept


def reads_in_process(context: Context, views: int) -> list[Row]:
    from django.test import Client
    from django.utils import timezone

    from costmon.core.models import Tenant
    from costmon.core.periods import TimeRange, tenant_zone
    from costmon.core.tenancy import tenant_context, unscoped
    from usage.eventstore.base import event_query
    from usage.eventstore.current import event_store

    with unscoped():
        tenant = Tenant.objects.get(slug=context.dataset_slug)
    client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {context.read_key}")
    zone = tenant_zone(tenant)
    today = timezone.now().astimezone(zone).date()
    say(f"reads in process over tenant {tenant.slug} (load {load()})")

    def get(url: str) -> Callable[[], Any]:
        def action() -> Any:
            response = client.get(url)
            if response.status_code != 200:
                raise SystemExit(f"{url} answered {response.status_code}: {response.content!r}")
            return response

        return action

    rows = []
    for days in (30, 90):
        period = f"start={today - timedelta(days=days - 1)}&end={today}"
        for by in ("model", "end_user"):
            rows.append(
                timed_row(
                    f"metrics API, {days} days by {by} (in process)",
                    get(f"/api/v1/metrics/?{period}&group_by={by}"),
                    views,
                )
            )
    rows.append(
        timed_row("event list API, first page of 100", get("/api/v1/usage/?limit=100"), views)
    )
    end = timezone.now()
    query = event_query(
        time_range=TimeRange(start=end - timedelta(days=30), end=end, period="custom", tz=zone)
    )
    store = event_store()

    def sums() -> Any:
        with tenant_context(tenant):
            return store.event_sums(tenant, query, by=("end_user",))

    rows.append(timed_row("event_sums by end user, 30 days, from rollups", sums, views))
    with raw_events_only():
        rows.append(timed_row("event_sums by end user, 30 days, from raw events", sums, views))
    return rows


def over_http(args: argparse.Namespace, context: Context) -> list[Row]:
    from costmon.web.management.launcher import ProcessGroup
    from tests.bench.ch_large import scale_of
    from tests.bench.harness import costmon_workers, free_port, start_costmon
    from tests.bench.phases import batch_rows, read_rows, single_rows

    scale = scale_of(args)
    port = free_port()
    say(f"gunicorn: {costmon_workers(args.workers)} workers on port {port} (load {load()})")
    rows: list[Row] = []
    with ProcessGroup(grace=30) as children:
        start_costmon(children, args, port)
        for phase in (
            lambda: batch_rows(context, scale, port=port, clients=args.clients, naive_rate=None),
            lambda: single_rows(
                context, scale, port=port, clients=args.single_clients, naive_rate=None
            ),
            lambda: read_rows(context, scale, port=port),
        ):
            rows += phase()
            rows.append(Row("  load average after it", load(), "", None))
    return rows


def column_row(events: int) -> Row:
    """The events table's largest columns, compressed bytes per event (after the merge)."""
    found = execute(
        "SELECT name, data_compressed_bytes FROM system.columns WHERE database = currentDatabase() "
        "AND table = 'usage_events' ORDER BY data_compressed_bytes DESC LIMIT 6"
    )
    n = max(events, 1)
    return Row(
        "  largest columns, bytes per event",
        ", ".join(f"{name} {int(size) / n:.1f}" for name, size in found),
        "",
        None,
    )


def measure(args: argparse.Namespace, context: Context) -> list[Row]:
    from tests.bench.clickhouse_pass import clickhouse_storage_rows, clickhouse_version

    rows: list[Row] = []
    if "storage" in args.steps.split(","):  # merges every partition: minutes at 100 million
        say(f"storage (load {load()})")
        started = time.monotonic()
        rows += clickhouse_storage_rows(context)
        rows.append(
            Row("  merging and measuring took", f"{time.monotonic() - started:,.0f} s", "", None)
        )
        rows.append(column_row(context.events_total))
    else:
        ((context.events_total,),) = execute("SELECT count() FROM usage_events")
    rows.append(Row("ClickHouse", clickhouse_version(), "", None))
    rows += reads_in_process(context, args.views)
    rows.append(Row("  load average after the reads", load(), "", None))
    rows += over_http(args, context)
    return rows


def render(rows: list[Row], taken: list[tuple[str, float, int]], args: argparse.Namespace) -> str:
    from tests.bench.ch_large import folder_bytes

    size = folder_bytes(args.data)
    lines = ["| figure | measured |", "|---|---|"]
    lines += [f"| {r.what} | {r.measured} |" for r in rows]
    lines += ["", "| step | time | disk |", "|---|---|---|"]
    lines += [f"| {name} | {s:,.0f} s | {grown / 2**30:+.2f} GiB |" for name, s, grown in taken]
    lines.append(f"\nClickHouse data folder {args.data}: {size / 2**30:.2f} GiB on disk")
    lines.append(f"Load average at the end: {load()}")
    return "\n".join(lines)
