"""Server time of the metrics API (`GET /api/v1/metrics/`) on one seeded tenant, in process
through Django's test client: grouped by provider, model, operation, end user and a tag, over
30 and 90 days. Seed as for dashboard_views.py, then:

    .venv/bin/python tests/bench/metrics_api.py --tenant demo

Prints the first request and the median of the next `--repeat` for each (the API keeps no
sums: every request is as cold as the first, bar PostgreSQL's own buffers; since the API
keeps the sums of past days, `--cold` forgets them before each first request). `--cpu` also
reports the CPU time (this process and its PostgreSQL backend, serial plans), as
dashboard_views.py does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.bench.harness import cpu_clock  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "costmon.settings")
os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenant", default="demo", help="the seeded tenant's slug")
    parser.add_argument("--tag", default="team", help="the tag name to group by")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", help="one group_by, e.g. end_user")
    parser.add_argument("--rounds", type=int, default=1, help="first requests")
    parser.add_argument("--cold", action="store_true", help="forget kept sums before each first")
    parser.add_argument("--cpu", action="store_true", help="report CPU time too (serial plans)")
    args = parser.parse_args()

    import django

    django.setup()
    from django.test import Client
    from django.utils import timezone

    from costmon.core.models import Tenant
    from costmon.core.periods import tenant_zone
    from costmon.core.services import api_key_create
    from costmon.core.tenancy import unscoped

    with unscoped():
        tenant = Tenant.objects.get(slug=args.tenant)
        secret = api_key_create(tenant=tenant, scopes="read", name="bench-metrics").secret
    client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {secret}")
    today = timezone.now().astimezone(tenant_zone(tenant)).date()
    periods = {
        "30 days": f"start={today - timedelta(days=29)}&end={today}",
        "90 days": f"start={today - timedelta(days=89)}&end={today}",
    }
    groups = [args.only] if args.only else ["provider", "model", "operation", "end_user"]
    if not args.only:
        groups.append(f"tag:{args.tag}")
    client.get(f"/api/v1/metrics/?{periods['30 days']}")  # imports, the URL conf
    cpu_ms = cpu_clock(serial_plans=args.cpu)

    for label, query in periods.items():
        for by in groups:
            url = f"/api/v1/metrics/?{query}&group_by={by}"
            firsts: list[float] = []
            times: list[float] = []
            cpus: list[float] = []
            for _ in range(args.rounds):
                if args.cold:
                    from usage import settled  # not before the API kept sums

                    settled.bump(tenant.pk)
                for n in range(args.repeat + 1):
                    started, cpu = time.perf_counter(), cpu_ms()
                    response = client.get(url)
                    (times if n else firsts).append((time.perf_counter() - started) * 1000)
                    cpus.append(cpu_ms() - cpu)
                    if response.status_code != 200:
                        raise SystemExit(f"{url} answered {response.status_code}")
            cpu_note = f"; CPU median {statistics.median(cpus):4.0f} ms" if args.cpu else ""
            print(
                f"{label}, by {by:<12} first {statistics.median(firsts):6.0f} ms, "
                f"then {statistics.median(times or [0]):6.0f} ms (medians of {len(firsts)} and "
                f"{len(times)}){cpu_note}",
                flush=True,
            )


if __name__ == "__main__":
    main()
