"""The folder where web processes keep their metrics (prometheus_client's multiprocess mode).

It must start empty with each server start, or the counters of the previous run's processes
would be summed with the new ones; `costmon.gunicorn_conf` and `quickstart` see to it.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings


def multiproc_dir() -> Path | None:
    return Path(settings.PROMETHEUS_MULTIPROC_DIR) if settings.PROMETHEUS_MULTIPROC_DIR else None


def multiproc_dir_reset() -> int:
    """Delete the metric files of earlier runs; returns how many. Call before workers start."""
    folder = multiproc_dir()
    if folder is None:
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    removed = 0
    for path in folder.glob("*.db"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def multiproc_process_dead(pid: int) -> None:
    """A worker exited: drop its live-gauge files (its counters and histograms stay summed)."""
    folder = multiproc_dir()
    if folder is not None:
        # Imported here: the gunicorn master runs this, and prometheus_client picks its value
        # class (multi-process or not) once, when first imported; workers forked from a master
        # that imported it before the folder was set would keep the wrong one.
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(folder))
