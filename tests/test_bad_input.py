"""Bad input fails the run at once and says why, as the Web UI and the raw `temporal` CLI send it.

Each workflow type a person can start gets an invalid input as plain JSON (the UI's Start Workflow form and
``temporal workflow start --input`` send nothing else): the run must end Failed within seconds, with the
field path and what it allows in the failure message, and without a single workflow task failure (the retry
loop of "Failed decoding arguments"). A valid input still runs the workflow.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from activities.errors import ErrorType
from tests.support.temporal import venv_binary
from workers.audit.history import read_history_file
from workers.worker import WORKFLOWS, build_worker
from workflows.runner import workflow_runner

HISTORIES = Path(__file__).parent / "histories"

# (workflow type, invalid input, what the failure message must say)
BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    (
        "Failover",
        {"service": "app", "target": "b", "reason": "test", "mode": "yolo"},
        "mode: Input should be 'planned', 'emergency' or 'drill'",
    ),
    (
        "Failback",
        {"service": "app", "reason": "test", "mode": "emergency"},
        "mode: Input should be 'planned' or 'drill'",
    ),
    (
        "Drill",
        {"service": "app", "approver_unavailible": "alice"},
        "approver_unavailible: unknown field (a typo? the fields are service, target,",
    ),
    ("Readiness", {"archive": True}, "service: Field required"),
    ("ServiceLock", {"servcie": "app"}, "service: Field required"),
    ("ArchiveRun", {"workflow_id": "x", "run_id": "y"}, "kind: Field required"),
]
PERSON_STARTABLE = [case for case in BAD_INPUTS if case[0] in ("Failover", "Failback", "Drill", "Readiness")]


@pytest_asyncio.fixture
async def worker_queue(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[str]:
    """The product's worker (every workflow, every activity) on a queue of its own, with no runbooks."""
    queue = f"bad-input-{uuid.uuid4()}"
    async with build_worker(dev_env.client, tmp_path, task_queue=queue):
        yield queue


async def failure_of(handle: WorkflowHandle[Any, Any]) -> ApplicationError:
    """The run's failure, waited for a few seconds only: a retry loop would time out here."""
    with pytest.raises(WorkflowFailureError) as raised:
        await asyncio.wait_for(handle.result(), timeout=10)
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError), cause
    return cause


async def workflow_task_failures(handle: WorkflowHandle[Any, Any]) -> int:
    history = await handle.fetch_history()
    return sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED for e in history.events)


@pytest.mark.parametrize(("workflow_type", "data", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
async def test_invalid_input_from_a_client_fails_the_run(
    dev_env: WorkflowEnvironment, worker_queue: str, workflow_type: str, data: dict[str, Any], message: str
) -> None:
    handle = await dev_env.client.start_workflow(
        workflow_type, data, id=f"bad-{workflow_type}-{uuid.uuid4()}", task_queue=worker_queue
    )
    failure = await failure_of(handle)
    assert message in failure.message
    assert failure.type == ErrorType.INVALID_INPUT
    assert failure.non_retryable
    assert await workflow_task_failures(handle) == 0


@pytest.mark.parametrize(
    ("workflow_type", "data", "message"), PERSON_STARTABLE, ids=[c[0] for c in PERSON_STARTABLE]
)
async def test_invalid_input_from_the_temporal_cli_fails_the_run(
    dev_env: WorkflowEnvironment, worker_queue: str, workflow_type: str, data: dict[str, Any], message: str
) -> None:
    workflow_id = f"bad-cli-{workflow_type}-{uuid.uuid4()}"
    await start_with_cli(dev_env.client, workflow_type, workflow_id, worker_queue, json.dumps(data))
    failure = await failure_of(dev_env.client.get_workflow_handle(workflow_id))
    assert message in failure.message
    assert await workflow_task_failures(dev_env.client.get_workflow_handle(workflow_id)) == 0


async def test_input_that_is_not_an_object_fails_the_run(
    dev_env: WorkflowEnvironment, worker_queue: str
) -> None:
    workflow_id = f"bad-cli-string-{uuid.uuid4()}"
    await start_with_cli(dev_env.client, "Failover", workflow_id, worker_queue, '"fail over app to b"')
    failure = await failure_of(dev_env.client.get_workflow_handle(workflow_id))
    assert "(input): Input should be a valid dictionary or instance of FailoverRequest" in failure.message


@pytest.mark.parametrize("workflow_type", ["Failover", "Failback", "Drill", "Readiness"])
async def test_a_start_without_input_fails_the_run_and_names_the_fields(
    dev_env: WorkflowEnvironment, worker_queue: str, workflow_type: str
) -> None:
    """An empty start form, or ``temporal workflow start`` without ``--input``: zero arguments, which the SDK
    would pass to the workflow as they are (a TypeError in its constructor, retried for ever)."""
    workflow_id = f"no-input-{workflow_type}-{uuid.uuid4()}"
    await start_with_cli(dev_env.client, workflow_type, workflow_id, worker_queue)
    handle = dev_env.client.get_workflow_handle(workflow_id)
    failure = await failure_of(handle)
    assert failure.type == ErrorType.INVALID_INPUT and failure.non_retryable
    assert "no input; the workflow takes exactly one input, a JSON object with the fields service," in (
        failure.message
    )
    assert await workflow_task_failures(handle) == 0


async def test_two_inputs_fail_the_run_and_the_history_keeps_what_was_sent(
    dev_env: WorkflowEnvironment, worker_queue: str
) -> None:
    workflow_id = f"two-inputs-{uuid.uuid4()}"
    await start_with_cli(
        dev_env.client, "Failover", workflow_id, worker_queue, '{"service": "app"}', '{"target": "b"}'
    )
    handle = dev_env.client.get_workflow_handle(workflow_id)
    failure = await failure_of(handle)
    assert (
        "invalid input for FailoverRequest: 2 inputs; the workflow takes exactly one input" in failure.message
    )
    assert await workflow_task_failures(handle) == 0
    history = await handle.fetch_history()
    start = history.events[0].workflow_execution_started_event_attributes
    assert [json.loads(p.data) for p in start.input.payloads] == [{"service": "app"}, {"target": "b"}]
    # the guard rewrites the activation, not the history: a replay takes the same path
    replayer = Replayer(
        workflows=WORKFLOWS, data_converter=pydantic_data_converter, workflow_runner=workflow_runner()
    )
    await replayer.replay_workflow(history)


async def test_valid_input_still_runs_the_workflow(dev_env: WorkflowEnvironment, worker_queue: str) -> None:
    """Decoded as before: the run goes on to load the runbook, which this worker does not have."""
    workflow_id = f"good-cli-{uuid.uuid4()}"
    await start_with_cli(dev_env.client, "Readiness", workflow_id, worker_queue, '{"service": "nowhere"}')
    failure = await failure_of(dev_env.client.get_workflow_handle(workflow_id))
    assert failure.type == ErrorType.UNKNOWN_SERVICE


async def start_with_cli(
    client: Client, workflow_type: str, workflow_id: str, queue: str, *inputs: str
) -> None:
    """``temporal workflow start`` as a person types it: the real CLI binary, JSON on the command line."""
    command = [
        venv_binary("temporal"), "workflow", "start",
        "--address", client.service_client.config.target_host, "--namespace", client.namespace,
        "--type", workflow_type, "--task-queue", queue, "--workflow-id", workflow_id,
        *[arg for data in inputs for arg in ("--input", data)],
    ]  # fmt: skip
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


async def test_input_that_is_not_json_is_refused_before_a_run_starts(dev_env: WorkflowEnvironment) -> None:
    """What the payload converter could not even parse never reaches a worker: the CLI refuses it."""
    client = dev_env.client
    command = [
        venv_binary("temporal"), "workflow", "start", "--address", client.service_client.config.target_host,
        "--type", "Failover", "--task-queue", "nowhere", "--workflow-id", f"bad-json-{uuid.uuid4()}",
        "--input", "{mode: yolo}",
    ]  # fmt: skip
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0, done.stdout
    assert "json" in done.stderr.lower(), done.stderr


async def test_a_run_past_its_first_task_is_never_failed_by_its_input() -> None:
    """Only a new run fails on bad input. A run already under way whose recorded input a newer model refuses
    (a deploy that narrowed a request) replays its first task into a failure the history contradicts: a
    nondeterminism error, so its task fails and waits for a fixed worker, as before, and nothing is undone.
    The stored history is copied in memory with its input edited; the file is not touched."""
    recorded = read_history_file(HISTORIES / "failover-planned.json")
    edited = recorded.to_json_dict()
    start = edited["events"][0]["workflowExecutionStartedEventAttributes"]["input"]["payloads"][0]
    request = json.loads(base64.b64decode(start["data"]))
    start["data"] = base64.b64encode(json.dumps({**request, "mode": "yolo"}).encode()).decode()
    replayer = Replayer(
        workflows=list(WORKFLOWS), data_converter=pydantic_data_converter, workflow_runner=workflow_runner()
    )
    with pytest.raises(NondeterminismError):
        await replayer.replay_workflow(WorkflowHistory.from_json(recorded.workflow_id, edited))
