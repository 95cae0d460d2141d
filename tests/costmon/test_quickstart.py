"""`manage.py quickstart` as a newcomer runs it: a real process on a free port, on the embedded
SQLite default with no Redis, in a var/ of its own; stopped by every signal a terminal, `kill`,
systemd or a container runtime sends, and by the death of one of its children.

"No process left" is checked over the quickstart's whole session (it is started with setsid):
its own process group and the group it runs its children in.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STOP_WITHIN_SECONDS = 15
READY_LINE = "A background worker runs alerts and scheduled jobs. Press Ctrl+C to stop."
EXPORT = re.compile(r"^  export (URL|KEY|ADMIN_KEY)=(\S+)$", re.MULTILINE)
LOGIN = re.compile(r"log in as (\w+), password (\S+)$", re.MULTILINE)
NO_SERVE_LOGIN = re.compile(r"^  Login      (\w+), password (\S+) ", re.MULTILINE)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Nothing listens, and a new server could bind it (as gunicorn does, SO_REUSEADDR)."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def env_for(var_dir: Path) -> dict[str, str]:
    """What a newcomer's shell has: no database or Redis URL, no test settings."""
    env = {
        name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TMPDIR") if name in os.environ
    }
    env.update(COSTMON_VAR_DIR=str(var_dir), DJANGO_SETTINGS_MODULE="costmon.settings")
    return env


def quickstart(var_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, "manage.py", "quickstart", *args],
        cwd=ROOT,
        env=env_for(var_dir),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@dataclass
class Running:
    """A quickstart serving in the background, its output read as it comes."""

    process: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_until_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while READY_LINE not in self.lines:
            assert self.process.poll() is None, f"quickstart exited:\n{self.output}"
            assert time.monotonic() < deadline, f"not ready in {timeout} s:\n{self.output}"
            time.sleep(0.1)
        assert requests.get(f"{self.url}/healthz", timeout=5).status_code == 200

    def children(self) -> dict[str, int]:
        """The quickstart's direct children by what they are: 'web' and 'worker'."""
        found = {}
        for pid, (_, ppid, cmdline) in session_processes(self.process.pid).items():
            if ppid == self.process.pid:
                found["web" if "gunicorn" in cmdline else "worker"] = pid
        return found

    def finished(self) -> tuple[int, str]:
        """Wait for the quickstart to exit; its exit code and all it printed."""
        code = self.process.wait(timeout=STOP_WITHIN_SECONDS)
        assert self.reader is not None
        self.reader.join(timeout=5)
        return code, self.output


def session_processes(sid: int) -> dict[int, tuple[str, int, str]]:
    """Living processes of a session: pid -> (state, parent pid, command line). Zombies are
    dead (this machine's init reaps orphans late)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        state, ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]
        if int(session) == sid and state != "Z":
            found[int(entry.name)] = (state, int(ppid), cmdline)
    return found


def assert_all_gone(running: Running, since: float) -> None:
    """Within STOP_WITHIN_SECONDS of `since`: no process of the quickstart's session alive and
    its port free."""
    deadline = since + STOP_WITHIN_SECONDS
    while True:
        left = session_processes(running.process.pid)
        free = port_is_free(running.port)
        if not left and free:
            return
        assert time.monotonic() < deadline, (
            f"{STOP_WITHIN_SECONDS} s after the stop: still running {left}, "
            f"port {'free' if free else 'in use'}\n{running.output}"
        )
        time.sleep(0.1)


def kill_session(process: subprocess.Popen[str]) -> None:
    """What a failed test left running: the process (not yet reaped, so its pid is still its
    own) and the rest of its session."""
    leader = [process.pid] if process.poll() is None else []
    for pid in [*leader, *session_processes(process.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)


@pytest.fixture
def serve() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(var_dir: Path, *args: str) -> Running:
        port = free_port()
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "manage.py", "quickstart", "--port", str(port), *args],
            cwd=ROOT,
            env=env_for(var_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own session: every process it starts stays in it
        )
        running = Running(process=process, port=port)
        running.reader = threading.Thread(target=running.read, daemon=True)
        running.reader.start()
        started.append(running)
        return running

    yield start
    for running in started:  # a failed test must not leave servers behind
        kill_session(running.process)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A var/ the quickstart has prepared once (--no-serve), and what that run printed."""
    var_dir = tmp_path_factory.mktemp("var")
    result = quickstart(var_dir, "--no-serve")
    assert (result.returncode, result.stderr) == (0, ""), result.stdout + result.stderr
    return var_dir, result.stdout


def readme_ready_block() -> list[str]:
    """The ready block as the README's "Start it" shows it."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Start it", 1)[1].split("\n## ", 1)[0]
    return section.split("```\ncostmon is ready.\n", 1)[1].split("\n```", 1)[0].splitlines()


def readme_first_usage_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Report usage", 1)[1]
    return section.split("```sh\n", 1)[1].split("\n```", 1)[0]


# --- a newcomer's first start ------------------------------------------------------------------

FIRST_START = [
    r"Preparing the database \(.+/costmon\.sqlite3\)… \d+ migrations applied\.",
    r"Loading the price catalog… \d+ prices\.",
    r"Seeding 30 days of demo usage for tenant demo… [\d,]+ calls, \$[\d,]+\.\d\d of spend "
    r"\([\d.]+ s\)\.",
    r"Alerting for demo: 5 rules, by email \(files in .+/mail/\), and a \$150 monthly budget\.",
    r"Login and API keys: created, kept in .+/demo_credentials\.json\.",
    r"Starting the web server \(gunicorn\) and the background worker \(Celery with beat\) on "
    r"127\.0\.0\.1:\d+… up in [\d.]+ s\.",
]


def test_a_fresh_start_prints_its_own_progress_then_what_the_newcomer_holds(serve, tmp_path):
    running = serve(tmp_path / "var")
    running.wait_until_ready()

    lines = running.lines
    before = lines[: lines.index("costmon is ready.")]
    assert before[-1] == ""
    assert len(before) - 1 == len(FIRST_START), running.output
    for line, pattern in zip(before, FIRST_START, strict=False):
        assert re.fullmatch(pattern, line), f"{line!r} is not costmon's own progress line"
    block = running.output.split("costmon is ready.", 1)[1]
    url = running.url
    assert f"  Dashboard  {url}/t/demo/   log in as admin, password " in block
    assert f"  Admin      {url}/admin/   the same login" in block
    assert f"  API docs   {url}/api/docs/   " in block
    assert "  KEY        scopes ingest, read: send usage; read usage" in block
    assert (
        "  ADMIN_KEY  scopes read, admin: read usage, budgets and alerts; manage budgets" in block
    )
    exports = dict(EXPORT.findall(block))
    assert exports["URL"] == url
    # The README shows this block as it is, "…" standing for what differs.
    shown = readme_ready_block()
    printed = block.splitlines()[1 : len(shown) + 1]
    for readme_line, line in zip(shown, printed, strict=True):
        pattern = re.escape(readme_line).replace("…", ".+").replace("8000", str(running.port))
        assert re.fullmatch(pattern, line), (readme_line, line)

    # The README's first example, pasted after the export lines, as a newcomer would.
    export_lines = "\n".join(f"export {name}={value}" for name, value in exports.items())
    example = readme_first_usage_example()
    assert example.startswith('curl -X POST $URL/api/v1/usage/ -H "Authorization: Bearer $KEY"')
    reply = subprocess.run(  # noqa: S603
        ["/bin/bash", "-c", f"{export_lines}\n{example} -s -w '\\n%{{http_code}}'"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    body, status = reply.rsplit("\n", 1)
    assert status == "201", body
    assert json.loads(body) == {
        "events": [
            {
                "event_id": "9b0c…",
                "cost_usd": "0.00135",
                "cost_source": "computed",
                "duplicate": False,
            }
        ]
    }
    # KEY is what an application holds: it may not manage; ADMIN_KEY may, and reads.
    key = {"Authorization": f"Bearer {exports['KEY']}"}
    admin_key = {"Authorization": f"Bearer {exports['ADMIN_KEY']}"}
    budget = {"name": "Team", "limit_usd": "20"}
    assert (
        requests.post(f"{url}/api/v1/budgets/", json=budget, headers=key, timeout=30).status_code
        == 403
    )
    assert (
        requests.post(
            f"{url}/api/v1/budgets/", json=budget, headers=admin_key, timeout=30
        ).status_code
        == 201
    )
    assert requests.get(f"{url}/api/v1/metrics/?period=month", headers=admin_key, timeout=30).ok
    # The printed login opens the dashboard and the admin; the docs need none.
    username, password = LOGIN.search(block).groups()
    browser = requests.Session()
    browser.get(f"{url}/login/")
    logged_in = browser.post(
        f"{url}/login/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": browser.cookies["csrftoken"],
        },
        headers={"Referer": f"{url}/login/"},
    )
    assert logged_in.url == f"{url}/t/demo/" and logged_in.status_code == 200
    assert browser.get(f"{url}/admin/").status_code == 200
    assert requests.get(f"{url}/api/docs/", timeout=30).status_code == 200

    stopped_at = time.monotonic()
    running.process.send_signal(signal.SIGTERM)
    code, output = running.finished()
    assert_all_gone(running, stopped_at)
    assert code == 0
    assert output.endswith("Stopping costmon (SIGTERM received)…\ncostmon stopped."), output


# --- stopping ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"]
)
def test_a_stop_signal_stops_every_process_and_frees_the_port(serve, prepared, signum):
    var_dir, _ = prepared
    running = serve(var_dir, "--workers", "1")  # a master and a worker: enough to stop
    running.wait_until_ready()
    assert set(running.children()) == {"web", "worker"}

    stopped_at = time.monotonic()
    running.process.send_signal(signum)
    code, output = running.finished()

    assert_all_gone(running, stopped_at)
    assert code == 0
    name = signal.Signals(signum).name
    tail = output.split(READY_LINE, 1)[1]
    assert tail == f"\n\nStopping costmon ({name} received)…\ncostmon stopped.", tail


@pytest.mark.parametrize(
    ("child", "name", "others"),
    [
        ("web", "The web server (gunicorn)", "the background worker (Celery with beat)"),
        ("worker", "The background worker (Celery with beat)", "the web server (gunicorn)"),
    ],
)
def test_a_child_killed_takes_the_others_down_and_says_which_and_why(
    serve, prepared, child, name, others
):
    var_dir, _ = prepared
    running = serve(var_dir, "--workers", "1")  # a master and a worker: enough to stop
    running.wait_until_ready()
    pid = running.children()[child]

    stopped_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    code, output = running.finished()

    assert_all_gone(running, stopped_at)
    assert code == 1
    assert output.endswith(
        f"{name}, pid {pid}, was killed by SIGKILL; stopping {others}.\ncostmon stopped."
    ), output


def test_children_stop_when_the_quickstart_itself_is_killed(serve, prepared):
    var_dir, _ = prepared
    running = serve(var_dir, "--workers", "1")  # a master and a worker: enough to stop
    running.wait_until_ready()

    stopped_at = time.monotonic()
    running.process.send_signal(signal.SIGKILL)  # no handler runs: Linux tells the children
    running.finished()

    assert_all_gone(running, stopped_at)


# --- preparing only, again, verbosely ------------------------------------------------------------


def test_no_serve_prints_what_it_prepared_and_the_command_that_serves(prepared):
    var_dir, first = prepared

    again = quickstart(var_dir, "--no-serve", "--port", "8123")

    assert again.returncode == 0 and again.stderr == ""
    for output in (first, again.stdout):
        assert "worker" not in output.lower() and "Ctrl+C" not in output
        assert "costmon is prepared (--no-serve: nothing is running)." in output
    assert re.search(r"^Serve it with: \S+python\S* manage\.py quickstart$", first, re.M)
    assert re.search(r"^Serve it with: \S+ manage\.py quickstart --port 8123$", again.stdout, re.M)
    assert "dashboard is at http://127.0.0.1:8123/t/demo/" in again.stdout
    # The second run keeps the data and prints the same login and keys.
    seeded = re.search(r"… ([\d,]+ calls, \$[\d,.]+ of spend) \(", first).group(1)
    assert again.stdout.splitlines()[:4] == [
        f"Preparing the database ({var_dir}/costmon.sqlite3)… up to date.",
        "Price catalog: " + re.search(r"catalog… (\d+ prices)\.", first).group(1) + ", kept.",
        f"Demo data: tenant demo, {seeded}, kept.",
        f"Login and API keys: the same as before, kept in {var_dir}/demo_credentials.json.",
    ]
    assert NO_SERVE_LOGIN.search(again.stdout).groups() == NO_SERVE_LOGIN.search(first).groups()
    assert dict(EXPORT.findall(again.stdout))["KEY"] == dict(EXPORT.findall(first))["KEY"]
    assert (
        dict(EXPORT.findall(again.stdout))["ADMIN_KEY"] == dict(EXPORT.findall(first))["ADMIN_KEY"]
    )


def test_verbose_shows_what_the_steps_and_the_servers_print(serve, prepared):
    var_dir, _ = prepared
    running = serve(var_dir, "--verbose", "--workers", "1")
    running.wait_until_ready()
    deadline = time.monotonic() + 30
    while "celery@" not in running.output and time.monotonic() < deadline:
        time.sleep(0.1)  # the worker's banner may come after the web server answers

    output = running.output
    assert "No migrations to apply." in output  # migrate's own words
    assert "periodic tasks:" in output  # sync_schedule's
    assert "Booting worker" in output  # gunicorn at info
    assert "celery@" in output  # Celery's banner

    stopped_at = time.monotonic()
    running.process.send_signal(signal.SIGTERM)
    running.finished()
    assert_all_gone(running, stopped_at)


# --- the launcher on its own (tests/bench/run.py uses it too) ------------------------------------

LAUNCHER = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from costmon.web.management.launcher import ProcessGroup, StopRequested
"""


@pytest.fixture
def launch() -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(script: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-c", LAUNCHER + script],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        kill_session(process)


def test_what_ignores_sigterm_is_killed_with_its_children_after_the_grace(launch):
    process = launch(
        """
with ProcessGroup(grace=1) as children:
    try:
        # A shell that ignores SIGTERM, and its child that inherits that.
        children.start("stubborn", ["sh", "-c", "trap '' TERM; sleep 600 & wait"])
        children.start("polite", ["sleep", "600"])
        print("started", flush=True)
        children.wait(600)
    except StopRequested as stop:
        print("stopping on", stop.name, flush=True)
print("stopped", flush=True)
"""
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "started\n"
    time.sleep(0.3)  # the shell has started its sleep
    assert len(session_processes(process.pid)) == 4

    stopped_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=10)

    assert output == "stopping on SIGTERM\nstopped\n"
    assert time.monotonic() - stopped_at < 3
    assert session_processes(process.pid) == {}


def test_a_process_forked_by_the_launcher_still_dies_on_sigterm(launch):
    """A multiprocessing worker inherits the launcher's handler: it must not turn SIGTERM into
    an exception that a library's `except Exception` swallows (the benchmark's client pool)."""
    process = launch(
        """
import multiprocessing

def task(_):
    try:
        time.sleep(600)
    except Exception:
        time.sleep(600)

with ProcessGroup() as children:
    pool = multiprocessing.get_context("fork").Pool(1)
    pool.map_async(task, [1])
    time.sleep(0.5)
    started = time.monotonic()
    pool.terminate()
    pool.join()
    print(f"terminated in {time.monotonic() - started:.0f} s", flush=True)
"""
    )
    output, _ = process.communicate(timeout=30)

    assert output == "terminated in 0 s\n"
    assert session_processes(process.pid) == {}
