"""A failover, then the failback after it, end to end on AWS emulators, for RDS and for Aurora Global.

The real worker and dev server run both workflows against a runbook shaped like runbooks/examples/aws.yaml:
Route53 on moto (verified on a nameserver answering from its hosted zone), RDS and its CloudWatch on moto
(PromoteReadReplica corrected, see ``moto_promotes_replicas``; ReplicaLag published by the test, in
one-second periods), Aurora Global on ministack. The failback re-syncs the old primary after the switch, so
the service ends where it started: home serving, the other region its standby again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.database.rds import RdsProvider
from runbooks.model import Nameserver
from tests.support.aws import (
    client,
    hosted_zone,
    ministack_server,  # noqa: F401  (session fixture ministack_endpoint)
    moto_promotes_replicas,  # noqa: F401  (fixture)
    moto_server,  # noqa: F401  (session fixture moto_endpoint)
    point_aws_at,
    route53_nameserver,
    throttling_proxy,
    unique,
)
from tests.support.failover import wait_for_gate
from tests.support.http import serve_app
from tests.test_failover_aws import AURORA, EAST_ADDRESS, RUNBOOK, WEST_ADDRESS
from tests.test_rds_aurora import EAST, WEST, GlobalDatabase, make_global_database
from tests.test_rds_resync import APP_GROUP, FENCE_GROUP
from workers.worker import build_worker
from workflows.failback import FailbackWorkflow
from workflows.failback_models import FailbackReport, FailbackRequest
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, DecisionInput, FailoverReport, FailoverRequest

RDS = """\
database:
  provider: rds
  instances:
    us-east-1: {east}
    us-west-2: {west}
  fence_security_groups: {fences}
"""


@dataclass
class RdsPair:
    east_arn: str
    west_id: str

    def described(self, endpoint: str, region: str) -> dict[str, Any]:
        name = self.east_arn if region == EAST else self.west_id
        found: dict[str, Any] = client("rds", endpoint, region).describe_db_instances(
            DBInstanceIdentifier=name
        )["DBInstances"][0]
        return found

    def retired(self, endpoint: str, region: str) -> list[str]:
        name = (self.east_arn if region == EAST else self.west_id).rsplit(":", 1)[-1]
        listed = client("rds", endpoint, region).describe_db_instances()["DBInstances"]
        return [i["DBInstanceIdentifier"] for i in listed if i["DBInstanceIdentifier"].startswith(name + "-")]


@dataclass
class World:
    service: str
    runbooks: Path
    route53: str
    zone_id: str
    record: str
    rds: RdsPair | None
    aurora: GlobalDatabase | None

    def served(self) -> list[str]:
        listed = client("route53", self.route53).list_resource_record_sets(
            HostedZoneId=self.zone_id, StartRecordName=self.record, StartRecordType="A", MaxItems="1"
        )["ResourceRecordSets"]
        return [rr["Value"] for rs in listed if rs["Name"] == self.record for rr in rs["ResourceRecords"]]


def make_rds_pair(endpoint: str) -> RdsPair:
    source = client("rds", endpoint, EAST).create_db_instance(
        DBInstanceIdentifier=unique("orders-use1"), Engine="postgres", EngineVersion="16.3",
        DBInstanceClass="db.r6g.large", MasterUsername="app", MasterUserPassword="not-a-secret-1",
        AllocatedStorage=100, BackupRetentionPeriod=7, VpcSecurityGroupIds=[APP_GROUP],
    )["DBInstance"]  # fmt: skip
    copy = client("rds", endpoint, WEST).create_db_instance_read_replica(
        DBInstanceIdentifier=unique("orders-usw2"), SourceDBInstanceIdentifier=source["DBInstanceArn"],
        VpcSecurityGroupIds=[APP_GROUP],
    )["DBInstance"]  # fmt: skip
    return RdsPair(source["DBInstanceArn"], copy["DBInstanceIdentifier"])


def _publisher(endpoint: str, instances: list[tuple[str, str]], stop: threading.Event) -> threading.Thread:
    cloudwatch = {region: client("cloudwatch", endpoint, region) for region, _ in instances}

    def publish() -> None:
        while not stop.wait(0.2):
            for region, identifier in instances:
                cloudwatch[region].put_metric_data(
                    Namespace="AWS/RDS",
                    MetricData=[{
                        "MetricName": "ReplicaLag", "Value": 0, "Unit": "Seconds",
                        "Dimensions": [{"Name": "DBInstanceIdentifier", "Value": identifier}],
                        "Timestamp": dt.datetime.now(dt.UTC),
                    }],
                )  # fmt: skip

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def world(
    request: pytest.FixtureRequest,
    moto_endpoint: str,
    ministack_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    moto_promotes_replicas: None,  # noqa: F811
) -> Iterator[World]:
    """``request.param``: "rds" (both regions fenceable), "rds-east-unfenceable", or "aurora"."""
    kind: str = request.param
    database_endpoint = ministack_endpoint if kind == "aurora" else moto_endpoint
    point_aws_at(
        monkeypatch, route53=moto_endpoint, sts=moto_endpoint, rds=database_endpoint,
        cloudwatch=database_endpoint,
    )  # fmt: skip
    monkeypatch.setattr(RdsProvider, "LAG_PERIOD_SECONDS", 1)
    service = unique("checkout")
    zone = f"{service}.example."
    zone_id = hosted_zone(moto_endpoint, zone)
    record = f"checkout.{zone}"
    # TTL 2, not the runbook's 1: moto refuses a DELETE+CREATE batch whose CREATE repeats one in the zone's
    # journal exactly (it checks before applying the DELETE), which the failback's CREATE would otherwise do.
    client("route53", moto_endpoint).change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={"Changes": [{"Action": "CREATE", "ResourceRecordSet": {
            "Name": record, "Type": "A", "TTL": 2, "ResourceRecords": [{"Value": EAST_ADDRESS}]}}]},
    )  # fmt: skip
    rds, aurora = None, None
    if kind == "aurora":
        aurora = make_global_database(ministack_endpoint)
        database = AURORA.format(
            global_cluster=aurora.config.global_cluster,
            east=aurora.config.clusters[EAST],
            west=aurora.config.clusters[WEST],
        )
    else:
        rds = make_rds_pair(moto_endpoint)
        fences = (
            {WEST: FENCE_GROUP} if kind == "rds-east-unfenceable" else {EAST: FENCE_GROUP, WEST: FENCE_GROUP}
        )
        database = RDS.format(east=rds.east_arn, west=rds.west_id, fences=fences)
    stop = threading.Event()
    with ExitStack() as stack:
        if rds is not None:
            east_id = rds.east_arn.rsplit(":", 1)[-1]
            _publisher(moto_endpoint, [(EAST, east_id), (WEST, rds.west_id)], stop)
            stack.callback(stop.set)
        east = stack.enter_context(serve_app(EAST_ADDRESS))
        west = stack.enter_context(serve_app(WEST_ADDRESS))
        nameserver: Nameserver = stack.enter_context(route53_nameserver(moto_endpoint, zone_id, zone))
        (tmp_path / f"{service}.yaml").write_text(
            RUNBOOK.format(
                service=service, east=EAST_ADDRESS, east_port=east.port, west=WEST_ADDRESS, west_port=west.port,
                zone_id=zone_id, zone=zone, ns_name=nameserver.name, ns_address=nameserver.address,
                ns_port=nameserver.port, database=database,
            )
        )  # fmt: skip
        yield World(service, tmp_path, moto_endpoint, zone_id, record, rds, aurora)


async def fail_over(env: WorkflowEnvironment, world: World, queue: str, mode: str) -> FailoverReport:
    handle: WorkflowHandle[FailoverWorkflow, FailoverReport] = await env.client.start_workflow(
        FailoverWorkflow.run,
        FailoverRequest(
            service=world.service, target=WEST, reason="us-east-1 degraded", requested_by="alice",
            mode=mode,  # type: ignore[arg-type]
        ),
        id=f"failover-{world.service}-{uuid.uuid4().hex[:6]}",
        task_queue=queue,
    )  # fmt: skip
    await wait_for_gate(env.client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go"))
    if mode == "emergency":
        # No byte position on RDS or Aurora: a person accepts the loss, then overrides the missing fence.
        await wait_for_gate(env.client, handle.id, gate="data-loss")
        await handle.execute_update(
            FailoverWorkflow.accept_data_loss, ApprovalInput(approver="bob", reason="us-east-1 is gone")
        )
        await wait_for_gate(env.client, handle.id, gate="unfenced")
        await handle.execute_update(
            FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="us-east-1 unreachable for all")
        )
    report = await finished(handle)
    assert report.outcome == "completed", report.messages
    assert world.served() == [WEST_ADDRESS]
    return report


async def finished(handle: WorkflowHandle[Any, Any], timeout: float = 120) -> Any:
    """The run's result; a run that waits for a decision instead fails the test, saying at which step."""
    async with asyncio.timeout(timeout):
        while True:
            report = await handle.query(
                "status", result_type=FailbackReport if "failback" in handle.id else FailoverReport
            )
            if report.outcome != "running":
                return await handle.result()
            assert report.waiting_step is None, (report.waiting_step, report.steps[-1].error, report.messages)
            await asyncio.sleep(0.1)


async def start_failback(
    env: WorkflowEnvironment, world: World, queue: str
) -> WorkflowHandle[FailbackWorkflow, FailbackReport]:
    handle: WorkflowHandle[FailbackWorkflow, FailbackReport] = await env.client.start_workflow(
        FailbackWorkflow.run,
        FailbackRequest(
            service=world.service, reason="us-east-1 repaired", requested_by="alice", prepare=True
        ),
        id=f"failback-{world.service}-{uuid.uuid4().hex[:6]}",
        task_queue=queue,
    )
    await wait_for_gate(env.client, handle.id, gate="failback", report_type=FailbackReport, timeout=120)
    await handle.execute_update(FailbackWorkflow.approve, ApprovalInput(approver="bob", reason="home"))
    return handle


def resync_step(report: FailbackReport) -> str:
    [step] = [s for s in report.steps if s.name == f"re-sync {WEST} as a standby of {EAST}"]
    return step.outcome


FAILOVERS = [
    pytest.param("rds", "planned", id="rds-planned"),
    pytest.param("rds-east-unfenceable", "emergency", id="rds-emergency"),
    pytest.param("aurora", "planned", id="aurora-planned"),
    pytest.param("aurora", "emergency", id="aurora-emergency"),
]


@pytest.mark.parametrize(("world", "mode"), FAILOVERS, indirect=["world"])
async def test_a_failover_then_its_failback_complete_and_the_old_primary_is_re_synced(
    dev_env: WorkflowEnvironment, world: World, mode: str, task_queue: str
) -> None:
    async with build_worker(dev_env.client, world.runbooks, task_queue=task_queue):
        failover = await fail_over(dev_env, world, task_queue, mode)
        handle = await start_failback(dev_env, world, task_queue)
        report = await finished(handle)

    assert report.outcome == "completed", report.messages
    assert world.served() == [EAST_ADDRESS]
    assert report.promotion is not None and report.promotion.promoted and report.promotion.writable
    assert report.resynced is not None and report.resynced.streaming, "re-synced, not skipped"
    assert resync_step(report) == "ok"
    assert not any("cannot re-sync" in m or "NOT re-synced" in m for m in report.messages), report.messages
    if world.rds is not None:
        rds, endpoint = world.rds, world.route53
        assert failover.fence is not None and failover.fence.fenced == (mode == "planned")
        if mode == "planned":
            assert failover.data_loss is not None and failover.data_loss.zero_proven
        # The failback fenced us-west-2 and proved the replay on ReplicaLag, then promoted us-east-1 again.
        assert report.fence is not None and report.fence.fenced and report.fence.method == "connections-cut"
        assert report.data_loss is not None and report.data_loss.zero_proven
        assert report.prepared is not None and not report.prepared.already_standby
        home, away = rds.described(endpoint, EAST), rds.described(endpoint, WEST)
        assert "ReadReplicaSourceDBInstanceIdentifier" not in home, "us-east-1 is the primary again"
        assert away["ReadReplicaSourceDBInstanceIdentifier"] == home["DBInstanceArn"]
        assert [g["VpcSecurityGroupId"] for g in away["VpcSecurityGroups"]] == [APP_GROUP]
        assert len(rds.retired(endpoint, EAST)) == 1 and len(rds.retired(endpoint, WEST)) == 1, "kept"
    else:
        assert world.aurora is not None and world.aurora.writer() == EAST
        assert report.resynced.already_standby, "Aurora demoted the old writer itself"


@pytest.mark.parametrize("world", ["aurora"], indirect=True)
async def test_a_detached_old_aurora_writer_fails_the_re_sync_step_with_what_to_do(
    dev_env: WorkflowEnvironment, world: World, task_queue: str
) -> None:
    assert world.aurora is not None
    async with build_worker(dev_env.client, world.runbooks, task_queue=task_queue):
        await fail_over(dev_env, world, task_queue, "emergency")
        client("rds", world.aurora.endpoint, EAST).remove_from_global_cluster(
            GlobalClusterIdentifier=world.aurora.config.global_cluster,
            DbClusterIdentifier=world.aurora.config.clusters[EAST],
        )  # an operator detached it, or Aurora could not rejoin it
        handle = await dev_env.client.start_workflow(
            FailbackWorkflow.run,
            FailbackRequest(
                service=world.service, reason="us-east-1 back", requested_by="alice", prepare=True
            ),
            id=f"failback-{world.service}-{uuid.uuid4().hex[:6]}",
            task_queue=task_queue,
        )
        report = await wait_for_step(handle)
        assert report.waiting_step == f"re-sync {EAST} as a standby of {WEST}"
        [failed] = [s for s in report.steps if s.name == report.waiting_step]
        assert failed.outcome == "failed" and failed.error is not None
        assert "no longer a member of global cluster" in failed.error and "add a new" in failed.error
        assert report.promotion is None and world.served() == [WEST_ADDRESS], "nothing moved"
        await handle.execute_update(
            FailbackWorkflow.decide, DecisionInput(decision="abort", operator="bob", reason="rebuild first")
        )
        final = await finished(handle)
    assert final.outcome == "aborted" and world.served() == [WEST_ADDRESS]


@pytest.mark.parametrize("world", ["rds"], indirect=True)
async def test_an_rds_re_sync_rds_cannot_set_up_after_the_switch_is_a_failed_step_not_a_success(
    dev_env: WorkflowEnvironment, world: World, task_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.rds.models import RDSBackend

    created: list[str] = []
    create = RDSBackend.create_db_instance_read_replica

    def second_one_breaks(self: RDSBackend, db_kwargs: dict[str, Any]) -> Any:
        replica = create(self, db_kwargs)
        created.append(replica.db_instance_identifier)
        if len(created) > 1:  # the re-sync of us-west-2 after the switch; the prepare of us-east-1 works
            replica.status = "incompatible-parameters"
        return replica

    monkeypatch.setattr(RDSBackend, "create_db_instance_read_replica", second_one_breaks)
    async with build_worker(dev_env.client, world.runbooks, task_queue=task_queue):
        await fail_over(dev_env, world, task_queue, "planned")
        handle = await start_failback(dev_env, world, task_queue)
        report = await wait_for_step(handle)
        assert report.waiting_step == f"re-sync {WEST} as a standby of {EAST}"
        [failed] = [s for s in report.steps if s.name == report.waiting_step]
        assert failed.error is not None and "incompatible-parameters" in failed.error
        assert report.promotion is not None and report.dns_change is None, "promoted, DNS not moved yet"

        await handle.execute_update(
            FailbackWorkflow.decide, DecisionInput(decision="skip", operator="bob", reason="DBA rebuilds it")
        )
        final = await finished(handle)
    assert final.outcome == "completed" and final.resynced is None, final.messages
    assert resync_step(final) == "skipped"
    assert any("NOT re-synced" in m for m in final.messages), final.messages
    assert world.served() == [EAST_ADDRESS]


async def wait_for_step(handle: WorkflowHandle[FailbackWorkflow, FailbackReport]) -> FailbackReport:
    async with asyncio.timeout(180):
        while True:
            report = await handle.query(FailbackWorkflow.status)
            if report.waiting_step is not None:
                return report
            assert report.outcome == "running", report.messages
            await asyncio.sleep(0.1)


def rds_state(world: World, endpoint: str) -> list[Any]:
    """What a change would show: the record, each instance's identity, status, source and groups."""
    assert world.rds is not None
    keys = (
        "DBInstanceIdentifier",
        "DBInstanceStatus",
        "ReadReplicaSourceDBInstanceIdentifier",
        "VpcSecurityGroups",
    )
    instances = [world.rds.described(endpoint, region) for region in (EAST, WEST)]
    return [
        world.served(),
        [{k: i.get(k) for k in keys} for i in instances],
        world.rds.retired(endpoint, EAST),
    ]


@pytest.mark.parametrize("world", ["rds"], indirect=True)
async def test_rds_failover_and_failback_dry_runs_send_only_reads(
    dev_env: WorkflowEnvironment,
    world: World,
    moto_endpoint: str,
    task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Plan mode on plain RDS: every request to moto (Route53, STS, RDS, CloudWatch) passes a recording
    proxy, and none of them changes anything (no rrset POST, only Describe/List/Get actions)."""
    assert world.rds is not None

    async def dry(kind: str) -> None:
        with throttling_proxy(moto_endpoint) as moto:
            point_aws_at(
                monkeypatch, route53=moto.endpoint, sts=moto.endpoint, rds=moto.endpoint,
                cloudwatch=moto.endpoint,
            )  # fmt: skip
            before = rds_state(world, moto_endpoint)
            async with build_worker(dev_env.client, world.runbooks, task_queue=task_queue):
                if kind == "failover":
                    report: FailoverReport | FailbackReport = await dev_env.client.execute_workflow(
                        FailoverWorkflow.run,
                        FailoverRequest(service=world.service, target=WEST, reason="plan", dry_run=True),
                        id=f"plan-failover-{uuid.uuid4().hex[:8]}",
                        task_queue=task_queue,
                    )
                else:
                    report = await dev_env.client.execute_workflow(
                        FailbackWorkflow.run,
                        FailbackRequest(service=world.service, reason="plan", prepare=True, dry_run=True),
                        id=f"plan-failback-{uuid.uuid4().hex[:8]}",
                        task_queue=task_queue,
                    )
        assert report.outcome == "dry-run", report.messages
        assert report.plan is not None and report.plan.database is not None
        assert [r for r in moto.forwarded if r[0] != "GET" and "/rrset" in r[1]] == []
        actions = [
            part.removeprefix("Action=")
            for _, _, body in moto.forwarded
            for part in body.split("&")
            if part.startswith("Action=")
        ]
        assert any(a.startswith("DescribeDBInstances") for a in actions), actions
        assert all(a.startswith(("Describe", "List", "Get")) for a in actions), actions
        after = rds_state(world, moto_endpoint)
        assert after == before

    await dry("failover")
    point_aws_at(
        monkeypatch, route53=moto_endpoint, sts=moto_endpoint, rds=moto_endpoint, cloudwatch=moto_endpoint
    )
    async with build_worker(dev_env.client, world.runbooks, task_queue=task_queue):
        await fail_over(dev_env, world, task_queue, "planned")
    await dry("failback")
    assert world.served() == [WEST_ADDRESS]
