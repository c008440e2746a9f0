"""Process kill -9, and the restart that removes the fault.

The library kills only the process it is handed (by pid), never by name, and never itself, an ancestor of
itself or pid 1. Removing the fault starts the given command again, detached (its own session, output to a
log file): after a crash of the injecting process, ``drflow faults cleanup`` restarts it from the state file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activities.faults.base import FaultError, UnsafeTarget


def alive(pid: int) -> bool:
    """Running (a zombie that its parent has not reaped yet is dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot): a pid reused later has another one."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


@dataclass
class KilledProcess:
    """kill -9 of ``pid``; removed by starting ``restart`` again (None: the kill is not undone).

    ``env`` holds only the variables to set on top of the restarting process's own environment: it goes to
    the state file, so it must name secrets by reference (``file:``, ``env:``), never hold them.
    """

    pid: int
    restart: list[str] | None = None
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    log: str | None = None
    restarted: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    killed_at: float | None = field(default=None, init=False)

    @property
    def kind(self) -> str:
        return "process-kill"

    def describe(self) -> str:
        return f"kill -9 of pid {self.pid}" + (f", restart {' '.join(self.restart)}" if self.restart else "")

    def params(self) -> dict[str, Any]:
        return {"pid": self.pid, "restart": self.restart, "cwd": self.cwd, "env": self.env, "log": self.log}

    def inject(self) -> None:
        if self.pid <= 1 or self.pid in _ancestors():
            raise UnsafeTarget(
                f"pid {self.pid} is this process, one of its ancestors or init; nothing killed"
            )
        if not alive(self.pid):
            return  # already dead: the fault holds, idempotently
        os.kill(self.pid, signal.SIGKILL)
        self.killed_at = time.monotonic()
        deadline = time.monotonic() + 10
        while alive(self.pid):
            if time.monotonic() > deadline:
                raise FaultError(f"pid {self.pid} is still running 10 s after SIGKILL")
            time.sleep(0.01)

    def remove(self) -> None:
        if self.restart is None or (self.restarted is not None and self.restarted.poll() is None):
            return
        self.restarted = restart_detached(self.restart, self.cwd, self.env, self.log)


def restart_detached(
    argv: list[str], cwd: str | None, env: dict[str, str], log: str | None
) -> subprocess.Popen[bytes]:
    with contextlib.ExitStack() as stack:
        output = stack.enter_context(Path(log).open("ab")) if log else subprocess.DEVNULL
        try:
            return subprocess.Popen(
                argv,
                cwd=cwd,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as err:
            raise FaultError(f"could not restart {' '.join(argv)}: {err}") from None


def remove_recorded(params: dict[str, Any]) -> str:
    """After a crash: restart the killed process from its recorded command (if it had one)."""
    restart = params.get("restart")
    if not restart:
        return f"pid {params['pid']} stays killed (no restart command was given)"
    env = dict(params.get("env") or {})
    process = restart_detached(list(restart), params.get("cwd"), env, params.get("log"))
    return f"restarted {' '.join(restart)} as pid {process.pid}"
