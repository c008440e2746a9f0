"""Running a runbook's command hook: the steps drflow cannot do itself on a host it does not manage.

A hook is an argv (no shell) with placeholders filled from the node it acts on, an environment of secret
references resolved only here, and a timeout after which its whole process group is killed. What reaches a
result, an error or a log is its exit status and the last lines of its output with every secret value (and
anything shaped like a password) blanked out. Callers verify the hook's effect themselves: a zero exit status
is never taken as proof.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import ErrorType
from activities.secrets import resolve_secret
from runbooks.model import CommandHook, StrictModel

TAIL_LINES = 15
_LINE_MAX = 300
_HEARTBEAT_EVERY = 2.0
_KILL_GRACE = 5.0
_REDACTED = "[redacted]"
# Shapes that carry a credential whatever the hook printed: key=value pairs, URLs with a password.
_SECRET_SHAPES = (
    re.compile(r"(?i)\b(password|passwd|pgpassword|secret|token|api[_-]?key)(\s*[=:]\s*)(\S+)"),
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)([^@\s]+)(@)"),
)


class HookRun(StrictModel):
    """What a hook did, as far as a history may tell: no environment, output redacted."""

    command: list[str]
    exit_status: int | None
    timed_out: bool
    seconds: float
    output_tail: list[str]

    @property
    def succeeded(self) -> bool:
        return self.exit_status == 0 and not self.timed_out

    def describe(self) -> str:
        outcome = (
            f"timed out after {self.seconds:.0f}s (process group killed)"
            if self.timed_out
            else f"exited with status {self.exit_status} after {self.seconds:.1f}s"
        )
        tail = " | ".join(self.output_tail[-5:]) or "(no output)"
        return f"`{' '.join(self.command)}` {outcome}; last output: {tail}"


def fill(hook: CommandHook, values: Mapping[str, str]) -> list[str]:
    """The argv with ``{placeholders}`` replaced; validation already refused unknown ones."""
    return [argument.format_map(values) for argument in hook.command]


def run_hook(hook: CommandHook, values: Mapping[str, str]) -> HookRun:
    """Run the hook to completion or timeout, heartbeating meanwhile; never raises for the hook's failure."""
    argv = fill(hook, values)
    secrets = {name: resolve_secret(reference) for name, reference in hook.env.items()}
    environment = {**os.environ, **secrets}
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
            text=True,
            errors="replace",
        )
    except OSError as err:
        return HookRun(
            command=argv,
            exit_status=127,
            timed_out=False,
            seconds=0.0,
            output_tail=[f"could not start: {err.strerror or err}"],
        )
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> None:
        with contextlib.suppress(ValueError, OSError):  # closed below when a background child holds it
            tail.extend(stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = started + hook.timeout.total_seconds()
    timed_out = False
    while process.poll() is None:
        if time.monotonic() >= deadline:
            timed_out = True
            _kill_group(process)
            break
        if activity.in_activity():
            activity.heartbeat(f"hook {argv[0]} running for {time.monotonic() - started:.0f}s")
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=min(_HEARTBEAT_EVERY, max(0.01, deadline - time.monotonic())))
    # A server the hook started in the background may hold the pipe open: do not wait for it long.
    reader.join(timeout=_KILL_GRACE if timed_out else 1.0)
    stdout.close()
    values_to_hide = [value for value in secrets.values() if value]
    return HookRun(
        command=argv,
        exit_status=None if timed_out else process.returncode,
        timed_out=timed_out,
        seconds=round(time.monotonic() - started, 1),
        output_tail=[_redact(line.rstrip("\n"), values_to_hide) for line in tail if line.strip()],
    )


def require_success(run: HookRun, what: str, error_type: str = ErrorType.HOOK_FAILED) -> None:
    """A failed hook is a failed step a person decides about, not an attempt to repeat by itself."""
    if not run.succeeded:
        raise ApplicationError(
            f"{what}: the hook {run.describe()}",
            run,
            type=ErrorType.HOOK_TIMED_OUT if run.timed_out else error_type,
            non_retryable=True,
        )


def _kill_group(process: subprocess.Popen[str]) -> None:
    """TERM, then KILL: a hook that ignores TERM (or left children behind) is still stopped."""
    for sig, grace in ((signal.SIGTERM, _KILL_GRACE), (signal.SIGKILL, _KILL_GRACE)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _redact(line: str, secrets: list[str]) -> str:
    for value in secrets:
        line = line.replace(value, _REDACTED)
    line = _SECRET_SHAPES[0].sub(lambda m: f"{m[1]}{m[2]}{_REDACTED}", line)
    line = _SECRET_SHAPES[1].sub(lambda m: f"{m[1]}{_REDACTED}{m[3]}", line)
    return line if len(line) <= _LINE_MAX else line[:_LINE_MAX] + "..."
