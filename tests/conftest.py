"""Shared fixtures: personas (owner, viewer, outsider), their API keys, and a small catalog.

Every suite that touches tenant data gets `outsider`: a second tenant with its own data that
must never show up in `acme`'s answers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from rest_framework.test import APIClient

from costmon.core import tenancy
from costmon.core.models import Membership, Tenant
from costmon.core.services import api_key_create, membership_add, tenant_create
from tests.factories import UserFactory
from usage import catalog
from usage.models import ModelPrice
from usage.storage import events_partitions_ensure, events_partitions_forget

PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
REDIS_START = (
    "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no"
)


def _check_services() -> str | None:
    """One line saying what is down and how to start it, or None."""
    if os.environ.get("COSTMON_TEST_DB") == "sqlite":
        return None
    import psycopg
    import redis
    from django.conf import settings

    db = settings.DATABASES["default"]
    try:
        with psycopg.connect(
            host=db["HOST"],
            port=db["PORT"] or 5432,
            user=db["USER"],
            password=db["PASSWORD"] or None,
            dbname="postgres",
            connect_timeout=3,
        ) as conn:
            role = os.environ.get("DATABASE_ROLE")
            if role:
                # The ordinary role the app acts as; the login role must be able to SET ROLE to it.
                conn.execute(
                    f"DO $$ BEGIN CREATE ROLE {role} NOLOGIN CREATEDB; "
                    "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
                )
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0]
        return f"PostgreSQL is not reachable at {db['HOST']}:{db['PORT'] or 5432} ({first}); start it with: {PG_START}"
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        return (
            f"Redis is not reachable at {settings.REDIS_URL} ({exc}); start it with: {REDIS_START}"
        )
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    problem = _check_services()
    if problem:
        # One line, no traceback: the person running the tests needs only this.
        sys.stderr.write(problem + "\n")
        sys.stderr.flush()
        os._exit(3)


# The months whose events partitions the test database has (PostgreSQL), as beat keeps them
# ahead in production: tests of on-demand creation use months outside these.
TEST_PARTITION_MONTHS = [
    datetime(y, m, 1, tzinfo=UTC) for y in (2025, 2026, 2027) for m in range(1, 13)
]


def restore_test_partitions() -> None:
    """Create the test database's events partitions (after a test that rebuilt the table)."""
    events_partitions_forget()
    with transaction.atomic():
        events_partitions_ensure(TEST_PARTITION_MONTHS)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> None:
    with django_db_blocker.unblock():
        restore_test_partitions()


@pytest.fixture(autouse=True)
def _clean_state(request: pytest.FixtureRequest, settings: Any) -> Iterator[None]:
    """Each test starts with empty caches and, as production code does, with no tenant context:
    a test that needs one asks for it (`unscoped`, `in_acme`, or a `with` block)."""
    from django.core.cache import cache

    from budgets import config as budgets_config
    from budgets import redis as budgets_redis
    from costmon.core import keys
    from costmon.web.dashboard import warmup
    from usage import dimensions as usage_dimensions
    from usage import tagsets as usage_tagsets

    cache.clear()  # also empties the Redis database the counters live in
    catalog.clear_local()
    keys.clear_local()
    usage_dimensions.forget_known_dimensions()
    usage_tagsets.forget_known_tag_sets()
    budgets_config.clear_local()
    budgets_redis.reset_breaker()
    warmup.forget_viewed_local()
    tenancy.forget_rls_state(connection)
    with tenancy.no_tenant():
        yield
    tenancy.forget_rls_state(connection)


# --- event stores ----------------------------------------------------------------------------


def _clickhouse_unavailable() -> str | None:
    """Why the ClickHouse event store's tests cannot run in this pass, or None when they can."""
    from tests import clickhouse

    if os.environ.get("COSTMON_TEST_DB") == "sqlite":
        return "the ClickHouse event store needs PostgreSQL as the main database"
    if clickhouse.binary() is None:
        return (
            "clickhouse-server is not installed (apt-get install clickhouse-server); "
            "the ClickHouse event store's tests need it"
        )
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `clickhouse` are skipped, with the reason, where ClickHouse cannot run: in
    the SQLite pass (the PostgreSQL pass runs them) and where clickhouse-server is missing."""
    unavailable = _clickhouse_unavailable()
    skip = pytest.mark.skipif(unavailable is not None, reason=unavailable or "")
    for item in items:
        if item.get_closest_marker("clickhouse") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def clickhouse_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Any]]:
    """Two clickhouse-server processes of this session, on free ports (two shards, or the first
    alone as a single node)."""
    from tests import clickhouse

    if _clickhouse_unavailable() is not None:
        pytest.fail(
            "a test uses ClickHouse without the `clickhouse` mark, which skips it where "
            "ClickHouse cannot run: mark it"
        )
    servers: list[Any] = []
    try:
        for index in range(2):
            servers.append(clickhouse.Server(tmp_path_factory.mktemp(f"clickhouse{index}")))
        yield servers
    finally:
        for server in servers:
            server.stop()


def _truncate(store: Any) -> None:
    for index in range(len(store.shards)):
        store.connections.execute(index, "OPTIMIZE TABLE usage_events_buffer")  # flushes it
        store.connections.execute(index, "OPTIMIZE TABLE usage_rollups_hourly_buffer")
        store.connections.execute(index, "TRUNCATE TABLE usage_events")
        store.connections.execute(index, "TRUNCATE TABLE usage_rollups_hourly")


# The event stores the behaviour tests of raw events run against: PostgreSQL (the default),
# ClickHouse as a single node, and ClickHouse as two shards (tenants spread by id over both).
EVENT_STORES = [
    "pg",
    pytest.param("ch", marks=pytest.mark.clickhouse),
    pytest.param("ch2", marks=pytest.mark.clickhouse),
]


@pytest.fixture(params=EVENT_STORES)
def store(request: pytest.FixtureRequest, settings: Any) -> Iterator[Any]:
    """The event store a test runs against, configured as a deployment would be."""
    from usage.eventstore import current

    if request.param == "pg":
        settings.COSTMON_EVENT_STORE_URL = ""
        current.forget()
        yield current.event_store()
        current.forget()
        return
    servers = request.getfixturevalue("clickhouse_servers")
    settings.COSTMON_EVENT_STORE_URL = f"clickhouse://127.0.0.1:{servers[0].port}/costmon_test"
    settings.COSTMON_CLICKHOUSE_SHARDS = (
        f"127.0.0.1:{servers[1].port}" if request.param == "ch2" else ""
    )
    current.forget()
    chosen = current.event_store()
    chosen.create_schema()
    _truncate(chosen)
    yield chosen
    _truncate(chosen)
    chosen.connections.close()
    current.forget()


@pytest.fixture
def unscoped() -> Iterator[None]:
    """The test body reads and writes across tenants, as staff code and set-up do."""
    with tenancy.unscoped():
        yield


@pytest.fixture
def in_acme(acme: Tenant) -> Iterator[Tenant]:
    """The test body runs in acme's tenant context, as a request or task for acme would."""
    with tenancy.tenant_context(acme):
        yield acme


@pytest.fixture
def acme(db: None) -> Tenant:
    return tenant_create(slug="acme", name="Acme Corp")


@pytest.fixture
def outsider(db: None) -> Tenant:
    return tenant_create(slug="globex", name="Globex (outsider)")


@pytest.fixture
def owner(acme: Tenant) -> Any:
    user = UserFactory(username="alice")
    membership_add(tenant=acme, user=user, role=Membership.Role.OWNER)
    return user


@pytest.fixture
def viewer(acme: Tenant) -> Any:
    user = UserFactory(username="bob")
    membership_add(tenant=acme, user=user, role=Membership.Role.VIEWER)
    return user


@pytest.fixture
def outsider_user(outsider: Tenant) -> Any:
    user = UserFactory(username="charlie")
    membership_add(tenant=outsider, user=user, role=Membership.Role.OWNER)
    return user


def _client(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def ingest_client(acme: Tenant) -> APIClient:
    return _client(api_key_create(tenant=acme, scopes="ingest").secret)


@pytest.fixture
def read_client(acme: Tenant) -> APIClient:
    return _client(api_key_create(tenant=acme, scopes="read").secret)


@pytest.fixture
def admin_client_key(acme: Tenant) -> APIClient:
    return _client(api_key_create(tenant=acme, scopes="ingest,read,admin").secret)


@pytest.fixture
def outsider_client(outsider: Tenant) -> APIClient:
    return _client(api_key_create(tenant=outsider, scopes="ingest,read,admin").secret)


PRICES = [
    # provider, model, input, output, cached input, cache write, snapshots priced the same
    ("anthropic", "claude-haiku-4-5", "1", "5", "0.10", "1.25", "claude-haiku-4-5-20??????"),
    ("openai", "text-embedding-3-large", "0.13", "0", None, None, ""),
    ("openai", "gpt-4o-mini", "0.15", "0.60", "0.075", None, "gpt-4o-mini-20??-??-??"),
    ("openai", "gpt-4o", "2.50", "10", "1.25", None, "gpt-4o-20??-??-??"),
]


@pytest.fixture
def prices(db: None) -> list[ModelPrice]:
    """The list prices the tests' exact figures use, in force since 2024."""
    with tenancy.unscoped():  # global catalog rows: only unscoped code may write them
        rows = [
            ModelPrice.objects.create(
                provider=p,
                model=m,
                effective_from=datetime(2024, 1, 1, tzinfo=UTC),
                input_per_mtok=Decimal(i),
                output_per_mtok=Decimal(o),
                cached_input_per_mtok=Decimal(c) if c else None,
                cache_write_per_mtok=Decimal(w) if w else None,
                match_pattern=pattern,
            )
            for p, m, i, o, c, w, pattern in PRICES
        ]
    catalog.clear_local()
    return rows
