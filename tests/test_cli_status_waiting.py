"""`drflow status` without an id, as a process against the real dev server: the runs that wait for a person."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.search_attributes import STEP_ATTR
from tests.support.failover import StatelessService, stateless_service, wait_for_decision, wait_for_gate
from tests.test_cli_check import drflow, target
from tests.test_cli_runbooks import DRFLOW
from workers.sandbox.named import NamedPair
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, DecisionInput, FailoverReport, FailoverRequest


@pytest_asyncio.fixture
async def served(
    dev_env: WorkflowEnvironment, tmp_path: Path, dns_world: NamedPair, task_queue: str
) -> AsyncIterator[StatelessService]:
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    with stateless_service(runbooks, dns_world) as service:
        async with build_worker(dev_env.client, runbooks, task_queue=task_queue):
            yield service


async def step_attribute(handle: WorkflowHandle[object, object], expected: str) -> None:
    """Visibility is eventually consistent: wait until DrflowStep reads ``expected``."""
    async with asyncio.timeout(20):
        while True:
            if (await handle.describe()).typed_search_attributes.get(STEP_ATTR) == expected:
                return
            await asyncio.sleep(0.2)


async def test_status_without_id_lists_an_open_gate_and_a_failed_step_with_the_commands_that_answer_them(
    dev_env: WorkflowEnvironment, served: StatelessService, task_queue: str
) -> None:
    service = served.service
    handle = await dev_env.client.start_workflow(
        FailoverWorkflow.run,
        FailoverRequest(service=service, target="region-b", reason="drill", requested_by="alice"),
        id=f"failover-{service}-{uuid.uuid4().hex[:6]}",
        task_queue=task_queue,
    )
    gate: FailoverReport = await wait_for_gate(dev_env.client, handle.id)
    await step_attribute(handle, "awaiting-approval")
    assert gate.plan is not None and gate.gate_checksum == gate.plan.checksum, (
        "named without a people file too"
    )

    listed = await drflow("status", "--address", target(dev_env))
    assert listed.returncode == 0, listed.stderr
    assert f"{handle.id}  failover of {service}  waits for gate failover  since " in listed.stdout
    assert (
        f'  drflow approve {handle.id} --as <you> --plan {gate.gate_checksum} --reason "..."\n'
        in listed.stdout
    )
    only_other = await drflow("status", "--service", "no-such-service", "--address", target(dev_env))
    assert only_other.stdout == "nothing waits for a person on no-such-service\n", only_other.stderr

    # Health fails after the cut-over: the validation step waits for a decision, and the list says so.
    served.region_b.behaviour.status = 503
    await handle.execute_update(
        FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go", channel="cli")
    )
    waiting = await wait_for_decision(dev_env.client, handle.id, timeout=120)
    assert waiting.waiting_since is not None
    await step_attribute(handle, "awaiting-decision")
    listed = await drflow("status", "--service", service, "--address", target(dev_env))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("1 run waits for a person:\n"), listed.stdout
    assert (
        f"waits for decision on {waiting.waiting_step}  since {waiting.waiting_since:%Y-%m-%d %H:%M:%S}"
        in (listed.stdout)
    )
    assert f'  drflow decide {handle.id} retry|skip|abort --as <you> --reason "..."\n' in listed.stdout

    await handle.execute_update(
        FailoverWorkflow.decide, DecisionInput(decision="abort", operator="bob", reason="test", channel="cli")
    )
    report = await dev_env.client.get_workflow_handle(handle.id, result_type=FailoverReport).result()
    assert report.outcome == "aborted", report.messages
    assert report.waiting_since is None
    after = await drflow("status", "--service", service, "--address", target(dev_env))
    assert after.stdout == f"nothing waits for a person on {service}\n", after.stderr

    # The live view: plain lines through a pipe (CI logs), the same lines coloured by rich on a terminal.
    piped = await drflow("status", handle.id, "--follow", "--address", target(dev_env))
    assert piped.returncode == 1, "an aborted run exits 1"
    assert "\x1b[" not in piped.stdout and f"✗ {waiting.waiting_step}" in piped.stdout, piped.stdout
    code, on_tty = await asyncio.to_thread(
        drflow_on_tty, "status", handle.id, "--follow", "--address", target(dev_env)
    )
    assert code == 1 and "\x1b[" in on_tty and f"{waiting.waiting_step}" in on_tty, on_tty


def drflow_on_tty(*args: str) -> tuple[int, str]:
    """The installed command with its stdout on a pseudo-terminal, as a person at a terminal runs it."""
    main, child = pty.openpty()
    process = subprocess.Popen([*DRFLOW, *args], stdout=child, stderr=subprocess.DEVNULL)
    os.close(child)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    return process.wait(60), b"".join(chunks).decode()


async def test_a_gate_whose_worker_is_gone_is_still_listed_with_a_note_to_start_one(
    dev_env: WorkflowEnvironment, tmp_path: Path, dns_world: NamedPair, task_queue: str
) -> None:
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    with stateless_service(runbooks, dns_world) as served:
        async with build_worker(dev_env.client, runbooks, task_queue=task_queue):
            handle = await dev_env.client.start_workflow(
                FailoverWorkflow.run,
                FailoverRequest(service=served.service, target="region-b", reason="drill", requested_by="al"),
                id=f"failover-{served.service}",
                task_queue=task_queue,
            )
            await wait_for_gate(dev_env.client, handle.id)
            await step_attribute(handle, "awaiting-approval")
        # the worker stopped (as after a crash): nobody answers the status query, the run still waits
        listed = await drflow("status", "--service", served.service, "--address", target(dev_env))
        assert listed.returncode == 0, listed.stderr
        assert f"{handle.id}  failover of {served.service}  waits for a gate  since " in listed.stdout
        assert "no worker answers its status query: start one (drflow worker)" in listed.stdout
        await handle.terminate("test over")
