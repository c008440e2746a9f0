"""The Readiness workflow on the real dev server, against real HTTP apps and a real BIND pair."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from tests.support.dns import APP_ADDRESS, APP_RECORD, OTHER_ADDRESS, OTHER_RECORD, ZONE, signed_update
from tests.support.http import AppBehaviour, RunningApp, serve_app
from workers.sandbox.named import NamedPair, free_port
from workers.worker import build_worker
from workflows.readiness import ReadinessWorkflow
from workflows.readiness_report import ReadinessReport, ReadinessRequest

RUNBOOK = """\
service: {service}
objectives: {{rto: {rto}, rpo: 5s}}
primary: region-a
regions:
  region-a: {{address: {a_address}, vars: {{port: "{a_port}"}}}}
  region-b: {{address: {b_address}, vars: {{port: "{b_port}"}}}}
dns:
  provider: rfc2136
  zone: {zone}
  record: {record}
  ttl: 5
  propagation_budget: 10s
  server: {{name: ns1.drflow.test., address: 127.0.0.1, port: {primary_port}}}
  nameservers:
{nameservers}
  tsig: {{name: drflow-test, secret: "file:{tsig}"}}
health:
  - name: app
    http: {{url: "http://{{address}}:{{port}}/healthz", expect_json: {{status: ok}}{version}}}
    timeout: 500ms
    interval: 1s
    consecutive_successes: 3
approvals: {{approvers: [bob]}}
"""


@dataclass
class World:
    runbooks: Path
    region_a: RunningApp
    region_b: RunningApp
    dns: NamedPair

    def write_runbook(
        self,
        service: str,
        record: str = APP_RECORD,
        extra_nameserver_port: int | None = None,
        rto: str = "2m",
        version_path: str | None = None,
    ) -> None:
        servers = [("ns1.drflow.test.", self.dns.primary_port), ("ns2.drflow.test.", self.dns.secondary_port)]
        if extra_nameserver_port is not None:
            servers.append(("ns3.drflow.test.", extra_nameserver_port))
        nameservers = "\n".join(f"    - {{name: {n}, address: 127.0.0.1, port: {p}}}" for n, p in servers)
        (self.runbooks / f"{service}.yaml").write_text(
            RUNBOOK.format(
                service=service,
                rto=rto,
                a_address=self.region_a.host,
                a_port=self.region_a.port,
                b_address=self.region_b.host,
                b_port=self.region_b.port,
                zone=ZONE,
                record=record,
                primary_port=self.dns.primary_port,
                nameservers=nameservers,
                tsig=self.dns.tsig_secret_path,
                version="" if version_path is None else f", version_path: {version_path}",
            )
        )


@pytest.fixture
def world(tmp_path: Path, dns_world: NamedPair) -> Iterator[World]:
    with ExitStack() as stack:
        region_a = stack.enter_context(serve_app(APP_ADDRESS, AppBehaviour()))
        region_b = stack.enter_context(serve_app(OTHER_ADDRESS, AppBehaviour()))
        yield World(runbooks=tmp_path, region_a=region_a, region_b=region_b, dns=dns_world)


@pytest_asyncio.fixture
async def readiness(
    dev_env: WorkflowEnvironment, world: World, task_queue: str
) -> AsyncIterator[tuple[WorkflowEnvironment, str]]:
    async with build_worker(dev_env.client, world.runbooks, task_queue=task_queue):
        yield dev_env, task_queue


async def run_readiness(env_queue: tuple[WorkflowEnvironment, str], service: str) -> ReadinessReport:
    env, task_queue = env_queue
    return await env.client.execute_workflow(
        ReadinessWorkflow.run,
        ReadinessRequest(service=service),
        id=f"readiness-{service}-{uuid.uuid4()}",
        task_queue=task_queue,
    )


async def test_healthy_regions_and_consistent_dns_are_ready(
    world: World, readiness: tuple[WorkflowEnvironment, str]
) -> None:
    world.write_runbook("shop")
    report = await run_readiness(readiness, "shop")
    assert report.verdict == "ready", report.reasons
    assert report.reasons == []
    assert [(r.region, r.role, r.healthy) for r in report.regions] == [
        ("region-a", "primary", True),
        ("region-b", "standby", True),
    ]
    assert all(c.status == 200 and c.latency_ms >= 0 for r in report.regions for c in r.checks)
    assert [(a.port, a.values, a.ttl, a.authoritative) for a in report.dns.answers] == [
        (world.dns.primary_port, [APP_ADDRESS], 5, True),
        (world.dns.secondary_port, [APP_ADDRESS], 5, True),
    ]
    assert report.budget.fits and report.budget.total.total_seconds() == 5 + 10 + 2
    assert len(report.runbook_sha256) == 64


async def test_failing_standby_means_not_ready_because_failover_has_nowhere_to_go(
    world: World, readiness: tuple[WorkflowEnvironment, str]
) -> None:
    world.write_runbook("shop")
    world.region_b.behaviour.status = 503
    world.region_b.behaviour.body = {"status": "database read-only"}
    report = await run_readiness(readiness, "shop")
    assert report.verdict == "not-ready"
    assert report.reasons == [
        "no standby region passes its health checks: a failover would have nowhere to go",
    ]
    [check] = report.regions[1].checks
    assert check.status == 503
    assert check.error == 'status 503, expected 200: {"status": "database read-only"}'


async def test_slow_primary_past_its_timeout_is_degraded_with_the_reason(
    world: World, readiness: tuple[WorkflowEnvironment, str]
) -> None:
    world.write_runbook("shop")
    world.region_a.behaviour.delay = 2.0
    report = await run_readiness(readiness, "shop")
    assert report.verdict == "degraded"
    assert report.reasons == ["primary region-a fails health checks: app (no answer within 0.5s)"]
    [check] = report.regions[0].checks
    assert check.status is None and 450 <= check.latency_ms < 2000


async def test_dns_pointing_at_the_standby_and_a_dead_nameserver_are_reported(
    world: World, readiness: tuple[WorkflowEnvironment, str]
) -> None:
    dead_port = free_port()
    world.write_runbook("shop", record=OTHER_RECORD, extra_nameserver_port=dead_port)
    report = await run_readiness(readiness, "shop")
    assert report.verdict == "degraded"
    assert report.reasons == [
        f"nameserver ns3.drflow.test. (127.0.0.1:{dead_port}) did not answer: {report.dns.answers[2].error}",
        f"{OTHER_RECORD} answers {OTHER_ADDRESS} (region-b), but the runbook's primary region-a is {APP_ADDRESS}",
    ]
    assert report.dns.answers[2].error is not None


async def test_unknown_service_fails_the_workflow_with_the_services_that_exist(
    world: World, readiness: tuple[WorkflowEnvironment, str]
) -> None:
    world.write_runbook("shop")
    with pytest.raises(WorkflowFailureError) as caught:
        await run_readiness(readiness, "payments")
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "UnknownService"
    assert "unknown service 'payments'" in cause.message and "shop" in cause.message


async def test_a_record_another_controller_owns_is_reported_with_what_to_do(
    world: World, readiness: tuple[WorkflowEnvironment, str]
) -> None:
    """external-dns's TXT registry record beside the app record (its current `a-` format), written as that
    controller does, to the real BIND; and an owner the runbook declares."""
    registry = f"a-{APP_RECORD}"
    claim = '"heritage=external-dns,external-dns/owner=prod-eks,external-dns/resource=service/shop/web"'
    signed_update(world.dns, lambda u: u.add(registry, 60, "TXT", claim))
    try:
        world.write_runbook("shop")
        report = await run_readiness(readiness, "shop")
    finally:
        signed_update(world.dns, lambda u: u.delete(registry, "TXT"))
    assert report.verdict == "degraded"
    assert report.dns.owners is not None and [(o.owner, o.resource) for o in report.dns.owners] == [
        ("prod-eks", "service/shop/web")
    ]
    assert report.reasons == [
        f"another system manages {APP_RECORD} and may revert the failover: external-dns (owner prod-eks, "
        f"resource service/shop/web; TXT {registry}); before a failover, stop it from writing the record "
        "(scale it to zero, or change its source) or make the change through it"
    ]

    path = world.runbooks / "shop.yaml"
    path.write_text(
        path.read_text().replace("  ttl: 5\n", "  ttl: 5\n  managed_by: terraform stack dns-prod\n")
    )
    declared = await run_readiness(readiness, "shop")
    assert declared.dns.owners == []  # looked for, none there any more
    assert declared.reasons == [
        f"another system manages {APP_RECORD} and may revert the failover: terraform stack dns-prod (the "
        "runbook's dns.managed_by); make sure it will not write the record back, or change it there"
    ]


async def test_a_tsig_key_the_primary_refuses_is_found_by_a_signed_read(
    world: World, readiness: tuple[WorkflowEnvironment, str]
) -> None:
    """rfc2136 has no cloud API: the readiness check proves the TSIG key with a signed SOA read on the
    real BIND primary; a wrong secret is refused (BADSIG) and blocks, as the failover's update would be."""
    world.write_runbook("shop")
    good = await run_readiness(readiness, "shop")
    [tsig] = good.provider_checks
    assert tsig.provider == "rfc2136" and tsig.ok
    assert tsig.checks[0].detail == "a signed read of the zone's SOA was answered"

    wrong = world.runbooks / "wrong.secret"
    wrong.write_text(base64.b64encode(b"not the key the server has" * 2).decode())
    path = world.runbooks / "shop.yaml"
    path.write_text(path.read_text().replace(f"file:{world.dns.tsig_secret_path}", f"file:{wrong}"))
    refused = await run_readiness(readiness, "shop")
    assert refused.verdict == "not-ready"
    assert refused.reasons[0].startswith("rfc2136 preflight: TSIG key drflow-test (")
    assert "refused: BADSIG, the secret does not match the server's" in refused.reasons[0]
    assert "not the key" not in refused.model_dump_json()  # the secret never leaves the worker
