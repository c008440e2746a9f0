"""RDS: the security-group fence, the replay wait on ReplicaLag, and the failback re-sync of an ex-primary.

moto serves the instances, their security groups, tags, renames, cross-region read replicas and CloudWatch
(corrected where its PromoteReadReplica keeps the source, see ``moto_promotes_replicas``). What moto cannot
show, because AWS takes minutes for it, is played on moto's own records (a replica that stays ``creating``)
or, for one call sequence, by botocore's Stubber (a replica going from ``creating`` to ``replicating``).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from temporalio.exceptions import ApplicationError

from activities.database.rds import FENCED_AT_TAG, PREVIOUS_GROUPS_TAG, RdsProvider, retired_name
from runbooks.model import RdsDatabase
from tests.support.aws import (
    StubbedClients,
    client,
    clients_for,
    moto_promotes_replicas,  # noqa: F401  (fixture)
    moto_rds_instance,
    moto_server,  # noqa: F401  (session fixture moto_endpoint)
    point_aws_at,
    unique,
)
from tests.test_rds_aurora import EAST, FAST, WEST, instance

APP_GROUP, FENCE_GROUP = "sg-0a1b2c3d4e5f60718", "sg-0fe0ce0fe0ce0fe0c"


@dataclass
class Pair:
    """An RDS source in us-east-1 with a cross-region read replica in us-west-2, on moto."""

    endpoint: str
    config: RdsDatabase

    def described(self, region: str, identifier: str | None = None) -> dict[str, object]:
        name = identifier or self.config.instances[region]
        found: dict[str, object] = client("rds", self.endpoint, region).describe_db_instances(
            DBInstanceIdentifier=name
        )["DBInstances"][0]
        return found

    def groups(self, region: str) -> list[str]:
        return [g["VpcSecurityGroupId"] for g in self.described(region)["VpcSecurityGroups"]]  # type: ignore[attr-defined]

    def retired(self, region: str) -> list[str]:
        name = self.config.instances[region].rsplit(":", 1)[-1]
        listed = client("rds", self.endpoint, region).describe_db_instances()["DBInstances"]
        return [i["DBInstanceIdentifier"] for i in listed if i["DBInstanceIdentifier"].startswith(name + "-")]

    def provider(self) -> RdsProvider:
        return RdsProvider(self.config, clients=clients_for(self.endpoint), backoff=FAST, poll_seconds=0.05)


def make_pair(endpoint: str, *, fence: bool = True, backups: int = 7) -> Pair:
    source = client("rds", endpoint, EAST).create_db_instance(
        DBInstanceIdentifier=unique("orders-use1"), Engine="postgres", EngineVersion="16.3",
        DBInstanceClass="db.r6g.large", MasterUsername="app", MasterUserPassword="not-a-secret-1",
        AllocatedStorage=100, BackupRetentionPeriod=backups, VpcSecurityGroupIds=[APP_GROUP],
    )["DBInstance"]  # fmt: skip
    copy = client("rds", endpoint, WEST).create_db_instance_read_replica(
        DBInstanceIdentifier=unique("orders-usw2"), SourceDBInstanceIdentifier=source["DBInstanceArn"],
        VpcSecurityGroupIds=[APP_GROUP],
    )["DBInstance"]  # fmt: skip
    config = RdsDatabase(
        provider="rds",
        instances={EAST: source["DBInstanceArn"], WEST: copy["DBInstanceIdentifier"]},
        fence_security_groups={EAST: FENCE_GROUP, WEST: FENCE_GROUP} if fence else {},
    )
    return Pair(endpoint, config)


@pytest.fixture
def pair(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, moto_promotes_replicas: None) -> Pair:  # noqa: F811
    point_aws_at(monkeypatch, rds=moto_endpoint, cloudwatch=moto_endpoint, sts=moto_endpoint)
    return make_pair(moto_endpoint)


@pytest.fixture
def failed_over(pair: Pair) -> Pair:
    """After an emergency failover: us-west-2 promoted, us-east-1 a standalone ex-primary."""
    pair.provider().promote(WEST, timeout_seconds=5)
    assert "ReadReplicaSourceDBInstanceIdentifier" not in pair.described(WEST)
    return pair


# ---------------------------------------------------------------------------------------------- fence
def test_the_planned_fence_swaps_in_the_fence_group_keeps_the_old_ones_and_the_unfence_restores_them(
    pair: Pair,
) -> None:
    provider = pair.provider()

    fence = provider.fence(EAST, "planned")

    assert (fence.method, fence.fenced, fence.already_fenced) == ("connections-cut", True, False)
    assert pair.groups(EAST) == [FENCE_GROUP]
    assert fence.final_lsn is not None and fence.final_lsn.startswith(f"{EAST}@")
    assert any("RebootDBInstance" in a for a in fence.actions), fence.actions
    tags = {t["Key"]: t["Value"] for t in pair.described(EAST)["TagList"]}  # type: ignore[attr-defined]
    assert tags[PREVIOUS_GROUPS_TAG] == APP_GROUP and FENCED_AT_TAG in tags

    again = provider.fence(EAST, "planned")
    assert again.already_fenced and again.final_lsn == fence.final_lsn, "a retry changes nothing"
    assert not any("RebootDBInstance" in a for a in again.actions)

    unfenced = provider.unfence(EAST)
    assert unfenced.restored and pair.groups(EAST) == [APP_GROUP]
    tags = {t["Key"]: t["Value"] for t in pair.described(EAST).get("TagList", [])}  # type: ignore[attr-defined]
    assert PREVIOUS_GROUPS_TAG not in tags and FENCED_AT_TAG not in tags
    assert "nothing to undo" in provider.unfence(EAST).actions[0]


def test_a_planned_fence_without_a_fence_group_refuses_and_names_the_field(moto_endpoint: str) -> None:
    world = make_pair(moto_endpoint, fence=False)
    with pytest.raises(ApplicationError) as raised:
        world.provider().fence(EAST, "drill")
    assert raised.value.type == "FenceFailed" and raised.value.non_retryable
    assert "database.fence_security_groups.us-east-1 is not set" in raised.value.message
    assert world.groups(EAST) == [APP_GROUP], "nothing was changed"


def test_an_unfence_without_a_record_of_the_old_groups_refuses_rather_than_guess(pair: Pair) -> None:
    client("rds", pair.endpoint, EAST).modify_db_instance(
        DBInstanceIdentifier=pair.config.instances[EAST],
        VpcSecurityGroupIds=[FENCE_GROUP],
        ApplyImmediately=True,
    )
    with pytest.raises(ApplicationError) as raised:
        pair.provider().unfence(EAST)
    assert raised.value.type == "UnfenceFailed" and PREVIOUS_GROUPS_TAG in raised.value.message


# ------------------------------------------------------------------------------------- wait for replay
@pytest.fixture
def one_second_periods(monkeypatch: pytest.MonkeyPatch) -> None:
    """ReplicaLag in one-second periods: the same rule as AWS's one-minute ones, in test time."""
    monkeypatch.setattr(RdsProvider, "LAG_PERIOD_SECONDS", 1)


@pytest.fixture
def lag(pair: Pair) -> Iterator[list[float]]:
    """What RDS does every period: publish the replica's ReplicaLag (the list's last value) in us-west-2."""
    value = [0.0]
    stop = threading.Event()
    cloudwatch = client("cloudwatch", pair.endpoint, WEST)

    def publish() -> None:
        while not stop.is_set():
            cloudwatch.put_metric_data(
                Namespace="AWS/RDS",
                MetricData=[{
                    "MetricName": "ReplicaLag", "Value": value[-1], "Unit": "Seconds",
                    "Dimensions": [{"Name": "DBInstanceIdentifier", "Value": pair.config.instances[WEST]}],
                    "Timestamp": dt.datetime.now(dt.UTC),
                }],
            )  # fmt: skip
            stop.wait(0.2)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    yield value
    stop.set()
    thread.join(5)


def test_the_replay_wait_needs_consecutive_zero_lag_periods_after_the_fence(
    pair: Pair, one_second_periods: None, lag: list[float]
) -> None:
    provider = pair.provider()
    fence = provider.fence(EAST, "planned")
    assert fence.final_lsn is not None

    replay = provider.wait_for_replay(WEST, fence.final_lsn, timeout_seconds=15)

    assert replay.reached, replay
    assert replay.replay_lsn is not None and "ReplicaLag 0 in 2 periods" in replay.replay_lsn
    assert replay.waited_ms >= 2000, "two whole periods after the fence"


def test_a_replica_that_keeps_lagging_does_not_reach_the_fence_position(
    pair: Pair, one_second_periods: None, lag: list[float]
) -> None:
    lag.append(3.0)
    provider = pair.provider()
    fence = provider.fence(EAST, "planned")
    assert fence.final_lsn is not None

    replay = provider.wait_for_replay(WEST, fence.final_lsn, timeout_seconds=3)

    assert not replay.reached and replay.replay_lsn is None


def test_a_position_that_is_not_an_rds_fence_has_no_meaning_here(pair: Pair) -> None:
    with pytest.raises(ApplicationError) as raised:
        pair.provider().wait_for_replay(WEST, "0/3000060", timeout_seconds=1)
    assert raised.value.type == "NotApplicableToProvider"


# -------------------------------------------------------------------------------------------- re-sync
def test_the_re_sync_retires_the_ex_primary_and_creates_a_replica_of_the_current_primary(
    failed_over: Pair,
) -> None:
    world = failed_over
    provider = world.provider()

    prepared = provider.prepare_standby(EAST, WEST, timeout_seconds=10)

    assert not prepared.already_standby and prepared.streaming and not prepared.rewound
    assert prepared.diverged is None
    home = world.described(EAST)
    assert home["ReadReplicaSourceDBInstanceIdentifier"] == world.described(WEST)["DBInstanceArn"]
    assert home["DBInstanceClass"] == "db.r6g.large" and world.groups(EAST) == [APP_GROUP]
    [retired] = world.retired(EAST)
    assert "-drflow-retired-" in retired
    kept = world.described(EAST, retired)
    assert "ReadReplicaSourceDBInstanceIdentifier" not in kept, "the ex-primary is kept, standalone"
    assert any(f"renamed {retired}" in a for a in prepared.actions), prepared.actions
    assert any("security groups " + APP_GROUP in a for a in prepared.actions), prepared.actions

    again = provider.prepare_standby(EAST, WEST, timeout_seconds=10)
    assert again.already_standby and world.retired(EAST) == [retired], "idempotent: no second rename"


def test_a_re_sync_retried_after_the_rename_does_not_rename_again(failed_over: Pair) -> None:
    world = failed_over
    name = world.config.instances[EAST].rsplit(":", 1)[-1]
    renamed = retired_name(name, dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    client("rds", world.endpoint, EAST).modify_db_instance(
        DBInstanceIdentifier=name, NewDBInstanceIdentifier=renamed, ApplyImmediately=True
    )  # what the attempt whose answer was lost did

    prepared = world.provider().prepare_standby(EAST, WEST, timeout_seconds=10)

    assert any(f"renamed {renamed} already" in a for a in prepared.actions), prepared.actions
    assert world.retired(EAST) == [renamed]
    assert world.described(EAST)["ReadReplicaSourceDBInstanceIdentifier"]


def test_a_fenced_ex_primary_lends_the_new_replica_its_groups_from_before_the_fence(pair: Pair) -> None:
    provider = pair.provider()
    provider.fence(EAST, "planned")
    provider.promote(WEST, timeout_seconds=5)

    provider.prepare_standby(EAST, WEST, timeout_seconds=10)

    assert pair.groups(EAST) == [APP_GROUP], "the new replica is reachable"
    [retired] = pair.retired(EAST)
    assert [g["VpcSecurityGroupId"] for g in pair.described(EAST, retired)["VpcSecurityGroups"]] == [  # type: ignore[attr-defined]
        FENCE_GROUP
    ], "the retired ex-primary stays fenced"


def test_a_source_without_backups_is_refused_before_anything_is_renamed(failed_over: Pair) -> None:
    world = failed_over
    client("rds", world.endpoint, WEST).modify_db_instance(
        DBInstanceIdentifier=world.config.instances[WEST], BackupRetentionPeriod=0, ApplyImmediately=True
    )
    report = world.provider().preflight(WEST, EAST)
    assert any("can be a read replica source" in p and "backups are off" in p for p in report.problems)

    with pytest.raises(ApplicationError) as raised:
        world.provider().prepare_standby(EAST, WEST, timeout_seconds=5)

    assert raised.value.type == "StandbyResyncFailed" and raised.value.non_retryable
    assert "BackupRetentionPeriod 0" in raised.value.message and "nothing was changed" in raised.value.message
    assert world.retired(EAST) == [] and "ReadReplicaSourceDBInstanceIdentifier" not in world.described(EAST)


def test_a_replica_still_creating_at_the_timeout_is_a_retryable_failure_and_the_retry_waits_for_it(
    failed_over: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.rds.models import RDSBackend

    world = failed_over
    create = RDSBackend.create_db_instance_read_replica

    def slow(self: RDSBackend, db_kwargs: dict[str, object]) -> object:
        created = create(self, db_kwargs)
        created.status = "creating"  # AWS copies the whole database first: minutes to hours
        return created

    monkeypatch.setattr(RDSBackend, "create_db_instance_read_replica", slow)
    with pytest.raises(ApplicationError) as raised:
        world.provider().prepare_standby(EAST, WEST, timeout_seconds=0.5)
    assert raised.value.type == "StandbyResyncFailed" and not raised.value.non_retryable
    assert "still creating" in raised.value.message and "creating no other" in raised.value.message

    moto_rds_instance(EAST, world.config.instances[EAST].rsplit(":", 1)[-1]).status = "available"
    prepared = world.provider().prepare_standby(EAST, WEST, timeout_seconds=5)
    assert prepared.streaming and len(world.retired(EAST)) == 1


def test_a_replica_rds_could_not_set_up_is_a_non_retryable_failure(
    failed_over: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.rds.models import RDSBackend

    create = RDSBackend.create_db_instance_read_replica

    def broken(self: RDSBackend, db_kwargs: dict[str, object]) -> object:
        created = create(self, db_kwargs)
        created.status = "incompatible-parameters"
        return created

    monkeypatch.setattr(RDSBackend, "create_db_instance_read_replica", broken)
    with pytest.raises(ApplicationError) as raised:
        failed_over.provider().prepare_standby(EAST, WEST, timeout_seconds=5)
    assert raised.value.type == "StandbyResyncFailed" and raised.value.non_retryable
    assert "incompatible-parameters" in raised.value.message and "retired name" in raised.value.message


STUBBED = RdsDatabase(
    provider="rds",
    instances={EAST: "orders-use1", WEST: "arn:aws:rds:us-west-2:123456789012:db:orders-usw2"},
)


def test_the_re_sync_waits_for_a_replica_being_created_until_it_replicates() -> None:
    clients = StubbedClients()
    east, west = clients.stub("rds", EAST), clients.stub("rds", WEST)
    source = STUBBED.instances[WEST]
    west.add_response("describe_db_instances", instance("orders-usw2", "available", None))
    east.add_response("describe_db_instances", instance("orders-use1", "creating", source))
    east.add_response("describe_db_instances", instance("orders-use1", "creating", source))
    east.add_response("describe_db_instances", instance("orders-use1", "backing-up", source))
    replicating = instance("orders-use1", "available", source)
    replicating["DBInstances"][0]["StatusInfos"] = [  # type: ignore[index]
        {"StatusType": "read replication", "Normal": True, "Status": "replicating"}
    ]
    east.add_response("describe_db_instances", replicating)

    prepared = RdsProvider(STUBBED, clients=clients, backoff=FAST, poll_seconds=0.01).prepare_standby(
        EAST, WEST, timeout_seconds=5
    )

    assert not prepared.already_standby and prepared.streaming
    assert "being set up (creating): waiting" in prepared.actions[0]
    assert "replicating" in prepared.actions[-1]
    clients.assert_all_used()


# ------------------------------------------------------------------------------------------- runbook
def _runbook(database: dict[str, object]) -> dict[str, object]:
    return {
        "service": "orders", "objectives": {"rto": "5m", "rpo": "30s"}, "primary": EAST,
        "regions": {EAST: {"address": "192.0.2.1"}, WEST: {"address": "192.0.2.2"}},
        "dns": {"provider": "route53", "hosted_zone_id": "Z123", "zone": "example.com.",
                "record": "orders.example.com.", "ttl": 30},
        "database": {"provider": "rds", "instances": {EAST: "orders-use1", WEST: "orders-usw2"}, **database},
        "health": [{"name": "deep", "http": {"url": "https://{region}.example.com/"}}],
        "approvals": {"approvers": ["alice"]},
    }  # fmt: skip


def test_fence_security_groups_are_security_group_ids_of_the_runbook_instances() -> None:
    from runbooks.model import Runbook

    with pytest.raises(ValueError, match="fence_security_groups"):
        Runbook.model_validate(_runbook({"fence_security_groups": {EAST: "default"}}))
    with pytest.raises(ValueError, match=r"fence_security_groups\.eu-west-1: 'eu-west-1' has no instance"):
        Runbook.model_validate(_runbook({"fence_security_groups": {"eu-west-1": FENCE_GROUP}}))
    runbook = Runbook.model_validate(_runbook({"fence_security_groups": {EAST: FENCE_GROUP}}))
    assert isinstance(runbook.database, RdsDatabase) and runbook.database.resync_problem(EAST) is None
    plain = Runbook.model_validate(_runbook({}))
    assert plain.database is not None
    assert "fence_security_groups" not in plain.database.model_dump(), "serialised as before the field"
