"""Prepare everything and start the product: the README's first command ends here.

Before the ready block it prints one line per step of its own (database, prices, demo data,
login and keys, start); the commands it calls and the servers it starts speak only about
problems, unless --verbose. The web server and the background worker run as one process group
(costmon/management/launcher.py): any stop signal, or either of them dying, stops both.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Sum

from alerts.models import AlertRule, Channel
from alerts.services import channel_save
from budgets.models import Budget
from budgets.services import budget_create
from costmon.core.keys import hash_secret
from costmon.core.models import ApiKey, Membership, Tenant
from costmon.core.services import api_key_create, membership_add
from costmon.core.tenancy import unscoped
from costmon.web.management.launcher import ChildExited, ProcessGroup, StopRequested
from usage.event_sums import has_events
from usage.models import ModelPrice
from usage.selectors import rollups_of

DEMO_TENANT = "demo"
ADMIN_USER = "admin"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# How long the web server and the worker get to finish after a stop signal before the rest of
# their group is killed; gunicorn's own graceful timeout is a little shorter.
STOP_GRACE_SECONDS = 10
START_TIMEOUT_SECONDS = 90
KEY_SCOPES = {"key": ["ingest", "read"], "admin_key": ["read", "admin"]}
SCOPE_USES = {
    "ingest": "send usage",
    "read": "read usage, budgets and alerts",
    "admin": "manage budgets, alert rules, channels and the emergency stop",
}


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    key: str
    key_scopes: list[str]
    admin_key: str
    admin_key_scopes: list[str]
    path: Path
    created: bool  # anything new this run (a first start, or a key that was revoked)


def _static_sources(root: Path) -> str | None:
    """A fingerprint of the static files collectstatic would copy to `root` (name, size, time),
    or None where a storage has no local files to look at."""
    digest = hashlib.sha256(str(root).encode())
    try:
        for finder in finders.get_finders():
            for path, storage in finder.list(["CVS", ".*", "*~"]):  # collectstatic's ignores
                stat = os.stat(storage.path(path))
                prefix = getattr(storage, "prefix", "") or ""
                digest.update(f"{prefix}/{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    except (NotImplementedError, OSError):
        return None
    return digest.hexdigest()


class Command(BaseCommand):
    help = "Migrate, load prices, seed a demo tenant, create a login and keys, then serve."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=DEFAULT_HOST)
        parser.add_argument(
            "--port", type=int, default=int(os.environ.get("PORT", str(DEFAULT_PORT)))
        )
        parser.add_argument("--workers", type=int, default=2, help="web server processes")
        parser.add_argument(
            "--no-serve", action="store_true", help="prepare, print the login and keys, and exit"
        )
        parser.add_argument(
            "--verbose",
            action="store_true",
            help="show everything the steps and the servers print (as does -v 2)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.verbose = options["verbose"] or options["verbosity"] >= 2
        host, port = options["host"], options["port"]
        if not options["no_serve"]:
            self._check_port(host, port)
        try:
            tenant = self._prepare()
            with unscoped():
                credentials = self._credentials(tenant)
        except KeyboardInterrupt:
            raise CommandError("Interrupted; run the command again to finish.") from None
        self._say(
            f"Login and API keys: {'created' if credentials.created else 'the same as before'}, "
            f"kept in {credentials.path}."
        )
        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"  # noqa: S104
        if options["no_serve"]:
            self._say("\n".join(self._prepared_block(base, credentials, host=host, port=port)))
            return
        self._serve(host, port, options["workers"], base=base, credentials=credentials)

    # --- output -------------------------------------------------------------------------------

    def _say(self, text: str = "", ending: str = "\n") -> None:
        # The terminal may be gone (SIGHUP): stopping must go on without it.
        with contextlib.suppress(OSError):
            self.stdout.write(text, ending=ending)
            self.stdout.flush()

    @contextlib.contextmanager
    def _step(self, doing: str) -> Iterator[list[str]]:
        """One progress line: '<doing>… <outcome>', the outcome appended by the caller."""
        self._say(f"{doing}…", ending="\n" if self.verbose else " ")
        outcome: list[str] = []
        yield outcome
        self._say(" ".join(outcome) or "done.")

    def _call(self, name: str, *args: Any, **options: Any) -> None:
        """Run a management command; quietly unless --verbose, its output shown if it fails."""
        if self.verbose:
            call_command(name, *args, stdout=self.stdout, stderr=self.stderr, **options)
            return
        captured = io.StringIO()
        try:
            call_command(name, *args, stdout=captured, stderr=captured, **options)
        except Exception:
            self.stderr.write(captured.getvalue())
            raise

    # --- preparing ----------------------------------------------------------------------------

    def _prepare(self) -> Tenant:
        database = settings.DATABASES["default"]
        where = (
            str(database["NAME"])
            if connection.vendor == "sqlite"
            else f"PostgreSQL database {database['NAME']}"
        )
        with self._step(f"Preparing the database ({where})") as outcome:
            executor = MigrationExecutor(connection)
            pending = len(executor.migration_plan(executor.loader.graph.leaf_nodes()))
            self._call("migrate", verbosity=int(self.verbose), interactive=False)
            self._collect_static()
            self._call("sync_schedule")
            outcome.append(f"{pending} migrations applied." if pending else "up to date.")
        with unscoped():
            catalog = ModelPrice.objects.unscoped().filter(tenant__isnull=True)
            if catalog.exists():
                self._say(f"Price catalog: {catalog.count()} prices, kept.")
            else:
                with self._step("Loading the price catalog") as outcome:
                    self._call("load_prices")
                    outcome.append(f"{catalog.count()} prices.")
            tenant = Tenant.objects.filter(slug=DEMO_TENANT).first()
            if tenant is None or not has_events(tenant=tenant):
                with self._step(f"Seeding 30 days of demo usage for tenant {DEMO_TENANT}") as out:
                    started = time.monotonic()
                    self._call("seed_demo", "--days", "30")
                    tenant = Tenant.objects.get(slug=DEMO_TENANT)
                    out.append(
                        f"{self._usage_summary(tenant)} ({time.monotonic() - started:.1f} s)."
                    )
            else:
                self._say(f"Demo data: tenant {DEMO_TENANT}, {self._usage_summary(tenant)}, kept.")
            if self._default_alerting(tenant):
                self._say(
                    f"Alerting for {DEMO_TENANT}: 5 rules, by email (files in "
                    f"{settings.EMAIL_FILE_PATH}/), and a $150 monthly budget."
                )
        return tenant

    def _collect_static(self) -> None:
        """collectstatic, unless no static file changed since the last run: it compresses every
        file again each time (2-3 s of each start)."""
        root = Path(settings.STATIC_ROOT)
        marker = Path(settings.VAR_DIR) / "staticfiles.sources"  # not in root: it would be served
        sources = _static_sources(root)
        if root.is_dir() and marker.exists() and marker.read_text() == sources:
            return
        self._call("collectstatic", verbosity=int(self.verbose), interactive=False)
        if sources is not None:
            marker.write_text(sources)

    def _usage_summary(self, tenant: Tenant) -> str:
        totals = rollups_of(tenant).aggregate(calls=Sum("calls"), cost=Sum("cost_nanos"))
        dollars = Decimal(totals["cost"] or 0) / 10**9
        return f"{totals['calls'] or 0:,} calls, ${dollars:,.2f} of spend"

    def _check_port(self, host: str, port: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex((host if host != "0.0.0.0" else "127.0.0.1", port)) == 0:  # noqa: S104
                raise CommandError(
                    f"Port {port} is in use; stop what runs there or pass --port {port + 1}."
                )

    def _credentials(self, tenant: Tenant) -> Credentials:
        """The demo login and keys, kept in var/ so a second run prints the same ones."""
        path = Path(settings.VAR_DIR) / "demo_credentials.json"
        stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        if "api_key" in stored:  # one key with every scope, from before KEY and ADMIN_KEY
            stored.setdefault("admin_key", stored.pop("api_key"))
        created = False
        user_model = get_user_model()
        user = user_model.objects.filter(username=ADMIN_USER).first()
        if (
            user is None
            or not stored.get("password")
            or not user.check_password(stored["password"])
        ):
            created = True
            stored["password"] = secrets.token_urlsafe(12)
            if user is None:
                user = user_model.objects.create_superuser(
                    ADMIN_USER, "admin@example.com", stored["password"]
                )
            else:
                user.set_password(stored["password"])
                user.save(update_fields=["password"])
        stored["username"] = ADMIN_USER
        membership_add(tenant=tenant, user=user, role=Membership.Role.OWNER)
        scopes: dict[str, list[str]] = {}
        for slot, wanted in KEY_SCOPES.items():
            key = None
            if stored.get(slot):
                key = (
                    ApiKey.objects.unscoped()
                    .filter(secret_hash=hash_secret(stored[slot]), revoked_at=None, tenant=tenant)
                    .first()
                )
            if key is None:
                created = True
                issued = api_key_create(tenant=tenant, scopes=wanted, name=f"demo {slot}")
                stored[slot], key = issued.secret, issued.api_key
            scopes[slot] = [s for s in SCOPE_USES if s in key.scopes]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored, indent=2))
        path.chmod(0o600)
        return Credentials(
            username=ADMIN_USER,
            password=stored["password"],
            key=stored["key"],
            key_scopes=scopes["key"],
            admin_key=stored["admin_key"],
            admin_key_scopes=scopes["admin_key"],
            path=path,
            created=created,
        )

    def _default_alerting(self, tenant: Tenant) -> bool:
        """The design notes' defaults, so alerts fire on a bare machine: $10 a day, $100 a
        month, budget crossings and the emergency stop, by email (files in var/mail/ here).
        False when the tenant has alert rules already."""
        if AlertRule.objects.for_tenant(tenant).exists():
            return False
        channel = channel_save(
            channel=Channel(
                tenant=tenant,
                name="Admin email",
                kind="email",
                config={"to": ["admin@example.com"]},
            )
        )
        defaults: list[dict[str, Any]] = [
            {
                "name": "Spend above $10 today",
                "kind": "spend",
                "period": "day",
                "threshold_usd": Decimal(10),
            },
            {
                "name": "Spend above $100 this month",
                "kind": "spend",
                "period": "month",
                "threshold_usd": Decimal(100),
                "severity": "critical",
            },
            {"name": "Budget thresholds", "kind": "budget"},
            {"name": "Emergency stop", "kind": "emergency_stop", "severity": "critical"},
            {"name": "Unpriced model", "kind": "unpriced", "severity": "info"},
        ]
        for fields in defaults:
            rule = AlertRule.objects.create(tenant=tenant, **fields)
            rule.channels.set([channel])
        if not Budget.objects.for_tenant(tenant).exists():
            budget_create(
                tenant=tenant,
                data={
                    "name": "Monthly",
                    "limit_usd": Decimal(150),
                    "suggested_model": "claude-haiku-4-5",
                },
            )
        return True

    # --- what the newcomer holds --------------------------------------------------------------

    def _keys_lines(self, base: str, credentials: Credentials) -> list[str]:
        def uses(scopes: list[str]) -> str:
            return "; ".join(SCOPE_USES[s] for s in SCOPE_USES if s in scopes)

        return [
            f"  KEY        scopes {', '.join(credentials.key_scopes)}: "
            f"{uses(credentials.key_scopes)} (the key an application holds)",
            f"  ADMIN_KEY  scopes {', '.join(credentials.admin_key_scopes)}: "
            f"{uses(credentials.admin_key_scopes)}",
            "",
            "Paste these lines into a shell to run the README's examples:",
            f"  export URL={base}",
            f"  export KEY={credentials.key}",
            f"  export ADMIN_KEY={credentials.admin_key}",
        ]

    def _data_line(self) -> str:
        database = settings.DATABASES["default"]
        if connection.vendor == "sqlite":
            return f"Data in {database['NAME']}; alert emails in {settings.EMAIL_FILE_PATH}/."
        return f"Data in the PostgreSQL database {database['NAME']}."

    def _ready_block(self, base: str, credentials: Credentials) -> list[str]:
        login = f"log in as {credentials.username}, password {credentials.password}"
        return [
            "",
            "costmon is ready.",
            f"  Dashboard  {base}/t/{DEMO_TENANT}/   {login}",
            f"  Admin      {base}/admin/   the same login (a superuser): budgets, prices, "
            "keys, alert channels",
            f"  API docs   {base}/api/docs/   try the API in the browser: Authorize with a key",
            *self._keys_lines(base, credentials),
            "and send a usage event:",
            '  curl -X POST $URL/api/v1/usage/ -H "Authorization: Bearer $KEY" '
            "-H 'Content-Type: application/json' "
            '-d \'{"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1500, '
            '"output_tokens": 500}\'',
            "",
            self._data_line(),
            "A background worker runs alerts and scheduled jobs. Press Ctrl+C to stop.",
            "",
        ]

    def _prepared_block(
        self, base: str, credentials: Credentials, *, host: str, port: int
    ) -> list[str]:
        manage = Path(settings.BASE_DIR) / "manage.py"
        serve = [self._shown_path(Path(sys.executable)), self._shown_path(manage), "quickstart"]
        if host != DEFAULT_HOST:
            serve += ["--host", host]
        if port != DEFAULT_PORT:
            serve += ["--port", str(port)]
        return [
            "",
            "costmon is prepared (--no-serve: nothing is running).",
            f"  Login      {credentials.username}, password {credentials.password} "
            "(a superuser: the dashboard of every tenant, and the admin)",
            *self._keys_lines(base, credentials),
            "",
            self._data_line(),
            f"Serve it with: {' '.join(serve)}",
            f"  then the dashboard is at {base}/t/{DEMO_TENANT}/, the admin at {base}/admin/, "
            f"the API docs at {base}/api/docs/.",
            "",
        ]

    @staticmethod
    def _shown_path(path: Path) -> str:
        relative = os.path.relpath(path)
        return str(path) if relative.startswith("..") else relative

    # --- serving ------------------------------------------------------------------------------

    def _serve(
        self, host: str, port: int, workers: int, *, base: str, credentials: Credentials
    ) -> None:
        """The web server and the background worker (Celery with beat), until a stop signal or
        until one of them ends."""
        gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or (
            shutil.which("gunicorn")
        )
        if gunicorn is None:
            raise CommandError("gunicorn is not installed; run `pip install -e .` first.")
        env = {**os.environ, "SITE_URL": os.environ.get("SITE_URL", base)}
        if self.verbose:
            env.setdefault("LOG_LEVEL", "INFO")
        worker_args = [sys.executable, "-m", "costmon.web.management.embedded_worker"]
        web_args = [
            gunicorn,
            "costmon.wsgi:application",
            # Server hooks: the Prometheus metrics of several workers (docs/prometheus.md).
            *["--config", "python:costmon.gunicorn_conf"],
            *["--bind", f"{host}:{port}", "--workers", str(workers), "--threads", "4"],
            *["--graceful-timeout", str(STOP_GRACE_SECONDS - 2)],
            *["--log-level", "info" if self.verbose else "warning"],
        ]
        cwd = str(settings.BASE_DIR)
        web = "the web server (gunicorn)"
        worker = "the background worker (Celery with beat)"
        self._say(f"Starting {web} and {worker} on {host}:{port}…", ending=" ")
        started = time.monotonic()
        failure: str | None = None
        with ProcessGroup(grace=STOP_GRACE_SECONDS) as children:
            try:
                children.start(
                    worker,
                    [*worker_args, *(["--verbose"] if self.verbose else [])],
                    cwd=cwd,
                    env=env,
                    # Celery's banner and shutdown chatter go to stdout; its warnings and
                    # errors to stderr, which stays.
                    stdout=None if self.verbose else subprocess.DEVNULL,
                )
                children.start(web, web_args, cwd=cwd, env=env)
                self._wait_until_up(children, f"{base}/healthz")
                self._say(f"up in {time.monotonic() - started:.1f} s.")
                self._say("\n".join(self._ready_block(base, credentials)))
                while True:
                    children.wait(3600)
            except StopRequested as stop:
                self._say(f"\nStopping costmon ({stop.name} received)…")
            except ChildExited as exited:
                others = [c.name for c in children.children if c is not exited.child]
                what = str(exited)
                failure = f"{what[:1].upper()}{what[1:]}; stopping {' and '.join(others)}."
                with contextlib.suppress(OSError):
                    self.stderr.write(f"\n{failure}")
        if failure is not None:
            with contextlib.suppress(OSError):
                self.stderr.write("costmon stopped.")
            raise SystemExit(1)
        self._say("costmon stopped.")

    def _wait_until_up(self, children: ProcessGroup, url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            children.check()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own http URL
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise CommandError(
                    f"The web server did not answer {url} within {START_TIMEOUT_SECONDS} s."
                )
            children.wait(0.2)
