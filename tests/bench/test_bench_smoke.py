"""The benchmark keeps working: a small run of tests/bench/run.py from start to end.

Its figures mean nothing at this size; the full run is documented in the README."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
