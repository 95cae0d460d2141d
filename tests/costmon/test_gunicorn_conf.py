"""costmon.gunicorn_conf: two threaded workers per core unless told otherwise (one per core
makes bigger ingest groups but halves the processes that parse 1,000-event batches)."""

from __future__ import annotations

import importlib
import os

import pytest


def loaded(monkeypatch: pytest.MonkeyPatch, **env: str):
    # Loading the config sets a default for the workers' settings: kept out of this process.
    monkeypatch.setenv(
        "COSTMON_INGEST_GROUP_COMMIT", os.environ.get("COSTMON_INGEST_GROUP_COMMIT", "0")
    )
    for name in ("COSTMON_GUNICORN_WORKERS", "COSTMON_GUNICORN_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    import costmon.gunicorn_conf as conf

    return importlib.reload(conf)


def test_two_threaded_workers_per_core_by_default(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    conf = loaded(monkeypatch)
    assert (conf.worker_class, conf.workers, conf.threads) == ("gthread", 12, 8)


def test_the_environment_sets_workers_and_threads(monkeypatch):
    conf = loaded(monkeypatch, COSTMON_GUNICORN_WORKERS="3", COSTMON_GUNICORN_THREADS="16")
    assert (conf.workers, conf.threads) == (3, 16)
