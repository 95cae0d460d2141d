"""Child processes that start together and stop together, whatever stops them.

    with ProcessGroup() as children:
        children.start("the web server (gunicorn)", [...])
        children.wait(60)          # raises StopRequested or ChildExited

The children run in one process group of their own, so a Ctrl+C in the terminal reaches only
the launcher, which stops them in order, and the group reaches their own children too (a
gunicorn master's workers, Celery beat). SIGINT, SIGTERM and SIGHUP to the launcher each stop
the children with SIGTERM: the signal both gunicorn and Celery take as "finish and exit"
(gunicorn reloads on SIGHUP and quits at once on SIGINT; Celery restarts on SIGHUP). Whatever
has not exited `grace` seconds later is killed with the rest of the group; a second stop signal
kills at once. On Linux each child also gets SIGTERM if the launcher itself is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class StopRequested(BaseException):
    """The launcher received a stop signal. Like KeyboardInterrupt, not an Exception: no
    `except Exception` on the way may swallow it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"{self.name} received")


class ChildExited(Exception):
    """A child ended while the others were meant to run."""

    def __init__(self, child: Child, returncode: int) -> None:
        self.child = child
        self.returncode = returncode
        super().__init__(f"{child.name}, pid {child.pid}, {exit_reason(returncode)}")


def exit_reason(returncode: int) -> str:
    """'was killed by SIGKILL', 'exited with code 3', as Popen.returncode tells it."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that asks Linux to send the child SIGTERM when the launcher dies, even by
    SIGKILL; None where there is no prctl."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls it
    except OSError:
        return None
    launcher = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != launcher:  # the launcher died before prctl took effect
            os._exit(1)

    return preexec


class ProcessGroup:
    def __init__(self, *, grace: float = 10.0) -> None:
        self.grace = grace
        self.children: list[Child] = []
        self.pgid: int | None = None
        self._previous: dict[int, Any] = {}
        self._deferring = False  # while a child starts: a stop signal waits for its Popen
        self._deferred: int | None = None
        self._stopping = False
        self._owner = os.getpid()

    # --- signals ------------------------------------------------------------------------------

    def __enter__(self) -> ProcessGroup:
        self._deferring = True
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        self._deferring = False
        self._raise_deferred()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopping = True
        try:
            self.stop()
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner:
            # A process forked from the launcher (a multiprocessing worker) inherited this
            # handler: it takes the signal as if there were none.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self._stopping:
            self.kill()  # asked again while stopping: no more waiting
        elif self._deferring:
            self._deferred = signum
        else:
            self._stopping = True
            raise StopRequested(signum)

    def _raise_deferred(self) -> None:
        if self._deferred is not None:
            self._stopping = True
            raise StopRequested(self._deferred)

    # --- children -----------------------------------------------------------------------------

    def start(self, name: str, args: Sequence[str], **popen: Any) -> Child:
        """Start a child in the group (the first one founds it)."""
        self._deferring = True
        try:
            process = subprocess.Popen(  # noqa: S603 - the caller's fixed arguments, no shell
                list(args),
                process_group=self.pgid if self.pgid is not None else 0,
                preexec_fn=_die_with_parent(),  # the launcher runs no threads
                **popen,
            )
            child = Child(name=name, process=process)
            self.children.append(child)
            if self.pgid is None:
                self.pgid = process.pid
        finally:
            self._deferring = False
        self._raise_deferred()
        return child

    def check(self) -> None:
        """Raise ChildExited for the first child that is no longer running."""
        self._raise_deferred()
        for child in self.children:
            returncode = child.process.poll()
            if returncode is not None:
                self._stopping = True
                raise ChildExited(child, returncode)

    def wait(self, seconds: float, *, step: float = 0.2) -> None:
        """Let the children run for `seconds`, watching them; a stop signal interrupts."""
        deadline = time.monotonic() + seconds
        while True:
            self.check()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(step, left))

    def stop(self) -> None:
        """SIGTERM to every child still running, up to `grace` seconds for them to exit, then
        SIGKILL to whatever is left in the group (children too slow, and the children of a
        child that died, such as a killed gunicorn master's workers)."""
        self._stopping = True
        running = [c for c in self.children if c.process.poll() is None]
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for child in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        self.kill()
        for child in self.children:
            child.process.wait()
        # Orphaned grandchildren take a moment to die after SIGKILL (and to close the port).
        deadline = time.monotonic() + 2
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.02)

    def kill(self) -> None:
        if self.pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)

    def _group_alive(self) -> bool:
        """Whether a process of the group still runs. A zombie does not: it has closed its
        files, and orphans wait for init to reap them, which can take a second or two."""
        if self.pgid is None:
            return False
        proc = Path("/proc")
        if not proc.is_dir():
            try:
                os.killpg(self.pgid, 0)
            except (ProcessLookupError, PermissionError):
                return False
            return True
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                # After the command's closing parenthesis: state, ppid, pgrp, ...
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == self.pgid and fields[0] != "Z":
                return True
        return False
