"""Private servers for the fault tests: a redis-server, a PostgreSQL cluster and gunicorn that a
test may kill and restart (the machine's shared PostgreSQL and Redis are never touched)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import requests

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return
        except Exception:  # noqa: BLE001, S110 - not up yet
            pass
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.05)


class RedisServer:
    """redis-server on a free port, no persistence: a restart loses everything, like a Redis
    that was replaced."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603
            [
                *["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"],
                *["--save", "", "--appendonly", "no", "--loglevel", "warning"],
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        wait_for(client.ping, 10, "redis-server starts")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=2)


class PostgresCluster:
    """A PostgreSQL 15 cluster of its own (initdb in a temporary folder, trust auth)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="costmon-faults-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "log"

    def init(self) -> None:
        chown_to_postgres(self.dir)
        subprocess.run(  # noqa: S603
            [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"],
            check=True,
            capture_output=True,
            env=_as_postgres_user_env(),
            preexec_fn=_drop_to_postgres,
        )
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        (self.dir / "options").write_text(options)
        self.start()

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(  # noqa: S603
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), *args],
            check=True,
            capture_output=True,
            preexec_fn=_drop_to_postgres,
        )

    def start(self) -> None:
        self._pg_ctl("-o", (self.dir / "options").read_text(), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "-w", "stop")

    def restart(self) -> None:
        self._pg_ctl("-m", "fast", "-o", (self.dir / "options").read_text(), "-w", "restart")

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def _postgres_ids() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def _drop_to_postgres() -> None:
    ids = _postgres_ids()
    if ids is not None:
        os.setgid(ids[1])
        os.setuid(ids[0])


def _as_postgres_user_env() -> dict[str, str]:
    return {**os.environ, "HOME": "/tmp"}


def chown_to_postgres(path: Path) -> None:
    ids = _postgres_ids()
    if ids is not None:
        os.chown(path, *ids)


class Gunicorn:
    """costmon behind gunicorn (gthread workers), as deployed."""

    def __init__(
        self,
        *,
        database_url: str,
        redis_url: str,
        workers: int = 2,
        threads: int = 8,
        log: Path | None = None,
        **env: str,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="costmon-faults-prom-"))
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "costmon.settings",
            "DATABASE_URL": database_url,
            "DATABASE_ROLE": os.environ.get("DATABASE_ROLE", "costmon_app"),
            "REDIS_URL": redis_url,
            "SECRET_KEY": "tests-only-secret-key",
            "COSTMON_SHARED_RECHECK_MS": "0",
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
            "CELERY_TASK_ALWAYS_EAGER": "false",
            **env,
        }
        self.args = [
            *[sys.executable, "-m", "gunicorn", "costmon.wsgi:application"],
            *["-c", "python:costmon.gunicorn_conf", "--worker-class", "gthread"],
            *["--workers", str(workers), "--threads", str(threads), "--timeout", "60"],
            *["--bind", f"127.0.0.1:{self.port}", "--log-level", "warning"],
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self.log = log

    def start(self) -> None:
        output = self.log.open("ab") if self.log is not None else None
        self.process = subprocess.Popen(  # noqa: S603
            self.args, cwd=ROOT, env=self.env, stdout=output, stderr=output
        )
        wait_for(
            lambda: requests.get(f"{self.base}/healthz", timeout=5).status_code == 200,
            60,
            "gunicorn starts",
        )

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        out = subprocess.run(  # noqa: S603
            ["ps", "-o", "pid=", "--ppid", str(self.process.pid)],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return [int(p) for p in out.split()]

    def kill_a_worker(self) -> int:
        """SIGKILL one worker (gunicorn's master starts another)."""
        pid = self.worker_pids()[0]
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
