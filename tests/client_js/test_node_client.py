"""The TypeScript client (`clients/js`): its Node tests, run against a real costmon.

pytest starts costmon (`live_server`, on PostgreSQL and Redis), makes the tenants, API keys,
prices and a rate limit the Node tests rely on, then installs the npm dependencies (when
`node_modules` is missing or older than `package-lock.json`), builds the package, type-checks
it, and runs `node --test` with the server's URL and keys in the environment. The Node tests use
the real `openai` and `@anthropic-ai/sdk` packages against a fake provider of their own and
assert exact costs through costmon's API; this test then checks the database behind them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from budgets.config import bump
from budgets.counters import counters_reconcile
from budgets.models import RateLimit
from costmon.core.models import Tenant
from costmon.core.services import api_key_create, tenant_create
from tests.client.prices import add_tier_prices
from usage import catalog
from usage.models import ModelPrice, UsageEvent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("unscoped"),  # set-up and reads; the Node client goes through HTTP
    pytest.mark.skipif(
        os.environ.get("COSTMON_TEST_DB") == "sqlite",
        reason="the Node client's tests need PostgreSQL and Redis: they run in the PostgreSQL pass",
    ),
]

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "js"
STAMP = PACKAGE / "node_modules" / ".costmon-lock-sha256"
NODE_TIMEOUT = 600  # seconds; the suite takes well under a minute

# provider, model, input, output, cached input, cache write (USD per million tokens), and the
# snapshots the row also prices (the fake provider answers with dated names, as the real ones
# do): the figures the Node tests' exact costs are computed from, with the Python client tests'
# rows for tiers, one-hour cache writes, audio, images and web searches (tests/client/prices.py).
PRICES = [
    ("openai", "gpt-4o-mini", "0.15", "0.60", "0.075", None, "gpt-4o-mini-20??-??-??"),
    ("openai", "o4-mini", "1.10", "4.40", "0.275", None, "o4-mini-20??-??-??"),
    ("openai", "text-embedding-3-large", "0.13", "0", None, None, ""),
    ("anthropic", "claude-haiku-4-5", "1", "5", "0.10", "1.25", "claude-haiku-4-5-20??????"),
]
RATE_LIMITED_USER = "rate-limited-user"  # one check a minute (test/check.test.mjs)


def _run(args: list[str], *, timeout: int, env: dict[str, str] | None = None) -> str:
    """Run a command in the package's folder; fail the test with its output when it fails."""
    try:
        done = subprocess.run(  # noqa: S603 - npm and node with fixed arguments
            args,
            cwd=PACKAGE,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout
        pytest.fail(f"{' '.join(args)} took more than {timeout} s:\n{(output or '')[-20000:]}")
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({done.returncode}):\n{output[-20000:]}")
    return output


def _lock_digest() -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((PACKAGE / name).read_bytes())
    return digest.hexdigest()


def _prepare_package() -> None:
    """npm ci when node_modules is missing or stale, then build and type-check."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "Node.js 18+ and npm are needed for the TypeScript client's tests: "
            "apt-get install nodejs npm"
        )
    version = _run([node, "--version"], timeout=30).strip()
    major = int(re.match(r"v(\d+)", version).group(1))  # type: ignore[union-attr]
    if major < 18:
        pytest.fail(f"the TypeScript client needs Node.js 18 or later, not {version}")
    digest = _lock_digest()
    if not STAMP.exists() or STAMP.read_text().strip() != digest:
        _run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], timeout=900)
        STAMP.write_text(digest + "\n")
    _run([npm, "run", "--silent", "build"], timeout=300)
    _run([npm, "run", "--silent", "typecheck"], timeout=300)


def _key(tenant: Tenant, scopes: str) -> str:
    return api_key_create(tenant=tenant, scopes=scopes).secret


@pytest.fixture
def node_prices(db: None) -> None:
    for provider, model, i, o, c, w, pattern in PRICES:
        ModelPrice.objects.create(
            provider=provider,
            model=model,
            match_pattern=pattern,
            effective_from=datetime(2024, 1, 1, tzinfo=UTC),
            input_per_mtok=Decimal(i),
            output_per_mtok=Decimal(o),
            cached_input_per_mtok=Decimal(c) if c else None,
            cache_write_per_mtok=Decimal(w) if w else None,
        )
    add_tier_prices()
    catalog.clear_local()


def test_the_node_client_passes_its_tests_against_a_real_costmon(
    acme: Tenant, outsider: Tenant, node_prices: None, live_server: Any
) -> None:
    _prepare_package()
    # The pre-flight check's tests change budgets and trip the emergency stop: a tenant of
    # their own keeps that away from the usage tests.
    checks = tenant_create(slug="initech", name="Initech (checks)")
    RateLimit.objects.create(
        tenant=checks, scope="end_user", value=RATE_LIMITED_USER, window_seconds=60, max_requests=1
    )
    bump(checks.pk)
    for tenant in (acme, checks):
        counters_reconcile(tenant=tenant)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("COSTMON_")},
        "COSTMON_TEST_URL": live_server.url,
        "COSTMON_TEST_KEY": _key(acme, "ingest"),
        "COSTMON_TEST_READ_KEY": _key(acme, "read"),
        "COSTMON_TEST_OUTSIDER_KEY": _key(outsider, "ingest,read"),
        "COSTMON_TEST_CHECK_KEY": _key(checks, "ingest"),
        "COSTMON_TEST_CHECK_ADMIN_KEY": _key(checks, "read,admin"),
        "COSTMON_TEST_RATE_LIMITED_USER": RATE_LIMITED_USER,
    }

    # COSTMON_JS_TESTS="test/openai.test.mjs ..." runs some files only, while working on them.
    files = os.environ.get("COSTMON_JS_TESTS", "").split() or ["test/"]
    output = _run(
        ["node", "--test", "--test-concurrency=1", "--test-reporter=spec", *files],
        timeout=NODE_TIMEOUT,
        env=env,
    )

    # node's spec reporter ends with lines such as "<U+2139> pass 41".
    summary = dict(re.findall("^\u2139 (tests|pass|fail|skipped|todo) (\\d+)$", output, re.M))
    assert summary.get("fail") == "0" and int(summary.get("pass", "0")) > 0, output[-5000:]
    assert summary.get("skipped") == "0" and summary.get("todo") == "0", output[-5000:]
    print(output)  # pytest -s shows the Node run, with the measured overhead
    if files != ["test/"]:
        return
    assert int(summary["pass"]) >= 50, output[-5000:]
    # Behind the API: what each tenant's key reported is that tenant's alone.
    acme_events = UsageEvent.objects.for_tenant(acme)
    assert acme_events.count() > 30
    outsider_ids = set(UsageEvent.objects.for_tenant(outsider).values_list("event_id", flat=True))
    assert outsider_ids and outsider_ids.isdisjoint(acme_events.values_list("event_id", flat=True))
