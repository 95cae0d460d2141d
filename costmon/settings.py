"""costmon settings: everything configurable comes from the environment (see README)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from costmon.core.env import env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("COSTMON_VAR_DIR", str(BASE_DIR / "var")) or BASE_DIR / "var")

DEBUG = env_bool("DEBUG", False)

# The embedded default (no DATABASE_URL): a SQLite file under var/ and no Redis, so one command
# starts the product on a bare machine.
DATABASE_URL = env_str("DATABASE_URL")
EMBEDDED = not DATABASE_URL


def _embedded_secret_key() -> str:
    """A random key kept in var/, so sessions survive restarts of the embedded product."""
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env_str("SECRET_KEY") or ""
if not SECRET_KEY:
    if not EMBEDDED:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DATABASE_URL is set (generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`)"
        )
    SECRET_KEY = _embedded_secret_key()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# Used in links that leave the product: alert messages, empty-state curl examples.
SITE_URL = (env_str("SITE_URL", "http://127.0.0.1:8000") or "").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "costmon.core.apps.CostmonConfig",
    "usage",
    "budgets",
    "alerts",
    "costmon.web.apps.WebConfig",
]

MIDDLEWARE = [
    "costmon.core.middleware.ServerTimingMiddleware",
    "costmon.core.middleware.ApiErrorMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "costmon.core.middleware.TenantContextMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "costmon.core.middleware.StaffAdminMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "costmon.urls"
WSGI_APPLICATION = "costmon.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if EMBEDDED:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "costmon.sqlite3",
            "OPTIONS": {
                # WAL lets the dashboard read while the ingest API writes.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }
else:
    DATABASES = {"default": dict(dj_database_url.parse(DATABASE_URL or "", conn_max_age=60))}
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # Session settings: JIT compiles each big aggregate for ~25 ms, more than such a query
    # takes without it; a month of rollups grouped by end user (about 100,000 rows) sorts in
    # memory with 32 MB instead of spilling to disk with the default 4 MB.
    _session = env_str("DATABASE_SESSION_OPTIONS", "-c jit=off -c work_mem=32MB") or ""
    # Row-level security is enforced for non-superuser roles only. When the login role is a
    # superuser (as on a developer machine), DATABASE_ROLE names the role the product acts as.
    _role = env_str("DATABASE_ROLE")
    if _role:
        if not _role.replace("_", "").isalnum():
            raise ImproperlyConfigured(f"DATABASE_ROLE must be a plain role name, got {_role!r}")
        _session = f"{_session} -c role={_role}"
    _options: dict[str, object] = dict(DATABASES["default"].get("OPTIONS") or {})  # type: ignore[call-overload]
    if _session.strip():
        _options["options"] = _session.strip()
    if "postgresql" in str(DATABASES["default"].get("ENGINE")) and env_bool(
        "DATABASE_PREPARED_STATEMENTS", True
    ):
        # Statements sent with `prepare=True` (ingest's: the one-trip insert, the ingest lock,
        # the counter update, the round mark) are prepared once per connection, so the server
        # no longer parses, rewrites (RLS) and plans each on every call: about a fifth of the
        # backend's CPU for a group of one event. Django leaves psycopg's threshold at None,
        # which ignores `prepare=True`; a threshold no statement reaches prepares those only
        # (the ORM's statements stay unprepared). Off (false) behind a connection pooler in
        # transaction mode that does not track prepared statements.
        _options["prepare_threshold"] = 2**62  # never reached by a count of calls
    if _options:
        DATABASES["default"]["OPTIONS"] = _options

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": 0.5,
                "SOCKET_TIMEOUT": 0.5,
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "costmon.staticfinders.PlotlyFinder",
]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "staticfiles")) or "")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# Ingestion limits: a body over this size answers 413.
COSTMON_MAX_BODY_BYTES = env_int("COSTMON_MAX_BODY_BYTES", 10 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = COSTMON_MAX_BODY_BYTES
COSTMON_MAX_BATCH_EVENTS = env_int("COSTMON_MAX_BATCH_EVENTS", 5000, minimum=1)
# Small ingest requests of a threaded worker stored together (usage.grouping); gunicorn's config
# (costmon.gunicorn_conf) turns it on with its threads.
COSTMON_INGEST_GROUP_COMMIT = env_bool("COSTMON_INGEST_GROUP_COMMIT", False)
# Committer threads a process runs for it (usage.grouping); more start the next group while
# one waits for PostgreSQL and Redis (for a database across a network), at the cost of
# smaller groups.
COSTMON_INGEST_COMMITTERS = env_int("COSTMON_INGEST_COMMITTERS", 1, minimum=1)
# A small group's transaction goes to PostgreSQL in one write (usage.transactions._OneWrite, an
# override of psycopg's pipeline internals); off: each statement as psycopg sends it.
COSTMON_INGEST_ONE_WRITE = env_bool("COSTMON_INGEST_ONE_WRITE", True)
# How far ahead of the server's clock an event's occurred_at may be (client clock skew).
COSTMON_FUTURE_SKEW_SECONDS = env_int("COSTMON_FUTURE_SKEW_SECONDS", 3600, minimum=0)
# OpenTelemetry ingest (POST /v1/traces), see docs/opentelemetry.md. Attributes are looked up on
# the span, then on its resource; the first one present wins.
COSTMON_OTLP_END_USER_ATTRIBUTES = env_list(
    "COSTMON_OTLP_END_USER_ATTRIBUTES", ["user.id", "enduser.id", "gen_ai.request.user"]
)
COSTMON_OTLP_SESSION_ATTRIBUTES = env_list(
    "COSTMON_OTLP_SESSION_ATTRIBUTES", ["session.id", "gen_ai.conversation.id"]
)
# Tags as `tag=attribute` (a bare attribute is its own tag name).
COSTMON_OTLP_TAG_ATTRIBUTES = env_list(
    "COSTMON_OTLP_TAG_ATTRIBUTES",
    ["service=service.name", "environment=deployment.environment.name"],
)
for _entry in COSTMON_OTLP_TAG_ATTRIBUTES:
    _tag, _sep, _attribute = _entry.partition("=")
    if (_sep and not (_tag.strip() and _attribute.strip())) or len(_tag.strip()) > 64:
        raise ImproperlyConfigured(
            f"COSTMON_OTLP_TAG_ATTRIBUTES entries are tag=attribute (tag at most 64 characters), got {_entry!r}"
        )
# Agent and tool spans wrap model calls that have spans of their own: counting both counts twice.
COSTMON_OTLP_IGNORED_OPERATIONS = env_list(
    "COSTMON_OTLP_IGNORED_OPERATIONS",
    ["invoke_agent", "create_agent", "execute_tool", "invoke_workflow"],
)
# Raw events older than this many days are deleted nightly (rollups, and so every total, stay);
# 0 keeps them forever.
COSTMON_RETENTION_DAYS = env_int("COSTMON_RETENTION_DAYS", 400, minimum=0)
# Where raw usage events are kept (README, "Scaling out"): unset, PostgreSQL;
# `clickhouse://host:9000/costmon`, ClickHouse (native protocol, 18.16 or later), and
# COSTMON_CLICKHOUSE_SHARDS further `host:port` shards, tenants spread by id over all of them.
COSTMON_EVENT_STORE_URL = env_str("COSTMON_EVENT_STORE_URL") or ""
COSTMON_CLICKHOUSE_SHARDS = env_str("COSTMON_CLICKHOUSE_SHARDS") or ""
# Small inserts (single events) through ClickHouse's Buffer table: far fewer parts, at the cost
# of losing what the buffer holds (2 s at most) if ClickHouse stops abnormally (README, "Buffer").
COSTMON_CLICKHOUSE_BUFFER = env_bool("COSTMON_CLICKHOUSE_BUFFER", False)
# How many recent UTC hours the ClickHouse store's reconcile compares with PostgreSQL's rollups
# (README, "Scaling out": a batch whose PostgreSQL COMMIT was lost after ClickHouse took it).
COSTMON_CLICKHOUSE_RECONCILE_HOURS = env_int("COSTMON_CLICKHOUSE_RECONCILE_HOURS", 6, minimum=1)
# How long a pre-flight check's reservation holds budget before it expires unsettled.
COSTMON_RESERVATION_SECONDS = env_int("COSTMON_RESERVATION_SECONDS", 300, minimum=1)
# How long a looked-up price catalog stays in a process before it is read again.
COSTMON_CATALOG_TTL_SECONDS = env_int("COSTMON_CATALOG_TTL_SECONDS", 30, minimum=0)
# A public price list to sync the global catalog from every day (where the deployment has
# internet); empty: no sync, the bundled catalog and staff's edits are the catalog.
COSTMON_PRICES_URL = env_str("COSTMON_PRICES_URL", "") or ""
COSTMON_PRICES_FORMAT = env_str("COSTMON_PRICES_FORMAT", "litellm") or "litellm"
if COSTMON_PRICES_FORMAT not in ("costmon", "litellm", "models.dev"):
    raise ImproperlyConfigured(
        f"COSTMON_PRICES_FORMAT must be costmon, litellm or models.dev, got {COSTMON_PRICES_FORMAT!r}"
    )
if COSTMON_PRICES_URL and not COSTMON_PRICES_URL.startswith(("https://", "http://")):
    raise ImproperlyConfigured(
        f"COSTMON_PRICES_URL must be an http(s) URL, got {COSTMON_PRICES_URL!r}"
    )
# With Redis, a process trusts its copy of a tenant's prices and budget settings, and of the API
# keys it has seen, for this long before it asks Redis whether they changed: changes (and key
# revocations) reach every process within this time, and the pre-flight check saves three round
# trips.
COSTMON_SHARED_RECHECK_MS = env_int("COSTMON_SHARED_RECHECK_MS", 1000, minimum=0)
# The dashboard and the metrics API keep the sums of days before today in the shared cache and
# sum only today per request (usage.settled). Needs a cache every process shares: on with Redis.
COSTMON_DASHBOARD_CACHE = env_bool("COSTMON_DASHBOARD_CACHE", bool(REDIS_URL))
# When a tenant's kept sums are forgotten (a re-price, a bulk load, a late event), a Celery task
# computes those of the overview's standard views again at once, before anyone asks
# (costmon.web.dashboard.warmup). Only with the shared cache above.
COSTMON_DASHBOARD_WARMUP = env_bool("COSTMON_DASHBOARD_WARMUP", True)
# Outbound webhooks to private or loopback addresses are refused unless this is on (tests).
COSTMON_ALLOW_PRIVATE_WEBHOOKS = env_bool("COSTMON_ALLOW_PRIVATE_WEBHOOKS", False)
# GET /metrics for Prometheus (docs/prometheus.md) answers only to
# `Authorization: Bearer <COSTMON_METRICS_TOKEN>`; while the token is empty it is off (404).
COSTMON_METRICS_TOKEN = env_str("COSTMON_METRICS_TOKEN", "") or ""
if COSTMON_METRICS_TOKEN and len(COSTMON_METRICS_TOKEN) < 16:
    raise ImproperlyConfigured(
        "COSTMON_METRICS_TOKEN must be at least 16 characters (generate one with "
        "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
    )
# Each web process keeps its request metrics in files here, summed at every scrape; the folder
# is emptied when the server starts (gunicorn -c python:costmon.gunicorn_conf, quickstart).
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR") or (
    str(VAR_DIR / "prometheus") if COSTMON_METRICS_TOKEN else ""
)
if PROMETHEUS_MULTIPROC_DIR:
    try:
        Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImproperlyConfigured(
            f"PROMETHEUS_MULTIPROC_DIR {PROMETHEUS_MULTIPROC_DIR!r} cannot be created ({exc}); "
            "point it at a writable folder"
        ) from None
    # prometheus_client reads the variable itself, before its first metric is made.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_MULTIPROC_DIR
else:
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # an empty value would mean the cwd
DEFAULT_FROM_EMAIL = (
    env_str("DEFAULT_FROM_EMAIL", "costmon <costmon@localhost>") or "costmon@localhost"
)
# The embedded default has no mail server: alert emails are written to var/mail/ instead.
EMAIL_BACKEND = env_str("EMAIL_BACKEND") or (
    "django.core.mail.backends.filebased.EmailBackend"
    if EMBEDDED
    else "django.core.mail.backends.smtp.EmailBackend"
)
EMAIL_FILE_PATH = str(VAR_DIR / "mail")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost") or "localhost"
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "") or ""
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "") or ""
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "costmon.core.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # UTF-8 JSON only, nesting and characters checked (costmon/inputs.py).
    "DEFAULT_PARSER_CLASSES": ["costmon.core.inputs.JsonBodyParser"],
    "DEFAULT_SCHEMA_CLASS": "costmon.core.openapi.CostmonAutoSchema",
    "EXCEPTION_HANDLER": "costmon.core.exceptions.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
    # ?format=csv is handled by the views that export, not by content negotiation.
    "URL_FORMAT_OVERRIDE": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "costmon API",
    "DESCRIPTION": "Report LLM usage, read costs back, and ask before spending.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI from our own static files: the product never needs the internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # JSON Schema as it is (nullable types as ["string", "null"]), which fuzzers and
    # generated clients read exactly.
    "OAS_VERSION": "3.1.0",
    # Enums stay inline (each field says its values); costmon's character rules as patterns.
    "POSTPROCESSING_HOOKS": ["costmon.core.openapi.patterns_hook"],
    # Object ids in paths (costmon.core.converters.IdConverter).
    "PATH_CONVERTER_OVERRIDES": {
        "id": {"type": "integer", "minimum": 1, "maximum": 10**18 - 1},
    },
}

CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
else:
    # The embedded default needs no broker server: queues are folders under var/, and
    # `manage.py quickstart` runs a worker (with beat) beside the web server.
    _broker = VAR_DIR / "broker"
    for _folder in ("queue", "processed", "control"):
        (_broker / _folder).mkdir(parents=True, exist_ok=True)
    # The host is named, though the folders do not use it, or kombu warns that it falls back
    # to "localhost" each time a process connects.
    CELERY_BROKER_URL = "filesystem://localhost/"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker / "queue"),
        "data_folder_out": str(_broker / "queue"),
        "processed_folder": str(_broker / "processed"),
        "control_folder": str(_broker / "control"),
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)

LOG_LEVEL = (env_str("LOG_LEVEL", "WARNING") or "WARNING").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(
        f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {LOG_LEVEL!r}"
    )
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "structured": {"()": "costmon.core.logging.structured_formatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}

from costmon.core.logging import configure_structlog  # noqa: E402

configure_structlog()
