"""50 failovers of 50 services at once, plus duplicate starts of some of them (``make faults``).

Real: the dev server, BIND (every service's record in the shared zone), 100 app servers, one worker. Each
service holds its own lock, so the 50 run side by side; a duplicate is refused either by Temporal (the same
workflow id) or by the service lock (another id for a service already moving), and changes nothing. Every
record changes exactly once: the zone's SOA serial moves by 50.

Marked ``sweep`` with the long fault runs: 50 runs on 2 cores take minutes and load the machine for the
tests around it, so ``make test`` leaves it out and ``make faults`` runs it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.testing import WorkflowEnvironment

from activities.dns.reader import DnsQuery, read_dns_record
from runbooks.model import Nameserver
from tests.support.dns import ZONE
from tests.support.failover import HealthSettings, StatelessService, stateless_service, wait_for_gate
from workers.sandbox.named import NamedPair, soa_serial
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverReport, FailoverRequest

pytestmark = [pytest.mark.faults, pytest.mark.sweep, pytest.mark.timeout(1800)]

SERVICES = 50
DUPLICATES = 10  # of the first services: 5 with the same workflow id, 5 with another id


async def answers_of(record: str, dns: NamedPair) -> list[list[str]]:
    """What each of the zone's two nameservers answers for the record."""
    servers = [
        Nameserver(name="ns1.drflow.test.", address="127.0.0.1", port=dns.primary_port),
        Nameserver(name="ns2.drflow.test.", address="127.0.0.1", port=dns.secondary_port),
    ]
    readout = await read_dns_record(DnsQuery(record=record, type="A", zone=ZONE, nameservers=servers))
    return [a.values if a.error is None else [f"error: {a.error}"] for a in readout.answers]


def request(service: StatelessService) -> FailoverRequest:
    return FailoverRequest(
        service=service.service, target="region-b", reason="concurrency test", requested_by="alice"
    )


async def test_fifty_concurrent_failovers_each_change_their_record_once_and_every_duplicate_is_refused(
    dev_env: WorkflowEnvironment, tmp_path: Path, dns_world: NamedPair, task_queue: str
) -> None:
    client = dev_env.client
    with ExitStack() as stack:
        services = [
            # 100 app servers share this process's two cores with the worker: a 3 s health timeout
            stack.enter_context(
                stateless_service(
                    tmp_path,
                    dns_world,
                    ttl=1,
                    propagation="30s",
                    health=HealthSettings(timeout="2s", interval="2s"),
                )
            )
            for _ in range(SERVICES)
        ]
        before = soa_serial(ZONE, dns_world.primary_port)
        async with build_worker(client, tmp_path, task_queue=task_queue):
            started = time.monotonic()
            ids = {s.service: f"failover-{s.service}-{uuid.uuid4().hex[:6]}" for s in services}
            handles: list[WorkflowHandle[Any, FailoverReport]] = await asyncio.gather(
                *(
                    client.start_workflow(
                        FailoverWorkflow.run, request(s), id=ids[s.service], task_queue=task_queue
                    )
                    for s in services
                )
            )
            same_id = 0
            for service in services[: DUPLICATES // 2]:
                try:
                    await client.start_workflow(
                        FailoverWorkflow.run, request(service), id=ids[service.service], task_queue=task_queue
                    )
                except WorkflowAlreadyStartedError:
                    same_id += 1

            async def approve(handle: WorkflowHandle[Any, FailoverReport]) -> FailoverReport:
                await wait_for_gate(client, handle.id, timeout=600)
                await handle.execute_update(
                    FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go")
                )
                return await handle.result()

            # A run at its gate holds its service's lock: a duplicate under another id started now is refused.
            await asyncio.gather(*(wait_for_gate(client, h.id, timeout=600) for h in handles[:DUPLICATES]))
            others = await asyncio.gather(
                *(
                    client.start_workflow(
                        FailoverWorkflow.run,
                        request(s),
                        id=f"failover-{s.service}-dup",
                        task_queue=task_queue,
                    )
                    for s in services[DUPLICATES // 2 : DUPLICATES]
                )
            )
            reports = await asyncio.gather(*(approve(h) for h in handles))
            elapsed = time.monotonic() - started
            refused = await asyncio.gather(*(h.result() for h in others))
        after = soa_serial(ZONE, dns_world.primary_port)
        served = [await answers_of(s.record, dns_world) for s in services]

    outcomes = [r.outcome for r in reports]
    assert outcomes == ["completed"] * SERVICES, [(r.service, r.outcome, r.messages[-1:]) for r in reports]
    assert same_id == DUPLICATES // 2, "Temporal refuses a second run with the same workflow id"
    assert [r.outcome for r in refused] == ["refused"] * (DUPLICATES - DUPLICATES // 2)
    assert all(r.dns_change is None and r.promotion is None for r in refused), "a refused run changes nothing"
    assert before is not None and after == before + SERVICES, "each record changed exactly once"
    assert all(s == [["127.0.2.1"], ["127.0.2.1"]] for s in served), served
    rtos = sorted(r.achieved_rto_seconds or 0 for r in reports)
    print(
        f"{SERVICES} failovers in {elapsed:.1f}s from the first start to the last result; achieved RTO "
        f"median {rtos[len(rtos) // 2]:.1f}s, max {rtos[-1]:.1f}s"
    )
