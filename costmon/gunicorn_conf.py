"""gunicorn settings for costmon: `gunicorn -c python:costmon.gunicorn_conf costmon.wsgi`.

Only server hooks live here (the rest stays on the command line). They keep the Prometheus
metrics of several worker processes right: the master empties the metrics folder before the
first worker starts, and tells prometheus_client when a worker exits. A deployment with its own
gunicorn config copies these two hooks into it.
"""

from __future__ import annotations

import os
from typing import Any


def on_starting(server: Any) -> None:
    # The master reads the settings for the folder's path (as costmon.wsgi would).
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "costmon.settings")
    # Imported in the hooks: gunicorn loads this file before the settings module is chosen.
    from costmon.web.prometheus.multiproc import multiproc_dir_reset

    multiproc_dir_reset()


def child_exit(server: Any, worker: Any) -> None:
    from costmon.web.prometheus.multiproc import multiproc_process_dead

    multiproc_process_dead(worker.pid)
