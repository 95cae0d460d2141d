"""gunicorn settings for costmon: `gunicorn -c python:costmon.gunicorn_conf costmon.wsgi`.

The worker model and server hooks live here (the rest stays on the command line):

- Threaded workers (gthread, COSTMON_GUNICORN_THREADS threads each, 8 unless set) with group
  commit of small ingest requests (usage.grouping): the threads of a worker that report single
  events at once share one transaction and one budgets counter update. Two workers per core
  (COSTMON_GUNICORN_WORKERS, twice the number of cores unless set). Fewer processes make
  bigger groups (on 2 cores with 8 clients sending single events, 2 workers spent about a
  fifth less CPU per request in the workers and a quarter less in PostgreSQL than 4), but a
  1,000-event batch is parsed and priced under one process's GIL, so batches fell from 25,104
  to 14,799 events/s (p99 243 -> 363 ms) with 2 workers in the medium benchmark on a quiet
  machine, while single events stayed within the noise (264 and 275 requests/s;
  docs/benchmark.md). A deployment that receives almost only single events may set
  COSTMON_GUNICORN_WORKERS to the number of cores. A command-line `--workers`,
  `--worker-class` or `--threads` still wins; COSTMON_INGEST_GROUP_COMMIT=0 turns grouping off.
- Each worker has loaded the application, which moves everything allocated so far out of the
  garbage collector's sight (`gc.freeze` in costmon.wsgi); it then collects the youngest
  generation less often:
  an ingest request allocates thousands of short-lived objects, and each collection of the old
  generations otherwise walks the whole of Django, DRF and the caches again.
- The hooks keep the Prometheus metrics of several worker processes right: the master empties
  the metrics folder before the first worker starts, and tells prometheus_client when a worker
  exits. A deployment with its own gunicorn config copies these settings and hooks into it.
"""

from __future__ import annotations

import gc
import os
from typing import Any

worker_class = "gthread"
workers = int(os.environ.get("COSTMON_GUNICORN_WORKERS") or (os.cpu_count() or 1) * 2)
threads = int(os.environ.get("COSTMON_GUNICORN_THREADS") or 8)
# Read by the workers' settings (costmon.settings), which load after this file.
os.environ.setdefault("COSTMON_INGEST_GROUP_COMMIT", "1" if threads > 1 else "0")


def on_starting(server: Any) -> None:
    # The master reads the settings for the folder's path (as costmon.wsgi would).
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "costmon.settings")
    # Imported in the hooks: gunicorn loads this file before the settings module is chosen.
    from costmon.web.prometheus.multiproc import multiproc_dir_reset

    multiproc_dir_reset()


# The youngest generation is collected after this many allocations (Python's default: 700).
GC_GEN0_THRESHOLD = 20_000


def post_worker_init(worker: Any) -> None:
    # costmon.wsgi froze the start-up objects as it loaded (for any WSGI server); here only the
    # youngest generation's threshold, a gunicorn worker's own tuning.
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def child_exit(server: Any, worker: Any) -> None:
    from costmon.web.prometheus.multiproc import multiproc_process_dead

    multiproc_process_dead(worker.pid)
