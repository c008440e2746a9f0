"""Servers the sandbox starts so that they outlive the command that started them.

Each runs in a session of its own (a terminal's Ctrl-C does not reach it) and is found again later by its
pid file. When the starting process is still alive to stop it (``drflow dev --sandbox``, the tests), it also
reaps it, so no zombie lingers and no process object is dropped while its child runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn_detached(command: Sequence[str], output: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    with output.open("ab") as out:
        process = subprocess.Popen(
            list(command), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    _children[process.pid] = process
    return process


def pid_alive(pid: int) -> bool:
    """Whether the process runs; a zombie awaiting its reaper has stopped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def stop_process(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; reaps the children we started."""
    child = _children.pop(pid, None)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if child is not None:
            try:
                child.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                continue
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pid_alive(pid):
            return


def reap(pid: int) -> None:
    """Collect a child that exited by itself (e.g. a server stopped through its own tooling)."""
    child = _children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(1)
