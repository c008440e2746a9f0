"""The Failover workflow end to end on AWS emulators: a runbook shaped like runbooks/examples/aws.yaml, the
real worker and dev server, Route53 on the moto server, Aurora Global on ministack (moto lacks the global
switchover), and botocore reaching both through its standard per-service endpoint settings, as it would reach
VPC endpoints. Health checks hit local HTTP apps; propagation is checked on a nameserver that answers from the
emulator's hosted zone, standing in for the awsdns servers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from runbooks.model import Nameserver
from tests.support.aws import (
    Route53Extras,
    client,
    hosted_zone,
    ministack_server,  # noqa: F401  (session fixture ministack_endpoint)
    moto_server,  # noqa: F401  (session fixture moto_endpoint)
    point_aws_at,
    route53_nameserver,
    throttling_proxy,
    unique,
)
from tests.support.failover import wait_for_gate
from tests.support.http import RunningApp, serve_app
from tests.test_rds_aurora import GlobalDatabase, make_global_database
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverReport, FailoverRequest

EAST_ADDRESS, WEST_ADDRESS = "127.0.1.1", "127.0.2.1"

RUNBOOK = """\
# runbooks/examples/aws.yaml, pointed at emulators: local apps, a short TTL, and the awsdns stand-in.
service: {service}
objectives: {{rto: 2m, rpo: 30s}}
primary: us-east-1
regions:
  us-east-1: {{address: {east}, vars: {{port: "{east_port}"}}}}
  us-west-2: {{address: {west}, vars: {{port: "{west_port}"}}}}
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
{database}health:
  - name: checkout-deep
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

AURORA = """\
database:
  provider: aurora-global
  global_cluster: {global_cluster}
  clusters:
    us-east-1: {east}
    us-west-2: {west}
"""


@dataclass
class AwsService:
    service: str
    runbooks: Path
    route53: str
    zone_id: str
    record: str
    east: RunningApp
    west: RunningApp
    aurora: GlobalDatabase | None

    def served(self) -> list[str]:
        listed = client("route53", self.route53).list_resource_record_sets(
            HostedZoneId=self.zone_id, StartRecordName=self.record, StartRecordType="A", MaxItems="1"
        )["ResourceRecordSets"]
        return [rr["Value"] for rs in listed if rs["Name"] == self.record for rr in rs["ResourceRecords"]]


@pytest.fixture
def aws_service(
    request: pytest.FixtureRequest,
    moto_endpoint: str,
    ministack_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[AwsService]:
    with_database = bool(getattr(request, "param", False))
    point_aws_at(
        monkeypatch,
        route53=moto_endpoint,
        sts=moto_endpoint,
        rds=ministack_endpoint,
        cloudwatch=ministack_endpoint,
    )
    service = unique("checkout")
    zone = f"{service}.example."
    zone_id = hosted_zone(moto_endpoint, zone)
    record = f"checkout.{zone}"
    client("route53", moto_endpoint).change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={"Changes": [{"Action": "CREATE", "ResourceRecordSet": {
            "Name": record, "Type": "A", "TTL": 1, "ResourceRecords": [{"Value": EAST_ADDRESS}]}}]},
    )  # fmt: skip
    aurora = make_global_database(ministack_endpoint) if with_database else None
    with ExitStack() as stack:
        east = stack.enter_context(serve_app(EAST_ADDRESS))
        west = stack.enter_context(serve_app(WEST_ADDRESS))
        nameserver: Nameserver = stack.enter_context(route53_nameserver(moto_endpoint, zone_id, zone))
        database = (
            ""
            if aurora is None
            else AURORA.format(
                global_cluster=aurora.config.global_cluster,
                east=aurora.config.clusters["us-east-1"],
                west=aurora.config.clusters["us-west-2"],
            )
        )
        (tmp_path / f"{service}.yaml").write_text(
            RUNBOOK.format(
                service=service, east=EAST_ADDRESS, east_port=east.port, west=WEST_ADDRESS, west_port=west.port,
                zone_id=zone_id, zone=zone, ns_name=nameserver.name, ns_address=nameserver.address,
                ns_port=nameserver.port, database=database,
            )
        )  # fmt: skip
        yield AwsService(service, tmp_path, moto_endpoint, zone_id, record, east, west, aurora)


async def start(
    env: WorkflowEnvironment, world: AwsService, task_queue: str, mode: str
) -> WorkflowHandle[FailoverWorkflow, FailoverReport]:
    request = FailoverRequest(
        service=world.service,
        target="us-west-2",
        reason="us-east-1 degraded",
        requested_by="alice",
        mode=mode,  # type: ignore[arg-type]
    )
    return await env.client.start_workflow(
        FailoverWorkflow.run,
        request,
        id=f"failover-{world.service}-{uuid.uuid4().hex[:6]}",
        task_queue=task_queue,
    )


async def test_planned_failover_moves_the_route53_record_and_verifies_it_on_the_nameserver(
    dev_env: WorkflowEnvironment, aws_service: AwsService, task_queue: str
) -> None:
    async with build_worker(dev_env.client, aws_service.runbooks, task_queue=task_queue):
        handle = await start(dev_env, aws_service, task_queue, "planned")
        gate = await wait_for_gate(dev_env.client, handle.id)
        assert gate.plan is not None and gate.plan.dns.provider == "route53"
        assert gate.plan.dns.current.values == [EAST_ADDRESS] and gate.plan.source == "us-east-1"
        await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go"))
        report = await handle.result()

    assert report.outcome == "completed", report.messages
    assert aws_service.served() == [WEST_ADDRESS]
    assert report.dns_change is not None and report.dns_change.applied and report.dns_change.change_id
    assert report.propagation is not None and report.propagation.converged
    assert report.health is not None and report.health.passed


@pytest.mark.parametrize("aws_service", [True], indirect=True, ids=["aurora"])
async def test_emergency_failover_of_aurora_stops_at_the_data_loss_gate_then_moves_the_writer_and_dns(
    dev_env: WorkflowEnvironment, aws_service: AwsService, task_queue: str
) -> None:
    assert aws_service.aurora is not None
    async with build_worker(dev_env.client, aws_service.runbooks, task_queue=task_queue):
        handle = await start(dev_env, aws_service, task_queue, "emergency")
        gate = await wait_for_gate(dev_env.client, handle.id)
        assert gate.plan is not None and gate.plan.database is not None
        assert gate.plan.database.replication.standby_in_recovery is True
        await handle.execute_update(
            FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="region down")
        )

        # Aurora reports no byte position, so the loss cannot be proven within the RPO: a person decides.
        await wait_for_gate(dev_env.client, handle.id, gate="data-loss")
        await handle.execute_update(
            FailoverWorkflow.accept_data_loss, ApprovalInput(approver="bob", reason="us-east-1 is gone")
        )
        # Aurora has no separate fence: the old writer takes writes until the failover moves it, which
        # drflow cannot confirm beforehand, so promoting needs an explicit override too.
        unfenced = await wait_for_gate(dev_env.client, handle.id, gate="unfenced")
        assert unfenced.promotion is None and aws_service.aurora.writer() == "us-east-1"
        await handle.execute_update(
            FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="us-east-1 is unreachable for all")
        )
        report = await handle.result()

    assert report.outcome == "completed", report.messages
    assert aws_service.aurora.writer() == "us-west-2"
    assert aws_service.served() == [WEST_ADDRESS]
    assert report.fence is not None and report.fence.method == "none" and not report.fence.fenced
    assert report.data_loss is not None and not report.data_loss.zero_proven
    assert report.promotion is not None and report.promotion.promoted and report.promotion.writable
    assert [a.decision for a in report.approvals] == ["approved", "data-loss-accepted", "approved"]
    assert report.unfenced_promotion is not None and "unreachable for all" in report.unfenced_promotion


@pytest.mark.parametrize("aws_service", [True], indirect=True)
async def test_readiness_runs_the_providers_preflight_and_a_missing_replica_blocks(
    dev_env: WorkflowEnvironment, aws_service: AwsService, task_queue: str
) -> None:
    """Route53 (moto) and Aurora (ministack): the credentials, zone and clusters a failover's preflight
    checks, checked on the readiness schedule instead, weeks before the failover needs them."""
    from workflows.readiness import ReadinessWorkflow
    from workflows.readiness_report import ReadinessReport, ReadinessRequest

    async def check() -> ReadinessReport:
        async with build_worker(dev_env.client, aws_service.runbooks, task_queue=task_queue):
            return await dev_env.client.execute_workflow(
                ReadinessWorkflow.run, ReadinessRequest(service=aws_service.service),
                id=f"readiness-{aws_service.service}-{uuid.uuid4().hex[:6]}", task_queue=task_queue,
            )  # fmt: skip

    report = await check()
    assert [c.provider for c in report.provider_checks] == ["route53", "aurora-global"]
    assert all(c.ok for c in report.provider_checks), [c.problems for c in report.provider_checks]
    assert any("credentials" in check.name.lower() for check in report.provider_checks[0].checks)

    path = aws_service.runbooks / f"{aws_service.service}.yaml"
    assert aws_service.aurora is not None
    west = aws_service.aurora.config.clusters["us-west-2"]
    missing = west.rsplit(":", 1)[0] + ":no-such-cluster"  # a well-formed ARN of nothing
    path.write_text(path.read_text().replace(f"us-west-2: {west}", f"us-west-2: {missing}"))
    broken = await check()
    assert broken.verdict == "not-ready"
    assert broken.reasons[0].startswith("aurora-global preflight: "), broken.reasons
    assert "no-such-cluster" in broken.reasons[0]


async def test_readiness_warns_while_accelerated_recovery_is_off_and_the_zone_nears_its_quota(
    dev_env: WorkflowEnvironment, aws_service: AwsService, task_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Route53's own readiness, from the wire stand-in in front of moto (which lacks GetHostedZone's
    Features and GetHostedZoneLimit): early warnings that alert and count, with the verdict unchanged,
    since the failover would still go."""
    from workflows.readiness import ReadinessWorkflow
    from workflows.readiness_report import ReadinessReport, ReadinessRequest, render_markdown

    path = aws_service.runbooks / f"{aws_service.service}.yaml"
    path.write_text(
        path.read_text().replace(
            f"hosted_zone_id: {aws_service.zone_id}\n",
            f"hosted_zone_id: {aws_service.zone_id}\n  accelerated_recovery: true\n",
        )
    )

    async def check() -> ReadinessReport:
        async with build_worker(dev_env.client, aws_service.runbooks, task_queue=task_queue):
            return await dev_env.client.execute_workflow(
                ReadinessWorkflow.run, ReadinessRequest(service=aws_service.service),
                id=f"readiness-{aws_service.service}-{uuid.uuid4().hex[:6]}", task_queue=task_queue,
            )  # fmt: skip

    with throttling_proxy(aws_service.route53) as proxy:
        extras = Route53Extras(proxy, limit=3, enabling_reads=0).install()
        point_aws_at(monkeypatch, route53=proxy.endpoint, sts=aws_service.route53)
        report = await check()
        assert report.verdict == "ready", report.reasons
        assert sorted(w.code for w in report.warnings) == ["accelerated-recovery-off", "zone-quota-near"]
        [accelerated] = [w for w in report.warnings if w.code == "accelerated-recovery-off"]
        assert accelerated.message.startswith("route53: accelerated recovery: the runbook expects it")
        assert "- ! record-set quota: 3 of 3 record sets (100%)" in render_markdown(report)

        client("route53", proxy.endpoint).update_hosted_zone_features(
            HostedZoneId=aws_service.zone_id, EnableAcceleratedRecovery=True
        )
        extras.limit = 10000
        fixed = await check()
    assert fixed.verdict == "ready" and fixed.warnings == [], fixed.warnings
    assert extras.status[aws_service.zone_id] == "ENABLED"
