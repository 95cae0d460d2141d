"""What the repair of a lost PostgreSQL COMMIT costs on the ClickHouse store
(`usage.storereconcile`): a resent batch whose events are all held, with and without the
retry's comparison; the periodic reconcile with nothing to do; and one repairing a lost batch.

    .venv/bin/python tests/bench/ch_reconcile.py [--tenants 20] [--events 5000] [--db NAME]

Uses a scratch PostgreSQL database (`--db`, created afresh) and a Redis database (flushed), and
starts its own clickhouse-server in a temporary folder. Prints medians and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.clickhouse_store import clickhouse_only  # noqa: E402


def median_ms(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument(
        "--events",
        type=int,
        default=5000,
        help="per tenant over a day (those of the last 6 hours stored)",
    )
    parser.add_argument("--db", default="costmon_chreconcile")
    parser.add_argument("--redis", type=int, default=9)
    args = parser.parse_args()
    with clickhouse_only(args.db, args.redis, "costmon_bench") as store:
        measure(store, args.tenants, args.events)


def measure(store: Any, tenant_count: int, count: int) -> None:
    from django.db import transaction

    from costmon.core.services import tenant_create
    from costmon.core.tenancy import tenant_context, unscoped
    from usage import demo, services, storereconcile

    now = datetime.now(UTC)
    since = now - timedelta(hours=6)
    started = time.perf_counter()
    tenants = []
    with unscoped():
        for t in range(tenant_count):
            tenant = tenant_create(slug=f"rec{t}")
            tenants.append(tenant)
            events = list(demo.demo_events(count=count, days=1, end=now, seed=t))
            events = [e for e in events if e.occurred_at >= since] or events[:1000]
            for i in range(0, len(events), 1000):
                services.usage_record_batch(tenant=tenant, events=events[i : i + 1000])
    print(
        f"{tenant_count} tenants, {count} events each over a day (those of the last "
        f"6 hours kept), loaded in {time.perf_counter() - started:.1f} s"
    )
    batch = events[:1000]
    last = tenants[-1]
    real = services.held_batch_repair

    def resend(compare: bool) -> None:
        services.held_batch_repair = real if compare else lambda **kwargs: []  # type: ignore[assignment]
        try:
            services.usage_record_batch(tenant=last, events=batch)
        finally:
            services.held_batch_repair = real

    times: dict[bool, list[float]] = {True: [], False: []}
    with unscoped():
        for _ in range(15):  # alternated, so the machine's load falls on both alike
            for compare in (True, False):
                times[compare].append(median_ms(lambda c=compare: resend(c), 1))
        hours = {int(e.occurred_at.timestamp()) // 3600 for e in batch}
        with tenant_context(last), transaction.atomic():
            alone = median_ms(lambda: storereconcile._repair(store, last, hours), 15)
    print(
        f"a resent {len(batch)}-event batch (all held, {len(hours)} hours): "
        f"{statistics.median(times[True]):.1f} ms with the retry's comparison, "
        f"{statistics.median(times[False]):.1f} ms without; the comparison alone {alone:.1f} ms"
    )
    idle = median_ms(lambda: storereconcile.store_reconcile(store=store, since=since), 7)
    print(f"reconcile, last 6 hours, every tenant, nothing to do: {idle:.1f} ms")

    class LostCommit(Exception):
        pass

    fresh = [replace(e, event_id=f"lost-{i}") for i, e in enumerate(batch)]
    with unscoped():
        try:
            with transaction.atomic():
                services.usage_record_batch(tenant=tenants[0], events=fresh)
                raise LostCommit
        except LostCommit:
            pass
    started = time.perf_counter()
    report = storereconcile.store_reconcile(store=store, since=since)
    repair = (time.perf_counter() - started) * 1000
    print(
        f"reconcile repairing a lost {len(fresh)}-event batch: {repair:.1f} ms "
        f"({report.tenants_repaired} tenant, {report.hours_repaired} hours rebuilt)"
    )
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
