"""Record workflow histories from real runs on the sandbox into tests/histories/ for the replay tests.

Run by hand after a deliberate, versioned change of workflow behaviour (see docs/versioning.md):

    .venv/bin/python scripts/record_histories.py

Each scenario builds a fresh sandbox, runs the real worker against a real dev server, and saves the full
history of every workflow involved. tests/test_replay.py then replays them all against the current code.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from temporalio.client import Client, WorkflowHandle

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from activities.service_lock import lock_workflow_id
from tests.support.failover import wait_for_decision, wait_for_gate
from tests.support.sandbox import SandboxWorld, Writer, sandbox_world
from tests.support.slack.standin import populate, slack_standin
from tests.support.slack.workspace import BOT_TOKEN
from tests.support.temporal import start_dev_server
from tests.test_canary_guard import until
from workers.cli.signing import Signer, sign_decision, sign_request
from workers.sandbox.named import free_port
from workers.sandbox.processes import stop_process
from workers.worker import build_worker
from workflows.drill import DrillWorkflow
from workflows.drill_models import DrillRequest
from workflows.failback import FailbackWorkflow
from workflows.failback_models import FailbackReport, FailbackRequest
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, DecisionInput, FailoverReport, FailoverRequest, RunReport
from workflows.readiness import ReadinessWorkflow
from workflows.readiness_digest import DigestInput, ReadinessDigestWorkflow
from workflows.readiness_report import ReadinessRequest

HISTORIES = ROOT / "tests" / "histories"
Handle = WorkflowHandle[FailoverWorkflow, FailoverReport]


async def start(client: Client, world: SandboxWorld, queue: str, mode: str = "planned") -> Handle:
    request = FailoverRequest.model_validate(
        {
            "service": world.service,
            "target": "region-b",
            "reason": "recorded",
            "requested_by": "alice",
            "mode": mode,
        }
    )
    return await client.start_workflow(
        FailoverWorkflow.run, request, id=f"failover-{world.service}-{uuid.uuid4().hex[:8]}", task_queue=queue
    )


async def planned(client: Client, world: SandboxWorld, queue: str) -> Recorded:
    handle = await start(client, world, queue)
    await wait_for_gate(client, handle.id)
    await handle.execute_update(
        FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go", channel="cli")
    )
    await handle.result()
    return [handle.id, ("lock", lock_workflow_id(world.service))]


async def planned_with_slack(client: Client, world: SandboxWorld, queue: str) -> Recorded:
    """Since ``slack-close-bounded``: a failover mirrored in Slack (the suite's wire stand-in); at its end
    the run waits for Slack to catch up, at most ``CLOSE_WAIT``."""
    with slack_standin() as slack:
        populate(slack)
        saved = {name: os.environ.get(name) for name in ("SLACK_API_URL", "SLACK_BOT_TOKEN")}
        os.environ.update(SLACK_API_URL=slack.api_url, SLACK_BOT_TOKEN=BOT_TOKEN)
        world.write_runbook(
            approvals__slack={"channel": "C0DRFLOW", "approvers": ["U02BOB"], "usergroup": "S0ONCALL",
                              "identities": {"U01ALICE": "alice", "U02BOB": "bob"}}
        )  # fmt: skip
        try:
            return await planned(client, world, queue)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


async def emergency_data_loss(client: Client, world: SandboxWorld, queue: str) -> Recorded:
    world.write_runbook(objectives__rpo="1s")
    with world.connect("region-b") as standby:
        standby.execute("SELECT pg_wal_replay_pause()")
    writer = Writer(world, "region-a")
    writer.start()
    await asyncio.sleep(1.5)  # writes the standby does not replay
    handle = await start(client, world, queue, mode="emergency")
    await wait_for_gate(client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="region down"))
    await wait_for_gate(client, handle.id, gate="data-loss")
    writer.stop()
    await handle.execute_update(
        FailoverWorkflow.accept_data_loss, ApprovalInput(approver="carol", reason="staying down costs more")
    )
    await handle.result()
    return [handle.id]


async def emergency_unfenced(client: Client, world: SandboxWorld, queue: str) -> Recorded:
    """The old primary serves but the worker cannot reach it: the fence is not confirmed (fence-confirmed)."""
    world.write_runbook(
        **{"database__nodes__region-a__port": free_port(), "database__nodes__region-a__data_directory": None}
    )
    handle = await start(client, world, queue, mode="emergency")
    await wait_for_gate(client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="region down"))
    await wait_for_gate(client, handle.id, gate="data-loss")
    await handle.execute_update(
        FailoverWorkflow.accept_data_loss, ApprovalInput(approver="carol", reason="minutes at most")
    )
    await wait_for_gate(client, handle.id, gate="unfenced")
    await handle.execute_update(
        FailoverWorkflow.approve, ApprovalInput(approver="carol", reason="region-a powered off at the PDU")
    )
    await handle.result()
    return [handle.id]


async def emergency_bytes_lost(client: Client, world: SandboxWorld, queue: str) -> Recorded:
    """The standby stopped receiving: 0 s of lag, known-lost bytes (rpo-bytes)."""
    with world.connect("region-b") as standby:
        standby.execute("ALTER SYSTEM SET primary_conninfo = ''")
        standby.execute("SELECT pg_reload_conf()")
    writer = Writer(world, "region-a")
    writer.start()
    await asyncio.sleep(1.0)
    handle = await start(client, world, queue, mode="emergency")
    await wait_for_gate(client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="region down"))
    await wait_for_gate(client, handle.id, gate="data-loss")
    writer.stop()
    await handle.execute_update(
        FailoverWorkflow.accept_data_loss, ApprovalInput(approver="carol", reason="the writes are replayable")
    )
    await handle.result()
    return [handle.id]


async def aborted(client: Client, world: SandboxWorld, queue: str) -> Recorded:
    world.write_runbook(dns__propagation_budget="2s")
    world.sandbox._named_pair().stop_secondary()
    handle = await start(client, world, queue)
    await wait_for_gate(client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go"))
    await wait_for_decision(client, handle.id)
    await handle.execute_update(FailoverWorkflow.decide, DecisionInput(decision="abort", operator="carol"))
    await handle.result()
    return [handle.id]


async def verified(client: Client, world: SandboxWorld, queue: str) -> Recorded:
    """Since ``verified-approvers``: a signed request, a quorum of two signed votes, a signed decision."""
    world.write_runbook(
        approvals__unsigned="refuse", approvals__quorum={"failover": {"min_approvals": 2}},
        dns__propagation_budget="2s",
    )  # fmt: skip
    keys = world.sandbox.state_dir / "keys"
    workflow_id = f"failover-{world.service}"
    reason = "recorded"
    text, signature = sign_request(
        Signer("alice", keys / "alice"), kind="failover", workflow_id=workflow_id, service=world.service,
        target="region-b", mode="planned", reason=reason,
    )  # fmt: skip
    request = FailoverRequest(
        service=world.service, target="region-b", reason=reason, requested_by="alice", signed=text,
        signature=signature,
    )  # fmt: skip
    handle = await client.start_workflow(FailoverWorkflow.run, request, id=workflow_id, task_queue=queue)
    gate = await wait_for_gate(client, handle.id)
    for person in ("bob", "carol"):
        signed, sig = sign_decision(
            Signer(person, keys / person), workflow_id=workflow_id, run_id=gate.run_id, gate="failover",
            decision="approve", plan_checksum=gate.gate_checksum,
        )  # fmt: skip
        await handle.execute_update(
            FailoverWorkflow.approve,
            ApprovalInput(approver=person, channel="cli", plan_checksum=gate.gate_checksum, signed=signed,
                          signature=sig),
        )  # fmt: skip
    world.sandbox._named_pair().stop_secondary()
    waiting = await wait_for_decision(client, handle.id)
    assert waiting.waiting_step is not None
    signed, sig = sign_decision(
        Signer("carol", keys / "carol"), workflow_id=workflow_id, run_id=gate.run_id,
        failed_step=waiting.waiting_step, decision="skip",
    )  # fmt: skip
    await handle.execute_update(
        FailoverWorkflow.decide,
        DecisionInput(decision="skip", operator="carol", channel="cli", step=waiting.waiting_step,
                      signed=signed, signature=sig),
    )  # fmt: skip
    await handle.result()
    return [handle.id]


async def rejected_and_refused(client: Client, world: SandboxWorld, queue: str) -> Recorded:
    first = await start(client, world, queue)
    await wait_for_gate(client, first.id)
    second = await start(client, world, queue)
    await second.result()
    await first.execute_update(FailoverWorkflow.reject, ApprovalInput(approver="carol", reason="not today"))
    await first.result()
    return [first.id, ("refused", second.id)]


async def readiness(client: Client, world: SandboxWorld, queue: str) -> Recorded:
    request = ReadinessRequest(service=world.service)
    workflow_id = f"readiness-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(ReadinessWorkflow.run, request, id=workflow_id, task_queue=queue)
    await handle.result()
    return [handle.id]


async def readiness_trend_and_slack(client: Client, world: SandboxWorld, queue: str) -> Recorded:
    """Since ``readiness-trend-and-slack``: the third check reads the two before it for the lag trend, and
    asks Slack whether the approvers' accounts still exist (the sandbox has no Slack: slack-unverified)."""
    for _ in range(2):
        await readiness(client, world, queue)
    return await readiness(client, world, queue)


async def readiness_digest(client: Client, world: SandboxWorld, queue: str) -> Recorded:
    """The digest over the sandbox's one service after one check; no channel (the sandbox has no Slack)."""
    await readiness(client, world, queue)
    handle = await client.start_workflow(
        ReadinessDigestWorkflow.run, DigestInput(), id=f"drflow-readiness-digest-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
    )  # fmt: skip
    await handle.result()
    return [handle.id]


async def failback_canary(client: Client, world: SandboxWorld, queue: str) -> Recorded:
    world.write_runbook(failback__analysis__duration="1s", failback__analysis__requests=100)
    await planned(client, world, queue)
    request = FailbackRequest(service=world.service, reason="recorded", requested_by="alice", prepare=True)
    handle = await client.start_workflow(
        FailbackWorkflow.run, request, id=f"failback-{uuid.uuid4().hex[:8]}", task_queue=queue
    )
    for gate in ("failback", "failback-100"):
        await wait_for_gate(client, handle.id, gate=gate, report_type=FailbackReport)
        await handle.execute_update(FailbackWorkflow.approve, ApprovalInput(approver="carol", reason=gate))
    await handle.result()
    return [handle.id]


async def failback_final_stage_plan(client: Client, world: SandboxWorld, queue: str) -> Recorded:
    """Since ``failback-100-plan``: the failback-100 gate binds its own checksum; answers name theirs."""
    world.write_runbook(failback__analysis__duration="1s", failback__analysis__requests=100)
    await planned(client, world, queue)
    request = FailbackRequest(service=world.service, reason="recorded", requested_by="alice", prepare=True)
    handle = await client.start_workflow(
        FailbackWorkflow.run, request, id=f"failback-{uuid.uuid4().hex[:8]}", task_queue=queue
    )
    for gate in ("failback", "failback-100"):
        report = await wait_for_gate(client, handle.id, gate=gate, report_type=FailbackReport)
        answer = ApprovalInput(approver="carol", reason=gate, plan_checksum=report.gate_checksum)
        await handle.execute_update(FailbackWorkflow.approve, answer)
    await handle.result()
    return [handle.id]


async def planned_writable(client: Client, world: SandboxWorld, queue: str) -> Recorded:
    """A planned failover since ``writable-at-end``: it proves the target writes before it completes."""
    failover_id, _lock = await planned(client, world, queue)
    return [failover_id]


async def failback_canary_asks(client: Client, world: SandboxWorld, queue: str) -> Recorded:
    """``canary-ask-after-switch``: region-a's app stops at 25 %, the failed analysis waits for a person
    (no rollback to the standby region), the app comes back, a retry passes and the failback completes."""
    world.write_runbook(failback__analysis__duration="1s", failback__analysis__requests=100)
    await planned(client, world, queue)
    request = FailbackRequest(service=world.service, reason="recorded", requested_by="alice", prepare=True)
    handle = await client.start_workflow(
        FailbackWorkflow.run, request, id=f"failback-{uuid.uuid4().hex[:8]}", task_queue=queue
    )
    await wait_for_gate(client, handle.id, gate="failback", report_type=FailbackReport)
    await handle.execute_update(FailbackWorkflow.approve, ApprovalInput(approver="carol", reason="failback"))
    await until(handle, lambda r: any(s.percent == 5 and s.outcome == "passed" for s in r.stages))
    pid = world.sandbox._app_pid("region-a")
    assert pid is not None
    stop_process(pid, 5)
    await until(handle, lambda r: r.waiting_step is not None)
    world.sandbox.restart_app("region-a")
    await handle.execute_update(
        FailbackWorkflow.decide, DecisionInput(decision="retry", operator="carol", reason="app restarted")
    )
    await wait_for_gate(client, handle.id, gate="failback-100", report_type=FailbackReport)
    await handle.execute_update(FailbackWorkflow.approve, ApprovalInput(approver="carol", reason="100"))
    report = await handle.result()
    assert report.outcome == "completed", report.messages
    return [handle.id]


async def dry_runs(client: Client, world: SandboxWorld, queue: str) -> Recorded:
    """Plan mode of both directions: a failover planned from the start, a failback planned after one."""
    failover = await client.execute_workflow(
        FailoverWorkflow.run,
        FailoverRequest(
            service=world.service, target="region-b", reason="recorded", requested_by="alice", dry_run=True
        ),
        id=f"plan-failover-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
    )
    await planned(client, world, queue)
    failback = await client.execute_workflow(
        FailbackWorkflow.run,
        FailbackRequest(
            service=world.service, reason="recorded", requested_by="alice", prepare=True, dry_run=True
        ),
        id=f"plan-failback-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
    )
    assert failover.outcome == failback.outcome == "dry-run", (failover.messages, failback.messages)
    return [("failover", failover.workflow_id), ("failback", failback.workflow_id)]


async def drill(client: Client, world: SandboxWorld, queue: str) -> Recorded:
    world.write_runbook(failback__analysis__duration="1s", failback__analysis__requests=100)
    drill_id = f"drill-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        DrillWorkflow.run, DrillRequest(service=world.service), id=drill_id, task_queue=queue
    )
    gates: list[tuple[str, str, str, type[RunReport]]] = [
        (f"{drill_id}-failover", "failover", "bob", FailoverReport),
        (f"{drill_id}-failback", "failback", "carol", FailbackReport),
        (f"{drill_id}-failback", "failback-100", "carol", FailbackReport),
    ]
    for child, gate, who, kind in gates:  # a person answers each gate of the children
        await wait_for_gate(client, child, gate=gate, timeout=180, report_type=kind)
        await client.get_workflow_handle(child).execute_update(
            "approve", ApprovalInput(approver=who, reason=gate)
        )
    await handle.result()
    return [handle.id, ("failover", f"{drill_id}-failover"), ("failback", f"{drill_id}-failback")]


# Scenarios whose workflows derive ids from their own (a drill's children): only their files need an entry in
# index.json; any other history names its workflow id in its first event, and the index is left as it is.
DERIVED_IDS = frozenset({"drill"})
Recorded = list[str | tuple[str, str]]  # workflow ids; (suffix, id) for a second history of the scenario
SCENARIOS: dict[str, Callable[[Client, SandboxWorld, str], Awaitable[Recorded]]] = {
    "failover-planned": planned,
    "failover-emergency-data-loss": emergency_data_loss,
    "failover-emergency-unfenced": emergency_unfenced,
    "failover-emergency-bytes-lost": emergency_bytes_lost,
    "failover-aborted": aborted,
    "failover-rejected-and-refused": rejected_and_refused,
    "readiness": readiness,
    "failback-canary": failback_canary,
    "drill": drill,
    "dry-run": dry_runs,
    "failover-planned-writable": planned_writable,
    "failback-canary-asks": failback_canary_asks,
    "failover-verified": verified,
    # Since ``step-attr-while-waiting``: DrflowStep says awaiting-approval / -decision, then goes back.
    "failover-aborted-waiting-attrs": aborted,
    # since ``readiness-people``: the check loads the people file as a gate would
    "readiness-people": readiness,
    # since ``readiness-provider-checks``: the providers' preflight (rfc2136: the TSIG key by a signed read)
    "readiness-provider-checks": readiness,
    "failback-final-stage-plan": failback_final_stage_plan,
    "readiness-trend-and-slack": readiness_trend_and_slack,
    "readiness-digest": readiness_digest,
    "failover-slack-close": planned_with_slack,
}
# Scenarios that run with the sandbox's people file (verified approvers); the others use string approvers.
WITH_PEOPLE = frozenset(
    {"failover-verified", "readiness-people", "readiness-provider-checks", "readiness-trend-and-slack"}
)


async def record(only: list[str]) -> None:
    """Record the named scenarios (all by default). Keep histories of older code: they are the open runs."""
    HISTORIES.mkdir(parents=True, exist_ok=True)
    index_path = HISTORIES / "index.json"
    index: dict[str, str] = json.loads(index_path.read_text()) if index_path.exists() else {}
    recorded_index = dict(index)
    env = await start_dev_server()
    try:
        for name, scenario in SCENARIOS.items():
            if only and name not in only:
                continue
            queue = f"record-{uuid.uuid4()}"
            with sandbox_world(people=name in WITH_PEOPLE) as world:
                async with build_worker(env.client, world.runbooks, task_queue=queue):
                    ids = await scenario(env.client, world, queue)
            for item in ids:
                suffix, workflow_id = item if isinstance(item, tuple) else ("", item)
                history = await env.client.get_workflow_handle(workflow_id).fetch_history()
                path = HISTORIES / f"{name}{f'-{suffix}' if suffix else ''}.json"
                path.write_text(history.to_json())
                if name in DERIVED_IDS:
                    index[path.name] = workflow_id
                print(f"{path.relative_to(ROOT)}: {len(history.events)} events ({workflow_id})")
    finally:
        if index != recorded_index:  # only a drill adds entries; the stored index is evidence too
            index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        await env.shutdown()


if __name__ == "__main__":
    unknown = [name for name in sys.argv[1:] if name not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    asyncio.run(record(sys.argv[1:]))
