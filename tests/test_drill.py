"""DR drills: the quarterly schedule, a drill run end to end on the sandbox, cleanup after a worker crash."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from temporalio.client import Client, WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from tests.support.sandbox import SandboxWorld, sandbox_world
from tests.test_cli_check import drflow, target
from tests.test_cli_runbooks import DRFLOW
from tests.test_failover_sandbox import answers, in_recovery
from workers.worker import build_worker
from workflows.common import TASK_QUEUE
from workflows.drill import DrillWorkflow
from workflows.drill_models import DrillReport, DrillRequest, render_drill
from workflows.failover_models import ApprovalInput


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SandboxWorld]:
    monkeypatch.setenv("DRFLOW_DRILL_REPORTS", str(tmp_path / "drills"))
    with sandbox_world() as built:
        built.write_runbook(failback__analysis__duration="1s", failback__analysis__requests=100)
        yield built


def first_tuesdays_of_quarters(after: datetime, count: int) -> list[datetime]:
    found: list[datetime] = []
    year = after.year
    while len(found) < count:
        for month in (1, 4, 7, 10):
            day = date(year, month, 1)
            day += timedelta(days=(1 - day.weekday()) % 7)  # Monday is 0: Tuesday is 1
            moment = datetime(day.year, day.month, day.day, 9, tzinfo=UTC)
            if moment > after and len(found) < count:
                found.append(moment)
        year += 1
    return found


async def test_quarterly_schedule_lists_the_first_tuesdays_and_can_be_paused_and_deleted(
    dev_env: WorkflowEnvironment, world: SandboxWorld
) -> None:
    runbooks, address = str(world.runbooks), target(dev_env)
    created = await drflow("--runbooks", runbooks, "drill", "schedule", world.service, "--address", address)
    assert created.returncode == 0, created.stderr
    expected = first_tuesdays_of_quarters(datetime.now(UTC), 4)
    assert created.stdout.splitlines()[1:] == [f"  {d:%Y-%m-%d} 09:00 UTC (Tuesday)" for d in expected]
    description = await dev_env.client.get_schedule_handle(f"drill-{world.service}").describe()
    policy = description.schedule.policy
    assert policy.catchup_window == timedelta(hours=4)
    again = await drflow("--runbooks", runbooks, "drill", "schedule", world.service, "--address", address)
    assert again.returncode == 1 and "already has a drill schedule" in again.stderr
    paused = await drflow("drill", "pause", world.service, "--address", address)
    assert paused.returncode == 0
    listed = await drflow("drill", "list", "--address", address)
    assert f"drill-{world.service}  paused  next: {expected[0]:%Y-%m-%d} 09:00" in listed.stdout
    assert "last: never ran" in listed.stdout
    deleted = await drflow("drill", "delete", world.service, "--address", address)
    assert deleted.returncode == 0


async def approve_children(client: Client, drill_id: str) -> None:
    """Answer every gate the drill's children open: approvals in a drill are real, a person answers them."""
    gates = [(f"{drill_id}-failover", "failover", "bob"), (f"{drill_id}-failback", "failback", "carol"),
             (f"{drill_id}-failback", "failback-100", "carol")]  # fmt: skip
    for child, gate, approver in gates:
        handle = client.get_workflow_handle(child)
        report: dict[str, Any] | None = None
        try:
            async with asyncio.timeout(180):
                while True:
                    try:
                        report = await handle.query("status", result_type=dict)
                    except (WorkflowQueryFailedError, RPCError):  # the child has not started yet
                        await asyncio.sleep(0.2)
                        continue
                    if report["open_gate"] == gate:
                        break
                    await asyncio.sleep(0.1)
        except TimeoutError:
            # Say where the child stands instead: a bare timeout left nothing to read after a failed run.
            seen = None if report is None else {k: report.get(k) for k in ("outcome", "open_gate", "messages")}
            steps = [] if report is None else [(s["name"], s["outcome"], s.get("error")) for s in report["steps"]]
            raise AssertionError(f"{child} never opened {gate!r}: {seen} steps={steps}") from None
        await handle.execute_update("approve", ApprovalInput(approver=approver, reason=f"drill {gate}"))


async def drill_handle(client: Client, service: str) -> WorkflowHandle[DrillWorkflow, DrillReport]:
    async with asyncio.timeout(60):
        while True:
            async for execution in client.list_workflows(
                f"WorkflowType = 'Drill' AND DrflowService = '{service}'"
            ):
                return client.get_workflow_handle_for(DrillWorkflow.run, execution.id)
            await asyncio.sleep(0.2)


async def test_triggered_drill_fails_over_and_back_and_writes_its_report(
    dev_env: WorkflowEnvironment, world: SandboxWorld, tmp_path: Path
) -> None:
    address = target(dev_env)
    async with build_worker(dev_env.client, world.runbooks, task_queue=TASK_QUEUE):
        created = await drflow(
            "--runbooks", str(world.runbooks), "drill", "schedule", world.service, "--address", address
        )
        assert created.returncode == 0, created.stderr
        started = await drflow("drill", "run", world.service, "--watch", "0", "--address", address)
        assert started.returncode == 0, started.stderr
        handle = await drill_handle(dev_env.client, world.service)
        assert started.stdout.startswith(f"started drill {handle.id}  ")
        assert f"(triggered drill-{world.service})" in started.stdout and "done" not in started.stdout
        again = await drflow("drill", "run", world.service, "--address", address)
        assert again.returncode == 1 and f"already running ({handle.id})" in again.stderr
        await approve_children(dev_env.client, handle.id)
        report = await handle.result()
        chart = tmp_path / "rto.svg"
        history = await drflow("drill", "report", world.service, "--chart", str(chart), "--address", address)
        description = await dev_env.client.get_schedule_handle(f"drill-{world.service}").describe()
        await dev_env.client.get_schedule_handle(f"drill-{world.service}").delete()
    assert report.outcome in ("passed", "findings"), report.deviations
    assert report.restored
    assert report.failover is not None and report.failover.outcome == "completed"
    assert report.failback is not None and report.failback.outcome == "completed"
    assert report.rto_achieved_seconds is not None and report.rto_objective_seconds == 120
    assert report.rpo_achieved_seconds == 0.0
    assert description.info.num_actions == 1  # the refused second run triggered nothing
    assert not in_recovery(world, "region-a") and in_recovery(world, "region-b")
    assert await answers(world) == [["127.0.1.1"], ["127.0.1.1"]]
    assert history.returncode == 0, history.stderr
    assert f"| {handle.id} | " in history.stdout and f"| {report.outcome} | " in history.stdout
    svg = chart.read_text()
    assert svg.startswith("<svg") and "objective 120s" in svg and handle.id in svg
    json_path, md_path = (Path(p) for p in report.report_files)
    assert json.loads(json_path.read_text())["drill_id"] == handle.id
    markdown = md_path.read_text()
    assert markdown.startswith(f"# DR drill {handle.id}: {world.service}:")
    assert "| RTO | 120.0s |" in markdown and "Starting state restored: yes" in markdown


async def test_drill_survives_a_killed_worker_and_restores_the_starting_state(
    dev_env: WorkflowEnvironment, world: SandboxWorld, task_queue: str
) -> None:
    env = {**os.environ, "TEMPORAL_ADDRESS": target(dev_env), "DRFLOW_RUNBOOKS": str(world.runbooks)}

    async def spawn() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *DRFLOW, "worker", "--task-queue", task_queue, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    first = await spawn()
    handle = await dev_env.client.start_workflow(
        DrillWorkflow.run,
        DrillRequest(service=world.service),
        id=f"drill-{world.service}-crash",
        task_queue=task_queue,
    )
    approving = asyncio.create_task(approve_children(dev_env.client, handle.id))
    failover = dev_env.client.get_workflow_handle(f"{handle.id}-failover")
    async with asyncio.timeout(120):
        while True:
            try:
                report = await failover.query("status", result_type=dict)
            except (WorkflowQueryFailedError, RPCError):  # not started yet
                report = None
            if report is not None and any(
                s["name"].startswith("wait out the old TTL") for s in report["steps"]
            ):
                break
            await asyncio.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    second = await spawn()
    try:
        await approving
        result = await asyncio.wait_for(handle.result(), 300)
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
    assert result.restored, result.deviations
    assert not in_recovery(world, "region-a") and in_recovery(world, "region-b")
    assert await answers(world) == [["127.0.1.1"], ["127.0.1.1"]]


async def test_drill_run_without_a_schedule_shows_the_waiting_child_and_no_verdict_before_its_checks(
    dev_env: WorkflowEnvironment, world: SandboxWorld
) -> None:
    address = target(dev_env)
    async with build_worker(dev_env.client, world.runbooks, task_queue=TASK_QUEUE):
        started = await drflow(
            "drill", "run", world.service, "--watch", "150", "--address", address, timeout=200
        )
        assert started.returncode == 0, started.stderr
        first = started.stdout.splitlines()[0]
        match = re.fullmatch(
            rf"started drill (drill-{world.service}-\S+)  (\S+)  \(no schedule: started directly\)", first
        )
        assert match, started.stdout
        drill_id = match.group(1)
        assert match.group(2).endswith(f"/workflows/{quote(drill_id, safe='')}")  # its Web UI page
        assert "done" not in started.stdout
        child = f"{drill_id}-failover"
        assert (
            f"… {child} (failover) waiting for gate failover: drflow approve {child} --as <you>"
            in started.stdout
        )
        assert f"follow it: drflow drill status {drill_id} --follow" in started.stdout

        running = await drflow("drill", "status", world.service, "--address", address)
        assert running.returncode == 0, running.stderr
        assert running.stdout.startswith(f"# DR drill {drill_id}: {world.service}: RUNNING")
        assert "- now: failover running" in running.stdout
        assert f"- failover: {child} running" in running.stdout
        assert "Starting state restored: not checked yet" in running.stdout
        assert "- not assessed yet: the drill is running" in running.stdout
        assert "every objective was met" not in running.stdout and "restored: NO" not in running.stdout
        assert f"drflow approve {child} --as <you>" in running.stdout.split("## Waiting for a person")[1]

        again = await drflow("drill", "run", world.service, "--address", address)
        assert again.returncode == 1, again.stdout
        assert f"a drill of {world.service} is already running ({drill_id})" in again.stderr

        await approve_children(dev_env.client, drill_id)
        report = await dev_env.client.get_workflow_handle(drill_id, result_type=DrillReport).result()
        ended = await drflow("drill", "status", drill_id, "--address", address)
    assert report.restored and report.phase is None
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout.startswith(f"# DR drill {drill_id}: {world.service}: {report.outcome.upper()}")
    assert "Starting state restored: yes" in ended.stdout
    assert "not checked yet" not in ended.stdout and "not assessed yet" not in ended.stdout
    findings = ended.stdout.split("## Findings")[1]
    assert ("- none: every objective was met" in findings) == (not report.findings)
    assert "## Waiting for a person" not in ended.stdout


async def test_drill_run_wait_follows_the_drill_and_its_waiting_children_to_the_report(
    dev_env: WorkflowEnvironment, world: SandboxWorld
) -> None:
    """An operator who only reads the output: each gate is answered when, and because, a line says so."""
    approvers = {"failover": "bob", "failback": "carol", "failback-100": "carol"}
    waiting = re.compile(r"… (\S+) \((?:failover|failback)\) waiting for gate (\S+): drflow approve (\S+) ")
    answered: list[str] = []
    async with build_worker(dev_env.client, world.runbooks, task_queue=TASK_QUEUE):
        process = await asyncio.create_subprocess_exec(
            *DRFLOW, "drill", "run", world.service, "--wait", "--address", target(dev_env),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None
        lines: list[str] = []
        async with asyncio.timeout(300):
            while line := (await process.stdout.readline()).decode():
                lines.append(line)
                if found := waiting.search(line):
                    child, gate, command_id = found.groups()
                    assert command_id == child
                    answered.append(gate)
                    update = ApprovalInput(approver=approvers[gate], reason=f"drill {gate}")
                    await dev_env.client.get_workflow_handle(child).execute_update("approve", update)
            await process.wait()
    out = "".join(lines)
    assert process.returncode == 0, out  # passed: exit 0 (findings would exit 1)
    drill_id = out.split()[2]
    assert out.startswith(f"started drill {drill_id}  ") and drill_id.startswith(f"drill-{world.service}-")
    assert answered == ["failover", "failback", "failback-100"]
    assert "… failover running" in out and "… failback running (restoring the starting state)" in out
    assert (
        out.index("… failover running") < out.index("failover: completed") < out.index("failback: completed")
    )
    final = out.split(f"# DR drill {drill_id}: {world.service}: ")[1]
    assert final.startswith("PASSED")
    assert "Starting state restored: yes" in final and "- none: every objective was met" in final


def test_finished_reports_are_written_as_before_and_older_reports_still_decode() -> None:
    """``phase`` lives only while a drill runs: a finished report has no such key (older CLIs decode it),
    and a report from before the field decodes and renders its verdicts."""
    started = datetime(2026, 1, 6, 9, tzinfo=UTC)
    running = DrillReport(
        service="s", drill_id="drill-s-1", scenario="x", runbook_sha256=None, started_at=started,
        phase="failback",
    )  # fmt: skip
    assert json.loads(running.model_dump_json())["phase"] == "failback"
    finished = running.model_copy(update={"phase": None, "outcome": "passed", "restored": True})
    assert "phase" not in json.loads(finished.model_dump_json())
    older = DrillReport.model_validate_json(
        json.dumps({**json.loads(finished.model_dump_json()), "outcome": "findings", "restored": False})
    )
    assert older.phase is None
    text = render_drill(older)
    assert "Starting state restored: NO" in text and "not assessed yet" not in text
    older_running = DrillReport.model_validate_json(
        json.dumps({**json.loads(running.model_dump_json()), "phase": None})
    )
    assert "- now: failover running" in render_drill(older_running)  # no failover recorded yet
