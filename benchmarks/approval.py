"""Approval latency: from a signed Slack click arriving at the gateway to the workflow's Update accepted.

Run by hand from the repository root (never from the tests):

    .venv/bin/python benchmarks/approval.py --clicks 200

It starts a fresh Temporal dev server (in memory, or ``--db-file`` for SQLite), the Slack stand-in of the
tests (``tests/support/slack/``), an in-process worker and the real gateway in HTTP mode, all on
loopback. One workflow runs the real approval gates (``ApprovalGates._gate`` in workflows/approval_gates.py,
with its Slack mirror: approvers looked up, the gate message posted, then updated) ``--clicks`` times in a
row. For each gate the benchmark waits until the stand-in holds the gate message, builds the
``block_actions`` payload Slack would send for a click on its Approve button, signs it with the signing
secret, and POSTs it to the gateway's Request URL. Figures (ms):

- click → HTTP 200: the POST's round trip. The gateway answers after the Update has completed (validator,
  then handler), so this is the click's full effect as Slack sees it, plus the loopback HTTP hop.
- click → UpdateAccepted: from the moment the POST was sent to the ``WorkflowExecutionUpdateAccepted``
  event's time in the history (same host clock; the server stamps events in milliseconds).
- bare Update: the same gates approved with ``execute_update`` straight from the client, for reference.

With ``--signed`` the same workflow verifies who answers, as a run with a people file does: the gateway
attests each click with its Ed25519 key and the Update validator verifies the attestation (and the
handler again); the bare leg becomes the CLI's path: ``ssh-keygen -Y sign`` of the decision, then the
Update, whose validator verifies the SSH signature. Keys are made with the real ``ssh-keygen``.

Figures are printed; nothing is asserted. Target (from the issue): p99 ≤ 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx
from pydantic import Field
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

from activities.approvals.attestations import GatewaySigner
from activities.runbook import LoadedPeople, LoadPeopleRequest
from activities.slack.activities import SLACK_ACTIVITIES
from runbooks.model import Runbook, StrictModel
from runbooks.people import PeopleSnapshot, parse_people
from tests.support.slack.standin import Message, SlackStandIn, signed, slack_standin
from tests.support.slack.workspace import BOT_TOKEN, SIGNING_SECRET
from tests.support.temporal import start_dev_server
from workers.cli.signing import Signer, sign_decision
from workers.gateway import GatewayConfig
from workers.gateway.server import running_gateway
from workflows.failover_models import ApprovalInput, RunReport
from workflows.run_control import ControlledRun
from workflows.runner import workflow_runner

RUNBOOK = {
    "service": "bench",
    "objectives": {"rto": "5m", "rpo": "30s"},
    "primary": "region-a",
    "regions": {"region-a": {"address": "192.0.2.10"}, "region-b": {"address": "192.0.2.20"}},
    "dns": {
        "provider": "rfc2136", "zone": "bench.test.", "record": "app.bench.test.", "ttl": 30,
        "server": {"name": "ns1.bench.test.", "address": "127.0.0.1"},
        "tsig": {"name": "bench", "secret": "env:UNUSED"},
    },
    "health": [{"name": "app", "http": {"url": "http://{address}/healthz"}}],
    "approvals": {
        "approvers": ["bob"], "separation_of_duties": True, "timeout": "30m",
        "slack": {"channel": "C0DRFLOW", "approvers": ["U02BOB"], "usergroup": "S0ONCALL",
                  "identities": {"U01ALICE": "alice"}},
    },
}  # fmt: skip


class BenchInput(StrictModel):
    runbook: Runbook
    gates: int = Field(ge=1)
    people: PeopleSnapshot | None = Field(default=None, description="set: answers must be signed")


@workflow.defn(name="ApprovalBench", sandboxed=False)
class ApprovalBench(ControlledRun[RunReport]):
    """The real gate, ``gates`` times in a row: nothing else, so the click path is all that is measured."""

    kind = "approval benchmark"

    @workflow.init
    def __init__(self, request: BenchInput) -> None:
        info = workflow.info()
        report = RunReport(
            service=request.runbook.service, reason="benchmark", requested_by="alice",
            workflow_id=info.workflow_id, run_id=info.run_id, started_at=workflow.now(),
        )  # fmt: skip
        self._init_control(report, "alice")
        self._runbook = request.runbook
        self._people = request.people

    def _render(self) -> str:
        return f"gate {len(self._report.approvals) + 1}"

    @workflow.run
    async def run(self, request: BenchInput) -> int:
        for n in range(request.gates):
            await self._gate("failover", f"{n:064x}")
        self._update(outcome="completed", finished_at=workflow.now())
        await self._close_slack()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return len(self._report.approvals)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))  # nearest rank
    return ordered[rank]


def describe(name: str, values: Sequence[float]) -> str:
    return (
        f"{name:<28} n={len(values):<4} p50 {percentile(values, 50):6.1f}  "
        f"p90 {percentile(values, 90):6.1f}  p99 {percentile(values, 99):6.1f}  max {max(values):6.1f}  "
        f"mean {statistics.fmean(values):6.1f} ms"
    )


async def next_gate(slack: SlackStandIn, workflow_id: str, seen: set[str]) -> Message:
    while True:
        for message in slack.top_level():
            if (
                message.ts not in seen
                and message.buttons()
                and workflow_id in message.text + str(message.buttons())
            ):
                seen.add(message.ts)
                return message
        await asyncio.sleep(0.002)


async def accepted_times(client: Client, workflow_id: str) -> list[datetime]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return [
        e.event_time.ToDatetime(tzinfo=UTC)
        for e in history.events
        if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]


@dataclass(frozen=True)
class Signing:
    """The people file of the signed mode: bob's SSH key and the gateway's key, made by ssh-keygen."""

    people: PeopleSnapshot
    bob_key: Path
    gateway: GatewaySigner

    @classmethod
    def make(cls, folder: Path) -> Signing:
        for name in ("bob", "gateway"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)],
                check=True, capture_output=True,
            )  # fmt: skip
        bob = (folder / "bob.pub").read_text().strip()
        gateway = (folder / "gateway.pub").read_text().strip()
        text = (
            f"people:\n  - name: bob\n    keys: [{bob}]\n    slack: [U02BOB]\n"
            f"gateways:\n  - name: bench\n    key: {gateway}\n"
        )
        people = PeopleSnapshot(
            people=parse_people(text.encode(), "people.yaml"), source="people.yaml",
            sha256=hashlib.sha256(text.encode()).hexdigest(),
        )  # fmt: skip
        signer = GatewaySigner("bench", (folder / "gateway").read_text())
        return cls(people, folder / "bob", signer)


def people_activity(signing: Signing | None) -> Any:
    """``load_people`` as a worker serves it: a gate reloads the file (here: the benchmark's) as it opens."""

    @activity.defn(name="load_people")
    def load_people(_: LoadPeopleRequest) -> LoadedPeople:
        return LoadedPeople(snapshot=signing.people if signing else None)

    return load_people


def bench_runbook(signing: Signing | None) -> Runbook:
    runbook = Runbook.model_validate(RUNBOOK)
    if signing is None:
        return runbook
    assert runbook.approvals.slack is not None
    slack = runbook.approvals.slack.model_copy(update={"identities": {}})
    return runbook.model_copy(update={"approvals": runbook.approvals.model_copy(update={"slack": slack})})


async def clicks_through_gateway(
    client: Client, slack: SlackStandIn, task_queue: str, count: int, think: float, signing: Signing | None
) -> None:
    config = GatewayConfig(
        mode="http", port=0, signing_secret=SIGNING_SECRET, api_url=slack.api_url,
        signer=signing.gateway if signing else None,
    )  # fmt: skip
    runbook = bench_runbook(signing)
    async with running_gateway(client, config) as gateway, httpx.AsyncClient(trust_env=False) as http:
        handle = await client.start_workflow(
            ApprovalBench.run,
            BenchInput(runbook=runbook, gates=count, people=signing.people if signing else None),
            id=f"approval-bench-{uuid.uuid4().hex[:8]}", task_queue=task_queue,
        )  # fmt: skip
        seen: set[str] = set()
        round_trips: list[float] = []
        sent_at: list[datetime] = []
        for _ in range(count):
            message = await next_gate(slack, handle.id, seen)
            await asyncio.sleep(think)
            body, headers = signed(slack.block_actions(message, "drflow_approve", "U02BOB", "bob"))
            sent_at.append(datetime.now(UTC))
            started = time.perf_counter()
            response = await http.post(f"{gateway.url}/slack/actions", content=body, headers=headers)
            round_trips.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise SystemExit(f"the gateway answered {response.status_code}: {response.text}")
        approved = await handle.result()
        accepted = await accepted_times(client, handle.id)
    if approved != count or len(accepted) != count or slack.ephemerals:
        raise SystemExit(f"expected {count} approvals, got {approved} ({len(slack.ephemerals)} refusals)")
    to_accepted = [(a - s).total_seconds() * 1000 for s, a in zip(sent_at, accepted, strict=True)]
    attested = " (attested)" if signing else ""
    print(describe(f"click -> HTTP 200{attested}", round_trips))
    print(describe(f"click -> UpdateAccepted{attested}", to_accepted))


async def bare_updates(
    client: Client, slack: SlackStandIn, task_queue: str, count: int, think: float, signing: Signing | None
) -> None:
    runbook = bench_runbook(signing)
    handle = await client.start_workflow(
        ApprovalBench.run,
        BenchInput(runbook=runbook, gates=count, people=signing.people if signing else None),
        id=f"approval-bench-bare-{uuid.uuid4().hex[:8]}", task_queue=task_queue,
    )  # fmt: skip
    seen: set[str] = set()
    round_trips: list[float] = []
    signing_ms: list[float] = []
    for n in range(count):
        await next_gate(slack, handle.id, seen)
        await asyncio.sleep(think)
        started = time.perf_counter()
        if signing is None:
            answer = ApprovalInput(approver="U02BOB", channel="api")
        else:
            signed_text, signature = sign_decision(
                Signer("bob", signing.bob_key), workflow_id=handle.id, run_id=handle.result_run_id or "",
                gate="failover", decision="approve", plan_checksum=f"{n:064x}",
            )  # fmt: skip
            signing_ms.append((time.perf_counter() - started) * 1000)
            answer = ApprovalInput(
                approver="bob", channel="cli", plan_checksum=f"{n:064x}", signed=signed_text,
                signature=signature,
            )  # fmt: skip
        await handle.execute_update(ApprovalBench.approve, answer)
        round_trips.append((time.perf_counter() - started) * 1000)
    await handle.result()
    if signing is None:
        print(describe("bare execute_update", round_trips))
        return
    print(describe("ssh-keygen -Y sign", signing_ms))
    print(describe("sign + execute_update", round_trips))


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clicks", type=int, default=200)
    parser.add_argument(
        "--db-file", action="store_true", help="dev server on a SQLite file (default: memory)"
    )
    parser.add_argument(
        "--think", type=float, default=0.1,
        help="seconds between the message appearing and the click (a person takes longer; the workflow is "
        "then idle, as it is when a real click arrives)",
    )  # fmt: skip
    parser.add_argument(
        "--signed", action="store_true",
        help="verified approvers: attested clicks and SSH-signed Updates, verified by the validator",
    )  # fmt: skip
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp, slack_standin() as slack:
        signing = Signing.make(Path(tmp)) if args.signed else None
        slack.world.usergroups = {"S0ONCALL": ["U03CAROL"]}
        slack.world.users = {"U02BOB": "Bob"}
        os.environ["SLACK_API_URL"] = slack.api_url
        os.environ["SLACK_BOT_TOKEN"] = BOT_TOKEN
        options = {"dev_server_database_filename": str(Path(tmp) / "temporal.db")} if args.db_file else {}
        env = await start_dev_server(**options)
        task_queue = f"approval-bench-{uuid.uuid4().hex[:6]}"
        try:
            worker = Worker(
                env.client, task_queue=task_queue, workflows=[ApprovalBench],
                activities=[*SLACK_ACTIVITIES, people_activity(signing)],
                activity_executor=ThreadPoolExecutor(max_workers=8),
                graceful_shutdown_timeout=timedelta(seconds=5), workflow_runner=workflow_runner(),
            )  # fmt: skip
            async with worker:
                print(
                    f"{args.clicks} approvals, dev server {'SQLite file' if args.db_file else 'in memory'}, "
                    f"one worker, gateway in HTTP mode, all on loopback"
                    + (", answers signed and verified" if signing else "")
                )
                await clicks_through_gateway(env.client, slack, task_queue, args.clicks, args.think, signing)
                await bare_updates(env.client, slack, task_queue, args.clicks, args.think, signing)
        finally:
            await env.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
