"""Test settings: the real PostgreSQL and Redis of this machine (see README), unless
COSTMON_TEST_DB=sqlite runs the suite on the embedded SQLite default."""

import atexit
import os
import shutil
import tempfile

if os.environ.get("COSTMON_TEST_DB") == "sqlite":
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("COSTMON_VAR_DIR", "/tmp/costmon-test-var")
else:
    os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/costmon")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
    # The app acts as an ordinary role so row-level security applies, as in production.
    os.environ.setdefault("DATABASE_ROLE", "costmon_app")
os.environ.setdefault("SECRET_KEY", "tests-only-secret-key")
# This run's Prometheus request metrics (prometheus_client multiprocess files) in a folder of
# its own; processes the tests start inherit it.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="costmon-test-prometheus-")
    atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], True)

from costmon.settings import *

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Catalog edits made directly through the ORM in tests must be seen at once.
COSTMON_CATALOG_TTL_SECONDS = 0
# Changes made by another process (a worker, a live server) must be seen at once.
COSTMON_SHARED_RECHECK_MS = 0
CELERY_TASK_ALWAYS_EAGER = True
# Tasks run eagerly here: a warm-up after every bump would run inside the write that bumped.
# The warm-up's own tests turn it on.
COSTMON_DASHBOARD_WARMUP = False
STATIC_ROOT = None  # type: ignore[assignment]  # tests serve static files from the finders

if os.environ.get("COSTMON_TEST_DB") == "sqlite":
    # A file, as the embedded default uses (an in-memory database locks whole tables).
    DATABASES["default"]["TEST"] = {
        "NAME": os.path.join(os.environ["COSTMON_VAR_DIR"], "test.sqlite3")
    }
