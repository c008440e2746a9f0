"""Failover and Failback end to end with ``traffic.provider: dns-weighted``: Route53 weighted record sets on
the moto server are the traffic manager, the real worker and dev server run the workflows, and the awsdns
stand-in answers the weighted sets as Route53 does (one set per query, drawn by weight among those above 0).

The failback's analysis goes through a frontend that resolves the record on the stand-in for every request
and answers which region the address belongs to: what clients resolving the weighted name get.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest
from temporalio.testing import WorkflowEnvironment

from runbooks.model import Nameserver
from tests.support.aws import (
    client,
    hosted_zone,
    moto_server,  # noqa: F401  (session fixture moto_endpoint)
    point_aws_at,
    route53_nameserver,
    unique,
)
from tests.support.failover import wait_for_gate
from tests.support.http import serve_app
from workers.sandbox.named import LOOPBACK
from workers.worker import build_worker
from workflows.failback import FailbackWorkflow
from workflows.failback_models import FailbackReport, FailbackRequest
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverRequest

REGION_A, REGION_B = "127.0.1.1", "127.0.2.1"

RUNBOOK = """\
service: {service}
objectives: {{rto: 2m, rpo: 30s}}
primary: region-a
regions:
  region-a: {{address: {a}, vars: {{port: "{a_port}"}}}}
  region-b: {{address: {b}, vars: {{port: "{b_port}"}}}}
dns:
  provider: route53
  hosted_zone_id: {zone_id}
  zone: {zone}
  record: checkout.{zone}
  type: A
  ttl: 1
  propagation_budget: 15s
  nameservers:
    - {{name: {ns_name}, address: {ns_address}, port: {ns_port}}}
traffic:
  provider: dns-weighted
  frontend_url: {frontend}
failback:
  stages: [50, 100]
  analysis:
    requests: 200
    duration: 2s
    max_p95_latency: 2s
    split_tolerance: 0.15
health:
  - name: app
    http: {{url: "http://{{address}}:{{port}}/healthz", expect_json: {{status: ok}}}}
    timeout: 500ms
    interval: 500ms
    consecutive_successes: 2
approvals:
  approvers: [alice, bob]
  gates: [failover]
  separation_of_duties: true
  timeout: 30m
"""


@dataclass
class WeightedService:
    service: str
    runbooks: Path
    route53: str
    zone_id: str
    record: str
    nameserver: Nameserver

    def weights(self) -> dict[str, int]:
        listed = client("route53", self.route53).list_resource_record_sets(HostedZoneId=self.zone_id)
        return {
            rs["SetIdentifier"]: rs["Weight"]
            for rs in listed["ResourceRecordSets"]
            if rs["Name"] == self.record and "Weight" in rs
        }

    def resolve(self) -> list[str]:
        return resolve(self.nameserver, self.record)


def resolve(nameserver: Nameserver, record: str) -> list[str]:
    query = dns.message.make_query(record, dns.rdatatype.A)
    answer = dns.query.udp(query, nameserver.address, port=nameserver.port, timeout=2)
    return sorted(item.to_text() for rrset in answer.answer for item in rrset)


@contextmanager
def resolving_frontend(nameserver: Nameserver, record: str, regions: dict[str, str]) -> Iterator[str]:
    """Resolves the weighted name for every request and answers the region its address belongs to."""
    by_address = {address: region for region, address in regions.items()}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            addresses = resolve(nameserver, record)
            region = by_address.get(addresses[0]) if len(addresses) == 1 else None
            status = 200 if region is not None else 502
            body = {"region": region} if region is not None else {"error": f"resolved {addresses}"}
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def weighted_service(
    moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WeightedService]:
    point_aws_at(monkeypatch, route53=moto_endpoint, sts=moto_endpoint)
    service = unique("checkout")
    zone = f"{service}.example."
    zone_id = hosted_zone(moto_endpoint, zone)
    record = f"checkout.{zone}"
    # UPSERT, not CREATE: moto refuses a CREATE equal to one in its change journal while any set of the name
    # exists (AWS does not), which the failback's own CREATE of region-a at 100 would be.
    client("route53", moto_endpoint).change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={"Changes": [
            {"Action": "UPSERT", "ResourceRecordSet": {
                "Name": record, "Type": "A", "TTL": 1, "SetIdentifier": region, "Weight": weight,
                "ResourceRecords": [{"Value": address}]}}
            for region, weight, address in (("region-a", 100, REGION_A), ("region-b", 0, REGION_B))
        ]},
    )  # fmt: skip
    with ExitStack() as stack:
        a = stack.enter_context(serve_app(REGION_A))
        b = stack.enter_context(serve_app(REGION_B))
        nameserver: Nameserver = stack.enter_context(route53_nameserver(moto_endpoint, zone_id, zone))
        frontend = stack.enter_context(
            resolving_frontend(nameserver, record, {"region-a": REGION_A, "region-b": REGION_B})
        )
        (tmp_path / f"{service}.yaml").write_text(
            RUNBOOK.format(
                service=service, a=REGION_A, a_port=a.port, b=REGION_B, b_port=b.port, zone_id=zone_id,
                zone=zone, ns_name=nameserver.name, ns_address=nameserver.address, ns_port=nameserver.port,
                frontend=frontend,
            )
        )  # fmt: skip
        yield WeightedService(service, tmp_path, moto_endpoint, zone_id, record, nameserver)


async def fail_over(env: WorkflowEnvironment, world: WeightedService, queue: str) -> None:
    handle = await env.client.start_workflow(
        FailoverWorkflow.run,
        FailoverRequest(
            service=world.service, target="region-b", reason="region-a degraded", requested_by="alice"
        ),
        id=f"failover-{world.service}-{uuid.uuid4().hex[:6]}",
        task_queue=queue,
    )
    gate = await wait_for_gate(env.client, handle.id)
    assert gate.plan is not None and gate.plan.source == "region-a"
    assert gate.plan.dns.current.values == [REGION_A] and gate.plan.dns.desired.values == [REGION_B]
    assert not gate.plan.dns.no_op
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go"))
    report = await handle.result()

    assert report.outcome == "completed", report.messages
    assert report.dns_change is None  # the weights move is the DNS change
    assert report.propagation is not None and report.propagation.converged
    assert report.health is not None and report.health.passed


async def approve_failback(env: WorkflowEnvironment, workflow_id: str, gate: str) -> None:
    handle = env.client.get_workflow_handle_for(FailbackWorkflow.run, workflow_id)
    async with asyncio.timeout(120):
        while True:
            report = await handle.query(FailbackWorkflow.status)
            if report.open_gate == gate:
                break
            assert report.outcome == "running", (report.outcome, report.messages)
            await asyncio.sleep(0.1)
    await handle.execute_update(FailbackWorkflow.approve, ApprovalInput(approver="bob", reason=f"go {gate}"))


async def test_failover_moves_the_route53_weights_and_the_nameserver_answers_the_target(
    dev_env: WorkflowEnvironment, weighted_service: WeightedService, task_queue: str
) -> None:
    assert weighted_service.resolve() == [REGION_A]
    async with build_worker(dev_env.client, weighted_service.runbooks, task_queue=task_queue):
        await fail_over(dev_env, weighted_service, task_queue)

    assert weighted_service.weights() == {"region-a": 0, "region-b": 100}
    assert {tuple(weighted_service.resolve()) for _ in range(20)} == {(REGION_B,)}


async def test_failback_stages_the_route53_weights_home_through_the_canary(
    dev_env: WorkflowEnvironment, weighted_service: WeightedService, task_queue: str
) -> None:
    async with build_worker(dev_env.client, weighted_service.runbooks, task_queue=task_queue):
        await fail_over(dev_env, weighted_service, task_queue)
        handle = await dev_env.client.start_workflow(
            FailbackWorkflow.run,
            FailbackRequest(
                service=weighted_service.service, reason="region-a repaired", requested_by="alice"
            ),
            id=f"failback-{weighted_service.service}-{uuid.uuid4().hex[:6]}",
            task_queue=task_queue,
        )
        await approve_failback(dev_env, handle.id, "failback")
        await approve_failback(dev_env, handle.id, "failback-100")
        try:
            async with asyncio.timeout(120):
                report: FailbackReport = await handle.result()
        except TimeoutError:
            stuck = await handle.query(FailbackWorkflow.status)
            raise AssertionError(
                f"failback still {stuck.outcome}: {stuck.waiting_step} {stuck.messages}"
            ) from None

    assert report.outcome == "completed", report.messages
    assert report.plan is not None and report.plan.source == "region-b"
    assert report.plan.dns.current.values == [REGION_B] and report.plan.dns.desired.values == [REGION_A]
    assert [stage.percent for stage in report.stages] == [50, 100]
    for stage in report.stages:
        assert stage.outcome == "passed" and stage.analysis is not None, stage
        assert abs(stage.analysis.split.get("region-a", 0.0) - stage.percent / 100) <= 0.15, stage.analysis
    assert report.dns_change is None
    assert report.propagation is not None and report.propagation.converged
    assert weighted_service.weights() == {"region-a": 100, "region-b": 0}
    assert {tuple(weighted_service.resolve()) for _ in range(20)} == {(REGION_A,)}
