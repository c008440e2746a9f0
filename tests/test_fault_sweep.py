"""kill -9 of the worker at every activity boundary of a failover and of a failback (``make faults``).

The boundaries are read from a clean run's own history (every activity it scheduled, in order, counted per
type), never hand-listed. Then one run per boundary and side, each on a fresh sandbox: a worker started with
``DRFLOW_FAULT_CRASH_AT`` (activities/faults/crash_point.py) kills itself there, ``before`` the activity runs
or ``after`` it did its work and before the server hears of it; a replacement worker starts as soon as it
is gone. Every run must complete with exactly one DNS change (the SOA serial), one promotion (timeline 2),
the client-visible answers moved, and a report equal to the clean run's except timings and attempts.

The table of each sweep is written to ``$DRFLOW_SWEEP_REPORT`` (default ``build/fault-sweep``) and printed;
docs/reliability.md holds the figures of the last run on this machine. A sweep takes 15 to 30 minutes on 2
cores, so it is not part of ``make test`` (marker ``sweep``); ``make faults`` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowQueryFailedError, WorkflowUpdateFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.faults.crash_point import CRASH_ENV, CrashAt
from tests.support.sandbox import SandboxWorld, sandbox_world
from tests.test_cli_check import target
from tests.test_cli_runbooks import DRFLOW
from tests.test_failover_sandbox import answers, in_recovery
from workers.sandbox.named import soa_serial
from workers.worker import build_worker
from workflows.failback import FailbackWorkflow
from workflows.failback_models import FailbackRequest
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverRequest, MoveReport

pytestmark = [pytest.mark.faults, pytest.mark.sweep, pytest.mark.timeout(3 * 3600)]

REGION_A, REGION_B = "127.0.1.1", "127.0.2.1"
RUN_TIMEOUT = 240


@dataclass(frozen=True)
class Kind:
    workflow_type: str
    approver: str
    target: str  # the address the record must serve at the end
    timeline: int  # the promoted side's timeline at the end: one promotion per move

    async def prepare(self, env: WorkflowEnvironment, world: SandboxWorld) -> None:
        """The state the run starts from: a failback needs the service failed over first (no crash)."""
        if self.workflow_type != "Failback":
            return
        queue = f"prepare-{uuid.uuid4().hex[:8]}"
        async with build_worker(env.client, world.runbooks, task_queue=queue):
            handle = await env.client.start_workflow(
                FailoverWorkflow.run,
                FailoverRequest(service=world.service, target="region-b", reason="before the failback",
                                requested_by="alice"),
                id=f"failover-{uuid.uuid4().hex[:8]}", task_queue=queue,
            )  # fmt: skip
            answering = asyncio.create_task(answer_gates(env.client, handle.id, "bob"))
            report = await asyncio.wait_for(handle.result(), RUN_TIMEOUT)
            answering.cancel()
        assert report.outcome == "completed", report.messages

    async def start(
        self, env: WorkflowEnvironment, world: SandboxWorld, queue: str
    ) -> WorkflowHandle[Any, Any]:
        if self.workflow_type == "Failover":
            return await env.client.start_workflow(
                FailoverWorkflow.run,
                FailoverRequest(service=world.service, target="region-b", reason="sweep", requested_by="alice"),
                id=f"sweep-failover-{uuid.uuid4().hex[:8]}", task_queue=queue,
            )  # fmt: skip
        return await env.client.start_workflow(
            FailbackWorkflow.run,
            FailbackRequest(service=world.service, reason="sweep", requested_by="alice", prepare=True),
            id=f"sweep-failback-{uuid.uuid4().hex[:8]}", task_queue=queue,
        )  # fmt: skip


FAILOVER = Kind("Failover", approver="bob", target=REGION_B, timeline=2)
FAILBACK = Kind("Failback", approver="carol", target=REGION_A, timeline=3)


async def answer_gates(client: Client, workflow_id: str, approver: str) -> None:
    """Approve every gate the run opens, as the person on call would; runs until cancelled."""
    handle = client.get_workflow_handle(workflow_id)
    answered: set[str] = set()
    while True:
        try:
            report = await handle.query("status", result_type=dict)
            gate = report.get("open_gate")
            if gate and gate not in answered:
                await handle.execute_update(
                    "approve", ApprovalInput(approver=approver, reason=f"sweep {gate}")
                )
                answered.add(gate)
        except (RPCError, WorkflowQueryFailedError, WorkflowUpdateFailedError):
            pass  # no worker to answer while the killed one is replaced, or the gate just closed: ask again
        await asyncio.sleep(0.2)


def boundaries(history_events: Any, workflow_type: str) -> list[CrashAt]:
    """Every activity of the run, in the order it was scheduled, numbered per type: both sides of each."""
    seen: Counter[str] = Counter()
    found: list[CrashAt] = []
    for event in history_events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            seen[name] += 1
            for when in ("before", "after"):
                found.append(CrashAt(when, workflow_type, name, seen[name]))
    return found


@dataclass
class RunResult:
    crash: CrashAt | None
    seconds: float
    died: str
    problems: list[str] = field(default_factory=list)
    shape: list[Any] = field(default_factory=list)


def shape_of(report: MoveReport) -> list[Any]:
    """The report without timings or attempts: what a crash may not change."""
    promotion = report.promotion
    return [
        report.outcome,
        [(s.name, s.outcome) for s in report.steps],
        [(a.gate, a.decision, a.by) for a in report.approvals],
        [(d.step, d.decision) for d in report.decisions],
        None if report.fence is None else (report.fence.region, report.fence.method, report.fence.fenced),
        None if report.data_loss is None else report.data_loss.zero_proven,
        None
        if promotion is None
        else (promotion.region, promotion.timeline, promotion.writable, promotion.already_primary),
        None if (dns := report.dns_change) is None else (dns.applied, dns.before.values, dns.after.values),
        None if report.propagation is None else report.propagation.converged,
        None if report.health is None else report.health.passed,
    ]


@contextlib.asynccontextmanager
async def workers(
    env: WorkflowEnvironment, world: SandboxWorld, queue: str, crash: CrashAt | None
) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """A worker that crashes at ``crash`` and, once it is gone, its replacement; yields how the first ended."""
    base = {**os.environ, "TEMPORAL_ADDRESS": target(env), "DRFLOW_RUNBOOKS": str(world.runbooks)}
    base.pop(CRASH_ENV, None)

    async def spawn(extra: dict[str, str]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *DRFLOW, "worker", "--task-queue", queue, env={**base, **extra},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    first = await spawn({} if crash is None else {CRASH_ENV: str(crash)})
    replacement: list[asyncio.subprocess.Process] = []

    async def replace() -> str:
        code = await first.wait()
        replacement.append(await spawn({}))
        return "kill -9" if code == -signal.SIGKILL else f"exit {code}"

    watcher = asyncio.create_task(replace())

    async def first_end() -> str:
        return await watcher if watcher.done() else "still running"

    try:
        yield first_end
    finally:
        for process in [first, *replacement]:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await process.wait()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def run_once(env: WorkflowEnvironment, kind: Kind, crash: CrashAt | None) -> tuple[RunResult, Any]:
    with sandbox_world() as world:
        world.write_runbook(failback__analysis__duration="1s", failback__analysis__requests=50)
        await kind.prepare(env, world)
        names = world.sandbox._named_pair()
        serial_before = soa_serial(world.runbook.dns.zone, names.primary_port) or 0
        queue = f"sweep-{uuid.uuid4().hex[:8]}"
        async with workers(env, world, queue, crash) as first_end:
            started = time.monotonic()
            handle = await kind.start(env, world, queue)
            answering = asyncio.create_task(answer_gates(env.client, handle.id, kind.approver))
            try:
                report = await asyncio.wait_for(handle.result(), RUN_TIMEOUT)
            except TimeoutError:
                answering.cancel()
                return RunResult(
                    crash, RUN_TIMEOUT, await first_end(), [f"no result in {RUN_TIMEOUT}s"]
                ), None
            seconds = time.monotonic() - started
            answering.cancel()
            died = await first_end()
        result = RunResult(crash, seconds, died, shape=shape_of(report))
        problems = result.problems
        if crash is not None and died != "kill -9":
            problems.append(f"the boundary was never reached (first worker: {died})")
        if report.outcome != "completed":
            problems.append(f"outcome {report.outcome}: {report.messages}")
        changes = (soa_serial(world.runbook.dns.zone, names.primary_port) or 0) - serial_before
        if changes != 1:
            problems.append(f"{changes} DNS changes (SOA serial), not 1")
        if report.promotion is None or report.promotion.timeline != kind.timeline:
            timeline = None if report.promotion is None else report.promotion.timeline
            problems.append(f"timeline {timeline}, not {kind.timeline}: not exactly one promotion")
        promoted = "region-b" if kind is FAILOVER else "region-a"
        if in_recovery(world, promoted):
            problems.append(f"{promoted} is still a standby")
        served = await answers(world)
        if served != [[kind.target], [kind.target]]:
            problems.append(f"the nameservers answer {served}")
        history = await handle.fetch_history()
        return result, history.events


@pytest.mark.parametrize("kind", [FAILOVER, FAILBACK], ids=["failover", "failback"])
async def test_a_worker_killed_at_every_boundary_changes_nothing_twice(
    dev_env: WorkflowEnvironment, kind: Kind
) -> None:
    clean, events = await run_once(dev_env, kind, None)
    assert not clean.problems, clean.problems
    points = boundaries(events, kind.workflow_type)
    only = os.environ.get("DRFLOW_SWEEP_ONLY")  # e.g. "after:Failover/db_promote#1", to rerun one row
    if only:
        points = [p for p in points if str(p) in only.split(",")]
    results: list[RunResult] = []
    for point in points:
        result, _ = await run_once(dev_env, kind, point)
        if result.shape and result.shape != clean.shape:
            result.problems.append(f"report differs from the clean run: {diff(clean.shape, result.shape)}")
        results.append(result)
    table = render(kind, clean, results)
    print(table)
    write_table(kind, table)
    failed = [f"{r.crash}: {'; '.join(r.problems)}" for r in results if r.problems]
    assert not failed, "\n".join(failed)


def write_table(kind: Kind, table: str) -> None:
    folder = Path(os.environ.get("DRFLOW_SWEEP_REPORT", "build/fault-sweep"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{kind.workflow_type.lower()}.md").write_text(table)


def diff(clean: list[Any], other: list[Any]) -> str:
    labels = ["outcome", "steps", "approvals", "decisions", "fence", "zero loss", "promotion", "dns",
              "propagation", "health"]  # fmt: skip
    return "; ".join(
        f"{label}: {a!r} -> {b!r}" for label, a, b in zip(labels, clean, other, strict=True) if a != b
    )


def render(kind: Kind, clean: RunResult, results: list[RunResult]) -> str:
    lines = [
        f"{kind.workflow_type}: clean run {clean.seconds:.1f}s; {len(results)} crashed runs",
        "",
        "| kill -9 | first worker | run (s) | added (s) | DNS changes, promotions, report |",
        "|---|---|---:|---:|---|",
    ]
    for r in results:
        verdict = "1, 1, equal" if not r.problems else "; ".join(r.problems)
        lines.append(
            f"| `{r.crash}` | {r.died} | {r.seconds:.1f} | {r.seconds - clean.seconds:+.1f} | {verdict} |"
        )
    added = sorted(r.seconds - clean.seconds for r in results)
    if added:
        lines += ["", f"added time: median {added[len(added) // 2]:.1f}s, max {added[-1]:.1f}s"]
    return "\n".join(lines) + "\n"
