from __future__ import annotations

import io
import time
from typing import Any

import pytest
import time_machine
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.utils import timezone

from costmon.core import tenancy
from costmon.core.cache import cache_delete
from costmon.core.keys import KeyPrincipal, auth_cache_key, hash_secret, principal_for_secret
from costmon.core.models import ApiKey, Tenant
from costmon.core.services import api_key_create, api_key_revoke
from tests.helpers import event, post_usage, requires_redis

pytestmark = pytest.mark.django_db


def run(*args: str) -> list[str]:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip().splitlines()


def test_create_tenant_and_key_commands_give_a_working_key_on_the_last_line(prices):
    run("create_tenant", "initech", "--name", "Initech", "--timezone", "Europe/Paris")
    tenant = Tenant.objects.get(slug="initech")
    assert (tenant.name, tenant.timezone) == ("Initech", "Europe/Paris")

    secret = run("create_api_key", "initech", "--scopes", "ingest,read")[-1]
    with tenancy.unscoped():
        key = ApiKey.objects.for_tenant(tenant).get()
    assert secret.startswith(key.prefix + "_")
    assert key.secret_hash == hash_secret(secret)
    assert secret not in key.secret_hash and key.scopes == ["ingest", "read"]

    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert post_usage(client, event()).status_code == 201
    assert client.get("/api/v1/usage/").json()["results"][0]["cost_usd"] == "0.00135"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create_tenant", "Bad Slug"), "lowercase letters"),
        (("create_tenant", "ok", "--timezone", "Mars/Olympus"), "Unknown time zone"),
        (("create_api_key", "missing"), "No tenant 'missing'"),
        (("create_api_key", "acme", "--scopes", "ingest,superpower"), "Unknown scope superpower"),
    ],
)
def test_commands_refuse_bad_input_with_a_clear_message(acme, args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)


def test_a_duplicate_tenant_slug_is_refused(acme):
    with pytest.raises(CommandError, match="already exists"):
        run("create_tenant", "acme")


def test_the_last_used_time_is_recorded_once_a_minute(acme, prices):
    from rest_framework.test import APIClient

    secret = run("create_api_key", "acme", "--scopes", "ingest")[-1]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    with tenancy.unscoped():
        key = ApiKey.objects.for_tenant(acme).get()
    assert key.last_used_at is None
    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        post_usage(client, event())
    with tenancy.unscoped():
        key.refresh_from_db()
    assert key.last_used_at.isoformat() == "2026-11-21T12:00:00+00:00"


def test_a_read_key_cannot_ingest_and_an_ingest_key_cannot_read(acme):
    from rest_framework.test import APIClient

    ingest = APIClient()
    ingest.credentials(
        HTTP_AUTHORIZATION=f"Bearer {run('create_api_key', 'acme', '--scopes', 'ingest')[-1]}"
    )
    response = ingest.get("/api/v1/metrics/")
    assert response.status_code == 403
    assert "'read' scope" in response.json()["detail"]


def _key_client(secret: str) -> Any:
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@requires_redis
def test_a_key_revoked_by_another_process_is_refused_once_the_recheck_window_passes(
    acme, outsider, settings
):
    # Each process trusts the keys it has seen for COSTMON_SHARED_RECHECK_MS, then asks Redis.
    settings.COSTMON_SHARED_RECHECK_MS = 1000
    issued = api_key_create(tenant=acme, scopes="read")
    client = _key_client(issued.secret)
    assert client.get("/api/v1/usage/").status_code == 200
    # What api_key_revoke does in another process: the row and the shared cache change, this
    # process's copy does not.
    with tenancy.unscoped():
        ApiKey.objects.unscoped().filter(pk=issued.api_key.pk).update(revoked_at=timezone.now())
    cache_delete(auth_cache_key(issued.api_key.secret_hash))
    assert client.get("/api/v1/usage/").status_code == 200  # within the window
    time.sleep(1.05)
    refused = client.get("/api/v1/usage/")
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]
    # Another tenant's key, in the same window, is untouched.
    outsider_client = _key_client(api_key_create(tenant=outsider, scopes="read").secret)
    assert outsider_client.get("/api/v1/usage/").status_code == 200


def test_revoking_a_key_refuses_it_at_once_in_the_revoking_process(acme, settings):
    settings.COSTMON_SHARED_RECHECK_MS = 60_000
    issued = api_key_create(tenant=acme, scopes="read")
    client = _key_client(issued.secret)
    assert client.get("/api/v1/usage/").status_code == 200
    api_key_revoke(api_key=issued.api_key)
    refused = client.get("/api/v1/usage/")
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]


@requires_redis
def test_a_known_key_is_checked_without_sql_or_redis_inside_the_window(
    acme, settings, django_assert_num_queries
):
    settings.COSTMON_SHARED_RECHECK_MS = 60_000
    issued = api_key_create(tenant=acme, scopes="ingest")
    principal_for_secret(issued.secret)  # looked up once, then kept
    cache.clear()  # Redis forgets the key: this process still trusts it until the window ends
    with django_assert_num_queries(0):
        principal = principal_for_secret(issued.secret)
    assert isinstance(principal, KeyPrincipal)
    assert (principal.key_id, principal.tenant.slug) == (issued.api_key.pk, "acme")
