"""Cloud DNS with PostgreSQL reached only over the network: the shape of runbooks/examples/gcp.yaml, both ways.

The record lives in the Cloud DNS stand-in (google-cloud-dns's own client pointed at it), propagation is
checked on a nameserver answering from the stand-in's zone, and the database is the sandbox's remote topology
(TCP only, fence proven by a write as the app role, re-sync by the shipped hook).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from activities.dns import registry as dns_registry
from activities.dns.clouddns import CloudDnsProvider
from runbooks.model import CloudDns, DnsConfig
from tests.support.clouddns_standin import (
    CloudDnsStandIn,
    clouddns_nameserver,
    library_client,
    serve_clouddns,
)
from tests.support.failover import wait_for_gate
from tests.support.sandbox import SandboxWorld, sandbox_world
from tests.test_failback_sandbox import approve, start_failback
from tests.test_failover_sandbox import in_recovery
from workers.sandbox.world import RECORD, RECORD_TTL, REGIONS, ZONE
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverReport, FailoverRequest

MANAGED_ZONE = "drflow-test"
REGION_A, REGION_B = REGIONS["region-a"], REGIONS["region-b"]


@pytest.fixture
def standin() -> Iterator[CloudDnsStandIn]:
    with serve_clouddns() as running:
        running.add_zone(
            MANAGED_ZONE, ZONE, [{"name": RECORD, "type": "A", "ttl": RECORD_TTL, "rrdatas": [REGION_A]}]
        )
        yield running


@pytest.fixture
def world(standin: CloudDnsStandIn, monkeypatch: pytest.MonkeyPatch) -> Iterator[SandboxWorld]:
    def provider(config: DnsConfig) -> CloudDnsProvider:
        assert isinstance(config, CloudDns)
        return CloudDnsProvider(config, client=library_client(standin))

    monkeypatch.setattr(dns_registry, "dns_provider_for", provider)
    with sandbox_world("remote") as built, clouddns_nameserver(standin, MANAGED_ZONE) as nameserver:
        built.write_runbook(
            traffic=None,
            failback=None,
            dns={
                "provider": "clouddns",
                "project": standin.project,
                "managed_zone": MANAGED_ZONE,
                "zone": ZONE,
                "record": RECORD,
                "type": "A",
                "ttl": RECORD_TTL,
                "propagation_budget": "20s",
                "nameservers": [nameserver.model_dump(mode="json")],
            },
        )
        yield built


@pytest_asyncio.fixture
async def worker_on(dev_env: WorkflowEnvironment, world: SandboxWorld, task_queue: str) -> AsyncIterator[str]:
    async with build_worker(dev_env.client, world.runbooks, task_queue=task_queue):
        yield task_queue


def served(standin: CloudDnsStandIn) -> list[str]:
    rrset = standin.rrset(MANAGED_ZONE, RECORD, "A")
    assert rrset is not None
    return list(rrset["rrdatas"])


async def test_cloud_dns_with_remote_postgres_fails_over_and_back(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str, standin: CloudDnsStandIn
) -> None:
    handle = await dev_env.client.start_workflow(
        FailoverWorkflow.run,
        FailoverRequest(service=world.service, target="region-b", reason="gcp shape", requested_by="alice"),
        id=f"failover-{uuid.uuid4().hex[:8]}",
        task_queue=worker_on,
    )
    await wait_for_gate(dev_env.client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go"))
    report: FailoverReport = await handle.result()
    assert report.outcome == "completed", report.messages
    assert report.propagation is not None and report.propagation.converged
    assert report.fence is not None and report.fence.fenced and report.fence.proof is not None
    assert served(standin) == [REGION_B] and not in_recovery(world, "region-b")
    assert standin.landed_changes == 1

    back = await start_failback(dev_env, world, worker_on)
    await approve(back, dev_env, "failback")
    home = await back.result()
    assert home.outcome == "completed", home.messages
    assert home.resynced is not None and home.resynced.hook is not None and home.resynced.streaming
    assert served(standin) == [REGION_A] and standin.landed_changes == 2
    assert not in_recovery(world, "region-a") and in_recovery(world, "region-b")
