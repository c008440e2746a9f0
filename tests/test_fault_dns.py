"""Failovers with a bad network in front of a nameserver: the sandbox's BIND secondary behind the UDP fault
proxy (activities/faults/udp.py), so the propagation proof meets lost and late answers.

A lossy, slow secondary still proves propagation: the checks simply ask again. A secondary that answers
nothing fails the propagation step after its budget, naming it, with the record already changed on the
primary; the run waits for a person, and a retry after the network heals proves it. Either way the record
is changed exactly once (the SOA serial).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.faults.udp import UdpFaultProxy, UdpFaultSpec
from tests.support.failover import wait_for_decision, wait_for_gate
from tests.support.sandbox import SandboxWorld, sandbox_world
from workers.sandbox.named import soa_serial
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, DecisionInput, FailoverReport, FailoverRequest

pytestmark = pytest.mark.faults

REGION_B = "127.0.2.1"


@pytest.fixture
def behind_proxy() -> Iterator[tuple[SandboxWorld, UdpFaultProxy]]:
    """The sandbox with its runbook's second nameserver reached through the UDP fault proxy."""
    with sandbox_world() as world, UdpFaultProxy("127.0.0.1", world.sandbox.ports.dns_secondary) as proxy:
        ns1, ns2 = world.runbook.dns.nameservers
        nameservers = [ns1.model_dump(mode="json"), {**ns2.model_dump(mode="json"), "port": proxy.port}]
        world.write_runbook(dns__nameservers=nameservers)
        yield world, proxy


async def start(env: WorkflowEnvironment, world: SandboxWorld, queue: str) -> WorkflowHandle[
    FailoverWorkflow, FailoverReport
]:  # fmt: skip
    request = FailoverRequest(
        service=world.service, target="region-b", reason="dns fault test", requested_by="alice"
    )
    handle = await env.client.start_workflow(
        FailoverWorkflow.run, request, id=f"failover-{uuid.uuid4().hex[:8]}", task_queue=queue
    )
    await wait_for_gate(env.client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go"))
    return handle


def serial(world: SandboxWorld) -> int | None:
    return soa_serial(world.runbook.dns.zone, world.sandbox.ports.dns_primary)


async def test_a_lossy_slow_secondary_still_proves_propagation_and_the_record_changes_once(
    dev_env: WorkflowEnvironment, behind_proxy: tuple[SandboxWorld, UdpFaultProxy], task_queue: str
) -> None:
    world, proxy = behind_proxy
    world.write_runbook(dns__propagation_budget="30s")  # each lost query costs its 2 s timeout
    before = serial(world)
    # Seed 4 drops the first three datagrams at 50 %: the first queries are lost, whatever asks first.
    proxy.set_fault(UdpFaultSpec(mode="loss", loss=0.5, delay=0.2, seed=4))
    async with build_worker(dev_env.client, world.runbooks, task_queue=task_queue):
        handle = await start(dev_env, world, task_queue)
        report = await asyncio.wait_for(handle.result(), 180)
    assert report.outcome == "completed", report.messages
    assert report.propagation is not None and report.propagation.converged
    assert [n.converged for n in report.propagation.nameservers] == [True, True]
    assert proxy.counts.dropped >= 3, "the secondary's queries or answers were lost on the way"
    [_, secondary] = report.propagation.nameservers
    print(
        f"{proxy.counts}; ns2 converged after {secondary.converged_after_ms} ms, RTO {report.achieved_rto_seconds}"
    )
    assert before is not None and serial(world) == before + 1, "one DNS change"


async def test_a_silent_secondary_fails_propagation_by_name_and_a_retry_after_it_heals_completes(
    dev_env: WorkflowEnvironment, behind_proxy: tuple[SandboxWorld, UdpFaultProxy], task_queue: str
) -> None:
    world, proxy = behind_proxy
    world.write_runbook(dns__propagation_budget="6s")
    before = serial(world)
    proxy.set_fault(UdpFaultSpec(mode="blackhole"))
    async with build_worker(dev_env.client, world.runbooks, task_queue=task_queue):
        handle = await start(dev_env, world, task_queue)
        waiting = await wait_for_decision(dev_env.client, handle.id, timeout=120)
        [failed] = [s for s in waiting.steps if s.name == waiting.waiting_step]
        assert failed.error is not None and "ns2.drflow.test." in failed.error, failed.error
        assert f"127.0.0.1:{proxy.port}) did not answer: timeout" in failed.error, failed.error
        assert before is not None and serial(world) == before + 1, "the change is on the primary"

        proxy.clear()
        await handle.execute_update(
            FailoverWorkflow.decide,
            DecisionInput(decision="retry", operator="bob", reason="ns2's network is back"),
        )
        report = await asyncio.wait_for(handle.result(), 120)
    assert report.outcome == "completed", report.messages
    assert report.propagation is not None and report.propagation.converged
    assert serial(world) == before + 1, "the retry proved propagation; it changed nothing again"
