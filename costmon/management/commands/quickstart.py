"""Prepare everything and start the product: the README's first command ends here."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from costmon.models import ApiKey, Membership, Tenant
from costmon.services import api_key_create, membership_add
from costmon.tenancy import unscoped
from usage.models import ModelPrice, UsageEvent

DEMO_TENANT = "demo"
ADMIN_USER = "admin"


class Command(BaseCommand):
    help = "Migrate, load prices, seed a demo tenant, create a login and a key, then serve."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument("--no-serve", action="store_true", help="prepare, print, and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = options["host"], options["port"]
        if not options["no_serve"]:
            self._check_port(host, port)
        self.stderr.write("Preparing the database…")
        call_command("migrate", verbosity=0, interactive=False)
        call_command("collectstatic", verbosity=0, interactive=False)
        call_command("sync_schedule", stdout=self.stderr)
        with unscoped():
            if not ModelPrice.objects.unscoped().filter(tenant__isnull=True).exists():
                call_command("load_prices", stdout=self.stderr)
            tenant = Tenant.objects.filter(slug=DEMO_TENANT).first()
            if tenant is None or not UsageEvent.objects.for_tenant(tenant).exists():
                self.stderr.write("Seeding 30 days of demo usage (once)…")
                call_command("seed_demo", "--days", "30", stdout=self.stderr)
                tenant = Tenant.objects.get(slug=DEMO_TENANT)
            credentials = self._credentials(tenant)
            self._default_alerting(tenant)

        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"  # noqa: S104
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "costmon is ready.",
                    f"  Dashboard: {base}/   (log in as {credentials['username']}, password {credentials['password']})",
                    f"  Admin:     {base}/admin/   (the same login)",
                    f"  API docs:  {base}/api/docs/",
                    f"  Demo key:  {credentials['api_key']}",
                    "",
                    "Send a usage event:",
                    f"  curl -X POST {base}/api/v1/usage/ -H 'Authorization: Bearer {credentials['api_key']}' \\",
                    "       -H 'Content-Type: application/json' \\",
                    '       -d \'{"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1500, "output_tokens": 500}\'',
                    f"Data lives in {settings.DATABASES['default']['NAME']}; alert emails in {settings.EMAIL_FILE_PATH}/.",
                    "A Celery worker with beat runs alongside (alerts, stop rules). Press Ctrl+C to stop.",
                    "",
                ]
            )
        )
        if options["no_serve"]:
            return
        self._serve(host, port, options["workers"])

    def _check_port(self, host: str, port: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex((host if host != "0.0.0.0" else "127.0.0.1", port)) == 0:  # noqa: S104
                raise CommandError(
                    f"Port {port} is in use; stop what runs there or pass --port 8001."
                )

    def _credentials(self, tenant: Tenant) -> dict[str, str]:
        """The demo login and key, kept in var/ so a second run prints the same ones."""
        path = Path(settings.VAR_DIR) / "demo_credentials.json"
        stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        user_model = get_user_model()
        user = user_model.objects.filter(username=ADMIN_USER).first()
        if (
            user is None
            or not stored.get("password")
            or not user.check_password(stored["password"])
        ):
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
        key_ok = False
        if stored.get("api_key"):
            prefix = "_".join(stored["api_key"].split("_", 2)[:2])
            key_ok = (
                ApiKey.objects.unscoped()
                .filter(prefix=prefix, revoked_at=None, tenant=tenant)
                .exists()
            )
        if not key_ok:
            stored["api_key"] = api_key_create(
                tenant=tenant, scopes="ingest,read,admin", name="demo"
            ).secret
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored, indent=2))
        path.chmod(0o600)
        return stored

    def _default_alerting(self, tenant: Tenant) -> None:
        """The design notes' defaults, so alerts fire on a bare machine: $10 a day, $100 a
        month, budget crossings and the emergency stop, by email (files in var/mail/ here)."""
        from decimal import Decimal

        from alerts.models import AlertRule, Channel
        from alerts.services import channel_save
        from budgets.models import Budget
        from budgets.services import budget_create

        if AlertRule.objects.for_tenant(tenant).exists():
            return
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

    def _serve(self, host: str, port: int, workers: int) -> None:
        """The web server and a Celery worker with beat (alerts, stop rules, reconciles)."""
        bin_dir = Path(sys.executable).parent
        gunicorn = shutil.which("gunicorn", path=str(bin_dir)) or shutil.which("gunicorn")
        celery = shutil.which("celery", path=str(bin_dir)) or shutil.which("celery")
        if gunicorn is None or celery is None:
            raise CommandError(
                "gunicorn and celery are not installed; run `pip install -e .` first."
            )
        sys.stdout.flush()
        base = str(settings.BASE_DIR)
        processes = [
            subprocess.Popen(  # noqa: S603 - fixed arguments, no shell
                [
                    celery,
                    "-A",
                    "costmon",
                    "worker",
                    "--beat",
                    "--pool",
                    "solo",
                    "--loglevel",
                    "WARNING",
                ],
                cwd=base,
            ),
            subprocess.Popen(  # noqa: S603
                [
                    gunicorn,
                    "costmon.wsgi:application",
                    # Server hooks: the Prometheus metrics of several workers (docs/prometheus.md).
                    "--config",
                    "python:costmon.gunicorn_conf",
                    "--bind",
                    f"{host}:{port}",
                    "--workers",
                    str(workers),
                    "--threads",
                    "4",
                    "--log-level",
                    "warning",
                ],
                cwd=base,
            ),
        ]
        try:
            while all(p.poll() is None for p in processes):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
        failed = [p for p in processes if p.returncode not in (0, -signal.SIGTERM, None)]
        if failed:
            raise CommandError(
                f"A process stopped with exit code {failed[0].returncode}; see the messages above."
            )
