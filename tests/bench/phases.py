"""The benchmark's phases over HTTP: batches and single events to the naive endpoint and to
costmon, the pre-flight check, the dashboard and the metrics API (tests/bench/run.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from tests.bench.harness import (
    Context,
    Row,
    Scale,
    cpu_spent,
    drive,
    expect_ok,
    pct,
    say,
    server_cpu,
    settle,
)


def as_payload(event: Any) -> dict[str, Any]:
    from usage.demo import as_payload

    return as_payload(event)


def fresh_batches(count: int, batches: int, *, stream: int) -> list[list[Any]]:
    from usage import demo

    events = list(
        demo.demo_events(
            count=count * batches, days=2, end=datetime.now(UTC), seed=stream, stream=stream
        )
    )
    return [events[i : i + count] for i in range(0, len(events), count)]


def naive_rows(
    context: Context,
    *,
    port: int,
    clients: int,
    single_clients: int,
    singles: list[bytes],
    batches: int,
) -> tuple[list[Row], float, float]:
    """The naive endpoint over HTTP: its rows, its single-event rate and its batch rate."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {context.ingest_key}"}
    say(f"naive endpoint: {batches} batches of 1,000 events, {clients} clients")
    bodies = [
        json.dumps([as_payload(e) for e in batch]).encode()
        for batch in fresh_batches(1000, batches, stream=904)
    ]
    s = drive(
        port, method="POST", path="/api/v1/usage/", headers=headers, bodies=bodies, clients=clients
    )
    expect_ok("naive batch ingest", s)
    batch_rate = len(bodies) * 1000 / s.elapsed
    batch_p99 = pct(s.latencies_ms, 99)
    settle("the naive endpoint's single events")
    say(f"naive endpoint: {len(singles)} single events, {single_clients} clients")
    s = drive(
        port,
        method="POST",
        path="/api/v1/usage/",
        headers=headers,
        bodies=singles,
        clients=single_clients,
    )
    expect_ok("naive single-event ingest", s)
    single_rate = len(singles) / s.elapsed
    rows = [
        Row(
            f"naive DRF endpoint over HTTP: batches of 1,000, {clients} clients",
            f"{batch_rate:,.0f} events/s (p99 {batch_p99:,.0f} ms)",
            "",
            None,
        ),
        Row(
            f"naive DRF endpoint over HTTP: single events, {single_clients} clients",
            f"{single_rate:,.0f} requests/s (client p50 {pct(s.latencies_ms, 50):.1f} ms)",
            "",
            None,
        ),
    ]
    return rows, single_rate, batch_rate


def http_rows(
    context: Context,
    scale: Scale,
    *,
    port: int,
    naive_port: int,
    clients: int,
    single_clients: int,
) -> list[Row]:
    """Every phase over HTTP, the naive endpoint's first (for the ratios)."""
    naive_singles = [
        json.dumps(as_payload(e)).encode()
        for batch in fresh_batches(scale.singles, 1, stream=905)
        for e in batch
    ]
    rows, naive_single_rate, naive_batch_rate = naive_rows(
        context,
        port=naive_port,
        clients=clients,
        single_clients=single_clients,
        singles=naive_singles,
        batches=scale.naive_batches,
    )
    rows += batch_rows(context, scale, port=port, clients=clients, naive_rate=naive_batch_rate)
    rows += single_rows(
        context, scale, port=port, clients=single_clients, naive_rate=naive_single_rate
    )
    rows += check_rows(context, scale, port=port, clients=clients)
    rows += read_rows(context, scale, port=port)
    return rows


def batch_rows(
    context: Context, scale: Scale, *, port: int, clients: int, naive_rate: float | None
) -> list[Row]:
    """New events, 1,000 per request, from several clients at once."""
    rows: list[Row] = []
    settle("costmon's batches")
    say(f"batch ingest: {scale.batches} requests of 1,000 events, {clients} clients")
    bodies = [
        json.dumps([as_payload(e) for e in batch]).encode()
        for batch in fresh_batches(1000, scale.batches, stream=902)
    ]
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {context.ingest_key}"}
    warm = drive(
        port,
        method="POST",
        path="/api/v1/usage/",
        headers=headers,
        bodies=bodies[:clients],
        clients=clients,
    )
    expect_ok("batch ingest", warm)
    cpu_before = server_cpu(port)
    s = drive(
        port,
        method="POST",
        path="/api/v1/usage/",
        headers=headers,
        bodies=bodies[clients:],
        clients=clients,
    )
    expect_ok("batch ingest", s)
    spent = cpu_spent(cpu_before, server_cpu(port))
    rate = (len(bodies) - clients) * 1000 / s.elapsed
    p99 = pct(s.latencies_ms, 99)
    rows.append(
        Row(
            f"batch ingest over HTTP, 1,000 events per request, {clients} clients",
            f"{rate:,.0f} events/s",
            ">= 20,000 events/s",
            rate >= 20_000,
            key="batch ingest",
        )
    )
    if naive_rate is not None:
        rows.append(
            Row("  speed-up over the naive endpoint", f"{rate / naive_rate:.1f}x", "", None)
        )
    rows.append(
        Row(
            "  request p99 (client)",
            f"{p99:,.0f} ms (p50 {pct(s.latencies_ms, 50):,.0f} ms, server p50 "
            f"{pct(s.server_ms, 50):,.0f} ms, slowest {max(s.latencies_ms):,.0f} ms)",
            "< 250 ms",
            p99 < 250,
            key="batch p99",
        )
    )
    timed = len(bodies) - clients
    rows.append(
        Row(
            "  CPU per batch (server side)",
            ", ".join(f"{kind} {ms / timed:,.0f} ms" for kind, ms in spent.items())
            + f" (sum {sum(spent.values()) / timed:,.0f} ms; Redis not counted)",
            "",
            None,
        )
    )

    return rows


def single_rows(
    context: Context, scale: Scale, *, port: int, clients: int, naive_rate: float | None
) -> list[Row]:
    """One event a request, from more clients."""
    rows: list[Row] = []
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {context.ingest_key}",
    }
    settle("costmon's single events")
    say(f"single-event ingest: {scale.singles} requests, {clients} clients")
    singles = [
        json.dumps(as_payload(e)).encode()
        for batch in fresh_batches(scale.singles, 1, stream=903)
        for e in batch
    ]
    s = drive(
        port,
        method="POST",
        path="/api/v1/usage/",
        headers=headers,
        bodies=singles,
        clients=clients,
    )
    expect_ok("single-event ingest", s)
    rate = len(singles) / s.elapsed
    p50 = pct(s.server_ms, 50)
    rows.append(
        Row(
            f"single-event ingest, {clients} clients",
            f"{rate:,.0f} requests/s (client p50 {pct(s.latencies_ms, 50):.1f} ms)",
            ">= 1,000 requests/s",
            rate >= 1000,
            key="single events",
        )
    )
    if naive_rate is not None:
        rows.append(
            Row(
                "  vs the naive endpoint, same run",
                f"{rate / naive_rate:.2f}x",
                ">= 2x",
                rate >= 2 * naive_rate,
            )
        )
    if naive_rate is None:
        rows.append(
            Row(
                "  server time p50",
                f"{p50:.2f} ms (p99 {pct(s.server_ms, 99):.2f} ms)",
                "< 5 ms",
                p50 < 5,
                key="single server p50",
            )
        )
        return rows
    # At full speed the clients keep every request in the server (8 clients, one request each,
    # always waiting): its time is 8 / rate whatever the work costs. At twice the naive rate
    # (the figure's own rate), paced, it is the time a request takes at that load.
    rows.append(
        Row(
            "  server time p50 at full speed (8 / rate, in the server)",
            f"{p50:.2f} ms (p99 {pct(s.server_ms, 99):.2f} ms)",
            "",
            None,
            key="single server p50",  # beside the ClickHouse pass's (full speed, no naive)
        )
    )
    paced = [
        json.dumps(as_payload(e)).encode()
        for batch in fresh_batches(scale.singles // 2, 1, stream=906)
        for e in batch
    ]
    settle("costmon's paced single events")
    say(f"single-event ingest at twice the naive rate: {len(paced)} requests, {clients} clients")
    s = drive(
        port,
        method="POST",
        path="/api/v1/usage/",
        headers=headers,
        bodies=paced,
        clients=clients,
        rate=2 * naive_rate,
    )
    expect_ok("single-event ingest, paced", s)
    reached = len(paced) / s.elapsed
    p50 = pct(s.server_ms, 50)
    rows.append(
        Row(
            f"  server time p50 at twice the naive rate ({2 * naive_rate:,.0f} requests/s, paced)",
            f"{p50:.2f} ms (p99 {pct(s.server_ms, 99):.2f} ms, {reached:,.0f} requests/s reached)",
            "< 5 ms",
            p50 < 5 and reached >= 0.97 * 2 * naive_rate,
            key="single server p50 paced",
        )
    )
    return rows


def check_rows(context: Context, scale: Scale, *, port: int, clients: int) -> list[Row]:
    """The pre-flight check: three budgets and two rate limits apply."""
    rows: list[Row] = []
    say(f"pre-flight check: {scale.checks} requests, {clients} clients")
    check = (
        '{"end_user": "user-%03d", "provider": "openai", "model": "gpt-4o", "operation": "chat", '
        '"estimated_input_tokens": 1200, "estimated_output_tokens": 300}'
    )
    checks = [(check % (i % 500)).encode() for i in range(scale.checks)]
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {context.check_key}"}
    drive(
        port,
        method="POST",
        path="/api/v1/check/",
        headers=headers,
        bodies=checks[: clients * 20],
        clients=clients,
    )
    s = drive(
        port, method="POST", path="/api/v1/check/", headers=headers, bodies=checks, clients=clients
    )
    expect_ok("check", s, allowed=(200,))
    rate = len(checks) / s.elapsed
    p50, p99 = pct(s.server_ms, 50), pct(s.server_ms, 99)
    rows.append(
        Row(
            f"pre-flight check (3 budgets, 2 rate limits), {clients} clients",
            f"{rate:,.0f} checks/s",
            ">= 1,500 checks/s",
            rate >= 1500,
        )
    )
    rows.append(Row("  server time p50", f"{p50:.2f} ms", "< 2 ms", p50 < 2))
    rows.append(Row("  server time p99", f"{p99:.2f} ms", "< 10 ms", p99 < 10))

    return rows


def read_rows(context: Context, scale: Scale, *, port: int) -> list[Row]:
    """Reads over the data set: one at a time, so each figure is the request's own."""
    rows: list[Row] = []
    views = scale.page_views
    say(f"dashboard overview and metrics API over {context.events_total:,} events")
    page = drive(
        port,
        method="GET",
        path=f"/t/{context.dataset_slug}/",
        headers={"Cookie": context.session_cookie},
        bodies=[b""] * (views + 1),
        clients=1,
    )
    expect_ok("dashboard", page, allowed=(200,))
    first, rest = page.server_ms[0], page.server_ms[1:]
    p50 = pct(rest, 50)
    rows.append(
        Row(
            f"dashboard overview, this month ({context.events_total:,} events in the store)",
            f"{p50:,.0f} ms p50 (first view {first:,.0f} ms)",
            "< 500 ms",
            p50 < 500 and first < 500,
            key="dashboard",
        )
    )
    headers = {"Authorization": f"Bearer {context.read_key}"}
    for path, label in (
        ("/api/v1/metrics/?period=month&group_by=model", "metrics API, month by model"),
        ("/api/v1/metrics/?period=month&group_by=end_user", "metrics API, month by end user"),
    ):
        s = drive(
            port, method="GET", path=path, headers=headers, bodies=[b""] * (views + 1), clients=1
        )
        expect_ok(label, s, allowed=(200,))
        first, p50 = s.server_ms[0], pct(s.server_ms[1:], 50)
        rows.append(
            Row(
                label,
                f"{p50:,.0f} ms p50 (first {first:,.0f} ms)",
                "< 200 ms",
                p50 < 200 and first < 200,
                key=label,
            )
        )
    return rows
