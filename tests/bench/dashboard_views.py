"""Server time of every overview view (stacked by provider, model, operation, end user and a
tag; 30 and 90 days) on one tenant, in process through Django's test client.

Seed a tenant of the benchmark set's shape first, into a scratch database:

    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/costmon_dash SECRET_KEY=bench
    .venv/bin/python manage.py migrate && .venv/bin/python manage.py load_prices
    .venv/bin/python manage.py seed_demo --events 500000 --users 5000 --days 90
    .venv/bin/python tests/bench/dashboard_views.py

Prints the first view and the median of the next three for each (medians over `--rounds`).
The sums of past days are kept in the shared cache (usage.settled) and shared
by the views of a period; `--cold` forgets them before each view (bumps the tenant's
generation, as a re-price or a bulk load does), so its first request sums everything, and
first loads one page to leave process start-up out. `--late` forgets only the recent days'
sums, as a late event for yesterday does. `--clear` empties the whole cache instead, which
also makes the process reload the price catalog (the recommendations read it): that is not
what a late event costs.

`--warm-up` forgets them as `--cold` does, then runs the background warm-up that a bump
queues (costmon.web.dashboard.warmup) in this process and reports how long it took: the
views after it are what a person sees once the warm-up has finished.

The process starts as a web worker does (`costmon.wsgi`: views imported, plotly set up, the
start-up objects frozen out of the garbage collector's sight).

`--cpu` also reports the CPU time a view costs (this process's and its PostgreSQL backend's,
read from /proc, 10 ms ticks), which a loaded machine does not inflate as it does wall time;
it runs the queries without parallel workers, whose CPU it could not see.
"""

from __future__ import annotations

import argparse
import importlib
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
    parser.add_argument("--tag", default="team", help="the tag name to stack by")
    parser.add_argument("--repeat", type=int, default=3, help="views after the first")
    parser.add_argument("--rounds", type=int, default=1, help="first views (forgetting each time)")
    parser.add_argument("--cold", action="store_true", help="forget the kept sums before each view")
    parser.add_argument("--clear", action="store_true", help="empty the whole cache before each")
    parser.add_argument(
        "--warm-up", action="store_true", help="forget, then run the warm-up before each"
    )
    parser.add_argument("--cpu", action="store_true", help="report CPU time too (serial plans)")
    parser.add_argument(
        "--late",
        action="store_true",
        help="forget the recent days' sums (a late event) before each",
    )
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from django.test import Client
    from django.utils import timezone

    from costmon.core.models import Tenant
    from costmon.core.periods import tenant_zone
    from costmon.core.tenancy import unscoped
    from costmon.web.dashboard.warmup import dashboard_sums_warm
    from usage import settled

    importlib.import_module("costmon.wsgi")  # a web worker's start-up (warm-up, gc.freeze)
    settings.COSTMON_DASHBOARD_WARMUP = False  # no worker here: `--warm-up` runs it in process

    with unscoped():
        tenant = Tenant.objects.get(slug=args.tenant)
    user_model = get_user_model()
    user = user_model.objects.filter(username="bench-dashboard").first()
    if user is None:
        user = user_model.objects.create_superuser("bench-dashboard", "bench@example.test", None)
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)

    cpu_ms = cpu_clock(serial_plans=args.cpu)

    if args.cold or args.clear or args.late or args.warm_up:
        client.get(f"/t/{tenant.slug}/?period=7d")  # imports, templates, the catalog
    today = timezone.now().astimezone(tenant_zone(tenant)).date()
    periods = {
        "30 days": "period=30d",
        "90 days": f"period=custom&start={today - timedelta(days=89)}&end={today}",
    }
    for label, query in periods.items():
        for by in ("provider", "model", "operation", "end_user", f"tag:{args.tag}"):
            url = f"/t/{tenant.slug}/?{query}&by={by}"
            firsts: list[float] = []
            times: list[float] = []
            cpu_firsts: list[float] = []
            cpu_times: list[float] = []
            warm_ups: list[float] = []
            for _ in range(args.rounds):
                if args.clear:
                    cache.clear()  # the bench's own Redis database (REDIS_URL)
                elif args.cold:
                    settled.bump(tenant.pk)
                elif args.warm_up:
                    settled.bump(tenant.pk)
                    started = time.perf_counter()
                    dashboard_sums_warm(tenant_id=tenant.pk)
                    warm_ups.append((time.perf_counter() - started) * 1000)
                elif args.late:
                    settled.bump_recent(tenant.pk)
                for n in range(args.repeat + 1):
                    started, cpu = time.perf_counter(), cpu_ms()
                    response = client.get(url)
                    (times if n else firsts).append((time.perf_counter() - started) * 1000)
                    (cpu_times if n else cpu_firsts).append(cpu_ms() - cpu)
                    if response.status_code != 200:
                        raise SystemExit(f"{url} answered {response.status_code}")
            cpu_note = (
                f"; CPU first {statistics.median(cpu_firsts):4.0f} ms, "
                f"then {statistics.median(cpu_times):4.0f} ms"
                if args.cpu
                else ""
            )
            if warm_ups:
                cpu_note += f"; warm-up {statistics.median(warm_ups):5.0f} ms"
            print(
                f"{label}, stacked by {by:<12} first {statistics.median(firsts):6.0f} ms, "
                f"then {statistics.median(times):6.0f} ms (medians of {len(firsts)} and "
                f"{len(times)}){cpu_note}",
                flush=True,
            )


if __name__ == "__main__":
    main()
