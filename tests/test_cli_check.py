"""`drflow check` and `drflow worker` as processes against the real dev server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator

import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from tests.support.dns import APP_RECORD
from tests.test_cli_runbooks import DRFLOW
from tests.test_readiness_workflow import World, world  # noqa: F401  (fixture)
from workers.worker import build_worker
from workflows.common import TASK_QUEUE


def target(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


async def drflow(
    *args: str, timeout: float = 90, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    process = await asyncio.create_subprocess_exec(
        *DRFLOW, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return subprocess.CompletedProcess(list(args), process.returncode, out.decode(), err.decode())


@pytest_asyncio.fixture
async def drflow_worker(dev_env: WorkflowEnvironment, world: World) -> AsyncIterator[World]:  # noqa: F811
    async with build_worker(dev_env.client, world.runbooks, task_queue=TASK_QUEUE):
        yield world


async def count_workflows(env: WorkflowEnvironment, query: str) -> int:
    return len([w async for w in env.client.list_workflows(query)])


async def test_check_prints_the_report_and_exits_0_when_ready(
    dev_env: WorkflowEnvironment, drflow_worker: World
) -> None:
    drflow_worker.write_runbook("web")
    result = await drflow(
        "--runbooks", str(drflow_worker.runbooks), "check", "web", "--address", target(dev_env)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("## Readiness of web: READY")
    assert f"### DNS: {APP_RECORD} A (expected 127.0.1.1)" in result.stdout
    assert "fits within RTO 2m" in result.stdout
    assert (
        "started readiness-web-" in result.stderr
        and "http://localhost:8233/namespaces/default/workflows/" in result.stderr
    )


async def test_check_exit_status_says_degraded_and_not_ready_and_json_is_the_workflow_result(
    dev_env: WorkflowEnvironment, drflow_worker: World
) -> None:
    drflow_worker.write_runbook("web")
    drflow_worker.write_runbook("api")
    drflow_worker.region_a.behaviour.status = 500
    degraded = await drflow(
        "--runbooks", str(drflow_worker.runbooks), "check", "web", "--json", "--address", target(dev_env)
    )
    assert degraded.returncode == 3, degraded.stderr
    report = json.loads(degraded.stdout)
    assert report["verdict"] == "degraded" and report["service"] == "web"

    drflow_worker.region_b.behaviour.status = 500
    both = await drflow(
        "--runbooks", str(drflow_worker.runbooks), "check", "--all", "--json", "--address", target(dev_env)
    )
    assert both.returncode == 4, both.stderr
    assert sorted((r["service"], r["verdict"]) for r in json.loads(both.stdout)) == [
        ("api", "not-ready"),
        ("web", "not-ready"),
    ]


async def test_check_of_an_unknown_service_starts_nothing_and_exits_1(
    dev_env: WorkflowEnvironment, drflow_worker: World
) -> None:
    drflow_worker.write_runbook("web")
    before = await count_workflows(dev_env, "WorkflowId STARTS_WITH 'readiness-payments'")  # other modules'
    result = await drflow(
        "--runbooks", str(drflow_worker.runbooks), "check", "payments", "--address", target(dev_env)
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"drflow: unknown service 'payments': no runbook in {drflow_worker.runbooks} describes it (known: web)"
    )
    assert await count_workflows(dev_env, "WorkflowId STARTS_WITH 'readiness-payments'") == before


async def test_check_with_a_broken_runbook_names_the_problem_and_starts_nothing(
    dev_env: WorkflowEnvironment, drflow_worker: World
) -> None:
    drflow_worker.write_runbook("web", rto="10s")
    before = await count_workflows(dev_env, "WorkflowId STARTS_WITH 'readiness-web-'")
    result = await drflow(
        "--runbooks", str(drflow_worker.runbooks), "check", "web", "--address", target(dev_env)
    )
    assert result.returncode == 1
    assert "drflow: the runbook of web is invalid:" in result.stderr
    assert (
        "dns.ttl: TTL 5s + propagation budget 10s + health-check minimum 2s = 17s exceeds the RTO of 10s"
        in (result.stderr)
    )
    assert await count_workflows(dev_env, "WorkflowId STARTS_WITH 'readiness-web-'") == before


async def test_check_all_checks_the_good_runbooks_and_reports_a_broken_file_as_not_served(
    dev_env: WorkflowEnvironment, drflow_worker: World
) -> None:
    """One broken file must not hide the readiness of the others, nor hide itself: at 3 a.m. both count."""
    drflow_worker.write_runbook("web")
    drflow_worker.write_runbook("api", rto="10s")  # TTL + propagation + health minimum exceed the RTO
    (drflow_worker.runbooks / "notes.yaml").write_text("- a list, not a runbook\n")
    runbooks = ("--runbooks", str(drflow_worker.runbooks))
    before = await count_workflows(dev_env, "WorkflowId STARTS_WITH 'readiness-api-'")
    result = await drflow(*runbooks, "check", "--all", "--address", target(dev_env))
    assert result.returncode == 4, result.stderr  # a service that cannot be failed over is not ready
    assert result.stdout.startswith("## Readiness of web: READY")
    assert "## Runbook api.yaml: NOT SERVED" in result.stdout
    assert "## Runbook notes.yaml: NOT SERVED" in result.stdout
    assert "exceeds the RTO of 10s" in result.stdout
    assert "drflow: 2 runbook file(s) in" in result.stderr and "api.yaml" in result.stderr
    assert await count_workflows(dev_env, "WorkflowId STARTS_WITH 'readiness-api-'") == before

    as_json = await drflow(*runbooks, "check", "--all", "--json", "--address", target(dev_env))
    assert as_json.returncode == 4
    assert [r["service"] for r in json.loads(as_json.stdout)] == ["web"]  # stdout stays the reports
    assert "notes.yaml" in as_json.stderr

    one = await drflow(*runbooks, "check", "web", "--address", target(dev_env))
    assert one.returncode == 0, one.stderr  # the others' problems are told, not held against web
    assert "drflow: 2 other runbook file(s)" in one.stderr


async def test_check_without_a_reachable_temporal_says_so_in_one_line() -> None:
    result = await drflow("check", "sandbox-app", "--address", "127.0.0.1:1")
    assert result.returncode == 1
    assert result.stderr.startswith(
        "drflow: cannot reach Temporal at 127.0.0.1:1 namespace default (plaintext)"
    )


async def test_worker_process_serves_readiness_and_stops_cleanly_on_sigterm(
    dev_env: WorkflowEnvironment,
    world: World,  # noqa: F811
) -> None:
    world.write_runbook("web")
    world.write_runbook("api", rto="10s")  # invalid: the worker serves web and says why api is not served
    env = {**os.environ, "TEMPORAL_ADDRESS": target(dev_env), "DRFLOW_RUNBOOKS": str(world.runbooks)}
    worker = await asyncio.create_subprocess_exec(
        *DRFLOW, "worker", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        result = await drflow("--runbooks", str(world.runbooks), "check", "web", "--address", target(dev_env))
        assert result.returncode == 0, result.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(worker.communicate(), 60)
    log = err.decode()
    assert worker.returncode == 0, log
    assert f"worker polling task queue drflow on {target(dev_env)} namespace default (plaintext)" in log
    assert "worker stopped" in log
    assert "serving 1 runbook(s) from" in log and ": web" in log
    assert "runbook not served: " in log and "api.yaml" in log and "exceeds the RTO of 10s" in log
