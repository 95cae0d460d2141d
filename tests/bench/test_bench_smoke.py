"""The benchmark keeps working: a small run of tests/bench/run.py from start to end, with the
events in PostgreSQL and with them in ClickHouse, and the side-by-side table of the two.

Its figures mean nothing at this size; the full run is documented in the README."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import clickhouse
from tests.bench.harness import Row
from tests.bench.report import OtherPass, side_by_side
from tests.helpers import requires_redis

ROOT = Path(__file__).resolve().parents[2]
ROWS = (
    "storage per raw event",
    "naive baseline",
    "raw PostgreSQL COPY",
    "speed-up over the naive baseline",
    "fraction of the COPY rate",
    "naive DRF endpoint over HTTP: batches",
    "naive DRF endpoint over HTTP: single events",
    "batch ingest over HTTP",
    "speed-up over the naive endpoint",
    "vs the naive endpoint, same run",
    "request p99",
    "single-event ingest",
    "pre-flight check",
    "server time p50",
    "server time p99",
    "dashboard overview",
    "metrics API, month by model",
    "(7 rules, 2 budgets, their own usage), 2 Celery workers",
    "Rules round, 5 tenants of costmon_bench_smoke_",
    "| full (all due) |",
)


@pytest.mark.slow
@requires_redis
def test_the_benchmark_runs_end_to_end_and_reports_every_row(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "bench" / "run.py"),
            "--smoke",
            "--database",
            f"costmon_bench_smoke_{os.getpid()}",
            "--redis-db",
            "13",
            "--workers",
            "2",
            "--clients",
            "2",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "latest.md").read_text()
    assert report == result.stdout
    for row in ROWS:
        assert row in report, row
    assert "| pass " in report or "| SHORT " in report
    assert "PostgreSQL: " in report and "CPU: " in report


CLICKHOUSE_ROWS = (
    "storage per raw event, ClickHouse parts (4,000 events)",
    "of which the tag-set dictionary",
    "hourly rollups by model",
    "batch ingest over HTTP",
    "request p99",
    "single-event ingest",
    "server time p50",
    "dashboard overview, this month (4,000 events in the store)",
    "metrics API, month by model",
    "metrics API, month by end user",
)


@pytest.mark.slow
@pytest.mark.clickhouse
@requires_redis
@pytest.mark.skipif(clickhouse.binary() is None, reason="clickhouse-server is not installed")
def test_the_clickhouse_pass_runs_end_to_end_on_its_own_server(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "COSTMON_EVENT_STORE_URL")
    }
    handback = tmp_path / "clickhouse.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "bench" / "run.py"),
            "--smoke",
            "--event-store",
            "clickhouse",
            "--handback",
            str(handback),
            "--database",
            f"costmon_bench_smoke_ch_{os.getpid()}",
            "--redis-db",
            "13",
            "--workers",
            "2",
            "--clients",
            "2",
            "--single-clients",
            "2",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    other = OtherPass.from_json(handback.read_text())
    assert other.events_total == 4000  # 2 tenants x 2,000 events, each stored once
    assert other.version.startswith(("18.", "19.", "2"))
    whats = [r.what for r in other.rows]
    for row in CLICKHOUSE_ROWS:
        assert any(row in what for what in whats), row
    storage = other.rows[0]
    assert storage.key == "storage" and storage.target == "< 60 bytes"
    assert 5 < float(storage.measured.split(" bytes")[0]) < 200


def test_the_side_by_side_table_puts_each_store_beside_the_other():
    pg = [
        Row(
            "storage per raw event, indexes included (9 events)",
            "200 bytes",
            "<= 200",
            True,
            key="storage",
        ),
        Row("naive baseline", "900 events/s", "", None),
        Row("batch ingest over HTTP", "30,000 events/s", ">= 20,000", True, key="batch ingest"),
        Row("  server time p50", "1 ms", "< 5 ms", True, key="single server p50"),
        Row("  server time p50", "0.5 ms", "< 2 ms", True),  # the check's: PostgreSQL only
    ]
    ch = [
        Row(
            "storage per raw event, ClickHouse parts (8 events)",
            "45 bytes",
            "< 60",
            True,
            key="storage",
        ),
        Row("batch ingest over HTTP", "10,000 events/s", ">= 20,000", False, key="batch ingest"),
        Row("  server time p50", "9 ms", "< 5 ms", False, key="single server p50"),
        Row("only here", "1", "", None),
    ]
    assert side_by_side(pg, ch, events=8) == [
        ("storage per raw event (8 events)", "200 bytes", "45 bytes", "<= 200 / < 60", "pass"),
        ("naive baseline", "900 events/s", "", "", ""),
        (
            "batch ingest over HTTP",
            "30,000 events/s",
            "10,000 events/s",
            ">= 20,000",
            "pass / SHORT",
        ),
        ("  server time p50", "1 ms", "9 ms", "< 5 ms", "pass / SHORT"),
        ("  server time p50", "0.5 ms", "", "< 2 ms", "pass"),
        ("only here", "", "1", "", ""),
    ]
