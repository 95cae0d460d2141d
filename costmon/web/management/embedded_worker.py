"""The Celery worker, with beat, that `manage.py quickstart` runs beside the web server.

    python -m costmon.web.management.embedded_worker [--verbose]

One process (solo pool) runs the tasks and the schedule over the embedded broker (folders under
var/) or Redis. Quiet unless --verbose: no banner, warnings and errors only. Production runs
`celery -A costmon worker` and `celery -A costmon beat` as the README says, with Celery's own
warnings.
"""

from __future__ import annotations

import os
import sys
import warnings

from celery.exceptions import SecurityWarning

from costmon.celery import app


def main(argv: list[str]) -> int:
    verbose = "--verbose" in argv
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "costmon.settings")
    if not verbose:
        # Celery warns whenever a worker runs as root, which is how a newcomer on a container or
        # a fresh VM starts the quickstart; costmon's Celery accepts JSON only (no pickle), the
        # case Celery itself lets through with that warning.
        warnings.filterwarnings(
            "ignore", message="You're running the worker with superuser", category=SecurityWarning
        )
    level = "INFO" if verbose else "WARNING"
    options = ["--beat", "--pool", "solo", "--loglevel", level]
    code = app.start([*([] if verbose else ["--quiet"]), "worker", *options])
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
