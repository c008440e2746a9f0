"""Runbook command hooks: exit status, redacted output, timeouts that kill the whole process group."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.errors import ErrorType
from activities.hooks import require_success, run_hook
from runbooks.model import CommandHook
from workers.sandbox.processes import pid_alive


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "hook"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_placeholders_are_filled_and_the_exit_status_and_last_lines_are_kept(tmp_path: Path) -> None:
    hook = CommandHook(
        command=[script(tmp_path, 'for i in $(seq 1 40); do echo "line $i $1"; done\nexit 7\n'), "{region}"]
    )
    run = run_hook(hook, {"region": "region-a"})
    assert run.command[1] == "region-a"
    assert run.exit_status == 7 and not run.timed_out and not run.succeeded
    assert run.output_tail[-1] == "line 40 region-a" and len(run.output_tail) == 15
    with pytest.raises(ApplicationError) as failed:
        require_success(run, "re-syncing region-a")
    assert failed.value.type == ErrorType.HOOK_FAILED and failed.value.non_retryable
    assert "exited with status 7" in failed.value.message and "line 40 region-a" in failed.value.message


def test_secret_values_and_password_shapes_never_leave_the_hook(tmp_path: Path) -> None:
    os.environ["DRFLOW_TEST_HOOK_SECRET"] = "very-secret-value-42"
    hook = CommandHook(
        command=[
            script(
                tmp_path,
                'echo "got $TOKEN"\necho "PGPASSWORD=abc123 psql"\n'
                'echo "dsn postgres://drflow:pw-9@db-a:5432/app"\necho "api_key: k-77"\n',
            )
        ],
        env={"TOKEN": "env:DRFLOW_TEST_HOOK_SECRET"},
    )
    run = run_hook(hook, {})
    text = "\n".join(run.output_tail)
    for secret in ("very-secret-value-42", "abc123", "pw-9", "k-77"):
        assert secret not in text, text
    assert "got [redacted]" in text and "PGPASSWORD=[redacted]" in text and "drflow:[redacted]@db-a" in text
    assert "TOKEN" not in " ".join(run.command)


def test_a_hanging_hook_is_killed_with_its_children_at_its_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    body = f"trap '' TERM\n(trap '' TERM; sleep 300) &\necho $! > {pidfile}\necho started\nsleep 300\n"
    hook = CommandHook(command=[script(tmp_path, body)], timeout=timedelta(seconds=1))
    started = time.monotonic()
    run = run_hook(hook, {})
    assert run.timed_out and run.exit_status is None and run.output_tail == ["started"]
    assert time.monotonic() - started < 20
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child), "the hook's child outlived the timeout"
    with pytest.raises(ApplicationError) as failed:
        require_success(run, "fencing region-a")
    assert failed.value.type == ErrorType.HOOK_TIMED_OUT and "timed out after" in failed.value.message


def test_a_missing_command_is_a_failed_hook_not_a_crash(tmp_path: Path) -> None:
    run = run_hook(CommandHook(command=[str(tmp_path / "nowhere")]), {})
    assert run.exit_status == 127 and "could not start" in run.output_tail[0]


def test_a_long_hook_heartbeats_so_a_worker_crash_costs_a_heartbeat_timeout(tmp_path: Path) -> None:
    beats: list[Any] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    hook = CommandHook(command=[script(tmp_path, "sleep 5\n")])
    run = env.run(run_hook, hook, {})
    assert run.succeeded and len(beats) >= 2, beats
