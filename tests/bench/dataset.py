"""The benchmark's data set: the scratch database, the seeded tenants, and the bench tenant
with its budgets, rate limits and keys (tests/bench/run.py)."""

from __future__ import annotations

import subprocess
import time
from decimal import Decimal
from typing import Any

from tests.bench.harness import PG_ADMIN, PYTHON, ROOT, Context, Scale, say, scratch_database
from tests.bench.ratios import measure_ratios


def drop_database(name: str) -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prepare_database(name: str, scale: Scale, *, reuse: bool) -> bool:
    """Make the scratch database; True when it must be seeded."""
    marker = f"{scale.tenants}x{scale.events}x{scale.users}x{scale.days}"
    return scratch_database(name, marker, reuse=reuse)


def setup_data(scale: Scale, *, fresh: bool, jobs: int, ratios: bool = True) -> Context:
    """The data set (seeded by `seed_demo` through the configured event store: COPY into
    PostgreSQL, or the ingest service in 1,000-event batches into another store), and the bench
    tenant; `ratios` also measures the in-process ratios (PostgreSQL only)."""
    import redis
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    from budgets import config, counters
    from budgets.models import RateLimit
    from budgets.services import budget_create
    from costmon.core.models import Tenant
    from costmon.core.services import api_key_create, membership_add, tenant_create
    from costmon.core.tenancy import unscoped
    from usage.models import UsageEvent

    seed_seconds = None
    say("migrating")
    call_command("migrate", verbosity=0)
    if fresh:
        redis.Redis.from_url(settings.REDIS_URL).flushdb()
        total = scale.events * scale.tenants
        say(f"seeding {total:,} events: {scale.tenants} tenants x {scale.events:,} events")
        started = time.perf_counter()
        subprocess.run(
            [
                PYTHON,
                "manage.py",
                "seed_demo",
                "--events",
                str(scale.events),
                "--tenants",
                str(scale.tenants),
                "--users",
                str(scale.users),
                "--days",
                str(scale.days),
                "--jobs",
                str(jobs),
            ],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seed_seconds = time.perf_counter() - started
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            name = settings.DATABASES["default"]["NAME"]
            marker = f"{scale.tenants}x{scale.events}x{scale.users}x{scale.days}"
            conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{marker}'")

    with unscoped():
        forget_earlier_runs(Tenant.objects.filter(slug__startswith="bench"))
        bench = tenant_create(slug="bench", name="Benchmark")
        budget_create(
            tenant=bench,
            data={"name": "month", "limit_usd": Decimal(10_000_000), "enforcement": "hard"},
        )
        budget_create(
            tenant=bench,
            data={
                "name": "each user",
                "scope": "every_end_user",
                "period": "day",
                "limit_usd": Decimal(100_000),
                "enforcement": "hard",
            },
        )
        budget_create(
            tenant=bench,
            data={
                "name": "gpt-4o",
                "scope": "model",
                "scope_value": "gpt-4o",
                "limit_usd": Decimal(1_000_000),
            },
        )
        RateLimit.objects.create(
            tenant=bench, scope="end_user", window_seconds=60, max_requests=10**9
        )
        RateLimit.objects.create(
            tenant=bench, scope="api_key", window_seconds=60, max_requests=10**9, max_tokens=10**15
        )
        config.bump(bench.pk)
        counters.counters_reconcile(tenant=bench)
        ingest_key = api_key_create(tenant=bench, scopes="ingest").secret
        check_key = api_key_create(tenant=bench, scopes="ingest").secret
        dataset = Tenant.objects.get(slug="demo")
        read_key = api_key_create(tenant=dataset, scopes="read").secret
        user_model = get_user_model()
        user, _ = user_model.objects.get_or_create(username="bench-viewer")
        if not user.memberships.filter(tenant=dataset).exists():  # type: ignore[attr-defined]
            membership_add(tenant=dataset, user=user, role="viewer")
        client = Client()
        client.force_login(user)
        cookie = (
            f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
        )
        events_total = UsageEvent.objects.unscoped().count()
    baseline = measure_ratios(bench) if ratios else {}
    return Context(
        bench_tenant=bench,
        ingest_key=ingest_key,
        check_key=check_key,
        read_key=read_key,
        dataset_slug=dataset.slug,
        session_cookie=cookie,
        events_total=events_total,
        seed_seconds=seed_seconds,
        baseline=baseline,
    )


def forget_earlier_runs(tenants: Any) -> None:
    """Delete an earlier run's tenant (a reused data set keeps it), and give back the space its
    events took: their dead rows would otherwise count in the storage per event measured next.
    Only the months the deleted events were in are rewritten (VACUUM FULL)."""
    from django.db.models import Max, Min

    from usage.models import UsageEvent
    from usage.partitions import month_start, next_month, partition_name

    span = UsageEvent.objects.unscoped().filter(tenant__in=tenants)
    first, last = span.aggregate(a=Min("occurred_at"), b=Max("occurred_at")).values()
    tenants.delete()
    if first is None:
        return
    import psycopg
    from django.conf import settings

    months, month = [], month_start(first)
    while month <= last:
        months.append(partition_name(month))
        month = next_month(month)
    say(f"giving back the space of an earlier run's events: {', '.join(months)}")
    database = settings.DATABASES["default"]["NAME"]
    with psycopg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{database}", autocommit=True) as conn:
        for name in months:
            conn.execute(f"VACUUM (FULL, ANALYZE) {name}")
