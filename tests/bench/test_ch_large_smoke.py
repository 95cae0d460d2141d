"""The large-set tool (tests/bench/ch_large.py) keeps working: every step at a tiny size in the
tests' own ClickHouse server. Its figures mean nothing at this size (docs/benchmark.md has the
100-million-event run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import requires_redis

ROOT = Path(__file__).resolve().parents[2]
ROWS = (
    "storage per raw event, ClickHouse parts (2,000 events)",
    "hourly rollups, every dimension",
    "hourly rollups by model",
    "metrics API, 90 days by end_user (in process)",
    "event list API, first page of 100",
    "event_sums by end user, 30 days, from rollups",
    "event_sums by end user, 30 days, from raw events",
    "batch ingest over HTTP, 1,000 events per request, 2 clients",
    "single-event ingest, 2 clients",
    "dashboard overview, this month",
    "| generate |",
    "| rollups |",
)


@pytest.mark.slow
@pytest.mark.clickhouse
@requires_redis
def test_the_large_set_tool_builds_and_measures_a_tiny_set(clickhouse_servers, tmp_path):
    import psycopg

    database = f"costmon_bench_smoke_large_{os.getpid()}"
    redis_db = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13").rsplit("/", 1)[1]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    url = f"clickhouse://127.0.0.1:{clickhouse_servers[0].port}/costmon_large_smoke"
    command = [
        sys.executable,
        str(ROOT / "tests" / "bench" / "ch_large.py"),
        *("--url", url, "--db", database, "--redis", redis_db, "--data", str(tmp_path)),
        *("--events", "2000", "--template", "50", "--tenants", "2", "--users", "20"),
        *("--days", "7", "--chunk", "700", "--batches", "6", "--singles", "20"),
        *("--views", "1", "--workers", "2", "--clients", "2", "--single-clients", "2"),
    ]
    try:
        result = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
        )
    finally:
        with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ROWS:
        assert row in result.stdout, row
    # 1,900 generated beside the 100 seeded, chunks of 700; the sums of both stores agree.
    assert "generating 1,900 in 3 chunks" in result.stderr
    assert "totals agree: 2,000 events, rollups of both stores" in result.stderr
    assert "rebuild keys changed 0" in result.stderr
