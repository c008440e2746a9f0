"""RDS and Aurora Global providers. Which server answers what:

- Aurora roles, switchover and failover: ministack (moto does not implement SwitchoverGlobalCluster or
  FailoverGlobalCluster); its CloudWatch holds the lag metrics a test publishes, as Aurora would.
- RDS instances, a cross-region read replica and CloudWatch ReplicaLag: moto.
- RDS promotion state (replica -> modifying -> standalone and available) and Aurora's intermediate
  "switching-over" states: botocore's Stubber with responses shaped as in the API reference, because moto's
  PromoteReadReplica changes no state and ministack settles a switchover before anyone can look.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.cloud.retry import Backoff
from activities.database import activities as database
from activities.database.aurora import AuroraProvider
from activities.database.rds import RdsProvider
from runbooks.model import AuroraGlobalDatabase, RdsDatabase
from tests.support.aws import (
    RdsExtras,
    StubbedClients,
    client,
    clients_for,
    ministack_server,  # noqa: F401  (session fixture ministack_endpoint)
    moto_server,  # noqa: F401  (session fixture moto_endpoint)
    point_aws_at,
    throttling_proxy,
    unique,
)

EAST, WEST = "us-east-1", "us-west-2"
FAST = Backoff(attempts=6, base_seconds=0.01, cap_seconds=0.05)


def publish(
    endpoint: str, region: str, metric: str, dimension: tuple[str, str], value: float, unit: str
) -> None:
    """What RDS itself does every minute: put the metric into the region's CloudWatch."""
    client("cloudwatch", endpoint, region).put_metric_data(
        Namespace="AWS/RDS",
        MetricData=[{
            "MetricName": metric, "Dimensions": [{"Name": dimension[0], "Value": dimension[1]}],
            "Value": value, "Unit": unit, "Timestamp": dt.datetime.now(dt.UTC),
        }],
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- Aurora
@dataclass
class GlobalDatabase:
    endpoint: str
    config: AuroraGlobalDatabase

    def writer(self) -> str:
        described = client("rds", self.endpoint, WEST).describe_global_clusters(
            GlobalClusterIdentifier=self.config.global_cluster
        )["GlobalClusters"][0]
        [arn] = [m["DBClusterArn"] for m in described["GlobalClusterMembers"] if m["IsWriter"]]
        return next(region for region, cluster in self.config.clusters.items() if cluster == arn)


def make_global_database(endpoint: str) -> GlobalDatabase:
    name = unique("checkout-global")
    east, west = client("rds", endpoint, EAST), client("rds", endpoint, WEST)
    engine = {"Engine": "aurora-postgresql", "EngineVersion": "15.10"}
    east.create_global_cluster(GlobalClusterIdentifier=name, **engine)
    primary = east.create_db_cluster(
        DBClusterIdentifier=unique("use1"), GlobalClusterIdentifier=name, MasterUsername="app",
        MasterUserPassword="not-a-secret-1", **engine,
    )["DBCluster"]  # fmt: skip
    secondary = west.create_db_cluster(
        DBClusterIdentifier=unique("usw2"), GlobalClusterIdentifier=name, **engine
    )["DBCluster"]
    config = AuroraGlobalDatabase(
        provider="aurora-global",
        global_cluster=name,
        clusters={EAST: primary["DBClusterArn"], WEST: secondary["DBClusterArn"]},
    )
    return GlobalDatabase(endpoint, config)


@pytest.fixture
def aurora(ministack_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> GlobalDatabase:
    point_aws_at(monkeypatch, rds=ministack_endpoint, cloudwatch=ministack_endpoint, sts=ministack_endpoint)
    return make_global_database(ministack_endpoint)


def aurora_provider(world: GlobalDatabase, endpoint: str | None = None) -> AuroraProvider:
    return AuroraProvider(
        world.config, clients=clients_for(endpoint or world.endpoint), backoff=FAST, poll_seconds=0.05
    )


def test_aurora_measure_reads_roles_from_the_global_cluster_and_lag_from_cloudwatch(
    aurora: GlobalDatabase,
) -> None:
    secondary = aurora.config.clusters[WEST].rsplit(":", 1)[1]
    publish(
        aurora.endpoint,
        WEST,
        "AuroraGlobalDBReplicationLag",
        ("DBClusterIdentifier", secondary),
        1200,
        "Milliseconds",
    )
    publish(
        aurora.endpoint,
        WEST,
        "AuroraGlobalDBRPOLag",
        ("DBClusterIdentifier", secondary),
        3000,
        "Milliseconds",
    )

    status = aurora_provider(aurora).measure_replication(EAST, WEST)

    assert (status.primary_in_recovery, status.standby_in_recovery) == (False, True)
    assert status.primary_reachable and status.standby_reachable
    assert status.lag_seconds == 3.0, "the larger of replication lag and RPO lag, in seconds"
    assert status.lag_bytes is None and status.primary_lsn is None and status.standby_replay_lsn is None
    assert status.errors == []


def test_aurora_without_lag_metrics_reports_the_lag_unknown_and_says_why(aurora: GlobalDatabase) -> None:
    status = aurora_provider(aurora).measure_replication(EAST, WEST)
    assert status.lag_seconds is None
    assert any("no AuroraGlobalDBReplicationLag datapoint" in error for error in status.errors)


def test_aurora_planned_failover_switches_over_and_waits_until_the_target_is_the_writer(
    aurora: GlobalDatabase,
) -> None:
    provider = aurora_provider(aurora)
    fence = provider.fence(EAST, "planned")
    assert (fence.method, fence.fenced, fence.final_lsn) == ("none", False, None)
    assert "SwitchoverGlobalCluster (at promotion) demotes" in fence.actions[0]

    promotion = provider.promote(WEST, timeout_seconds=20, mode="planned")

    assert promotion.promoted and promotion.writable and not promotion.already_primary
    assert "SwitchoverGlobalCluster" in promotion.actions[0] and "no data loss" in promotion.actions[0]
    assert aurora.writer() == WEST
    roles = provider.measure_replication(EAST, WEST)
    assert (roles.primary_in_recovery, roles.standby_in_recovery) == (True, False)
    again = provider.promote(WEST, timeout_seconds=20, mode="planned")
    assert again.already_primary and not again.promoted
    assert provider.fence(EAST, "planned").already_fenced, "the old writer is now a secondary"


def test_aurora_emergency_failover_allows_data_loss_and_only_then(aurora: GlobalDatabase) -> None:
    with throttling_proxy(aurora.endpoint) as proxy:
        provider = aurora_provider(aurora, proxy.endpoint)
        fence = provider.fence(EAST, "emergency")
        assert not fence.fenced and "those writes are lost" in fence.errors[0]

        promotion = provider.promote(WEST, timeout_seconds=20, mode="emergency")

    assert promotion.promoted and "AllowDataLoss" in promotion.actions[0]
    assert aurora.writer() == WEST
    [sent] = [body for _, _, body in proxy.forwarded if "Action=FailoverGlobalCluster" in body]
    assert "AllowDataLoss=true" in sent
    assert not any("Action=SwitchoverGlobalCluster" in body for _, _, body in proxy.forwarded)


def test_aurora_throttled_switchover_is_retried_and_sent_exactly_once(aurora: GlobalDatabase) -> None:
    with throttling_proxy(aurora.endpoint) as proxy:
        proxy.add(lambda m, p, body: "Action=SwitchoverGlobalCluster" in body, 2, "Throttling")
        proxy.add(lambda m, p, body: "Action=DescribeGlobalClusters" in body, 1, "Throttling")

        promotion = aurora_provider(aurora, proxy.endpoint).promote(WEST, timeout_seconds=20, mode="drill")

    assert promotion.promoted and aurora.writer() == WEST
    assert len(proxy.refused) == 3
    assert proxy.count(lambda m, p, body: "Action=SwitchoverGlobalCluster" in body) == 1


def test_aurora_preflight_checks_the_global_cluster_and_both_members(aurora: GlobalDatabase) -> None:
    report = aurora_provider(aurora).preflight(EAST, WEST)
    assert report.ok, report.markdown()
    assert [check.ok for check in report.checks][:4] == [True, True, True, True]

    missing = aurora.config.model_copy(update={"global_cluster": "no-such-global"})
    report = AuroraProvider(missing, clients=clients_for(aurora.endpoint), backoff=FAST).preflight(EAST, WEST)
    assert not report.ok and "no-such-global" in report.problems[0]


def test_the_database_activities_dispatch_aurora_by_the_runbook_provider(aurora: GlobalDatabase) -> None:
    env = ActivityEnvironment()
    fence = env.run(
        database.fence, database.DatabaseFenceRequest(database=aurora.config, region=EAST, mode="planned")
    )
    assert fence.method == "none"
    promotion = env.run(
        database.promote, database.DatabasePromoteRequest(database=aurora.config, region=WEST, mode="planned")
    )
    assert promotion.promoted and aurora.writer() == WEST
    with pytest.raises(ApplicationError) as raised:
        env.run(
            database.wait_for_replay,
            database.ReplayRequest(database=aurora.config, region=WEST, position="0/0", timeout_seconds=1),
        )
    assert raised.value.type == "NotApplicableToProvider"


GLOBAL = "checkout-global"
EAST_ARN = "arn:aws:rds:us-east-1:123456789012:cluster:checkout-use1"
WEST_ARN = "arn:aws:rds:us-west-2:123456789012:cluster:checkout-usw2"
STUBBED_AURORA = AuroraGlobalDatabase(
    provider="aurora-global", global_cluster=GLOBAL, clusters={EAST: EAST_ARN, WEST: WEST_ARN}
)


def global_cluster(writer: str, status: str = "available", moving_to: str | None = None) -> dict[str, object]:
    """DescribeGlobalClusters' answer, as in the RDS API reference."""
    members = [
        {"DBClusterArn": arn, "IsWriter": arn == writer, "Readers": [], "SynchronizationStatus": "connected"}
        for arn in (EAST_ARN, WEST_ARN)
    ]
    answer: dict[str, object] = {
        "GlobalClusterIdentifier": GLOBAL, "Status": status, "Engine": "aurora-postgresql",
        "EngineVersion": "15.10", "GlobalClusterMembers": members,
    }  # fmt: skip
    if moving_to is not None:
        answer["FailoverState"] = {
            "Status": "switching-over", "FromDbClusterArn": writer, "ToDbClusterArn": moving_to,
            "IsDataLossAllowed": False,
        }  # fmt: skip
    return {"GlobalClusters": [answer]}


def test_aurora_promotion_waits_through_switching_over_until_the_target_writes() -> None:
    clients = StubbedClients()
    rds = clients.stub("rds", WEST)
    rds.add_response("describe_global_clusters", global_cluster(EAST_ARN))
    rds.add_response(
        "switchover_global_cluster",
        {"GlobalCluster": global_cluster(EAST_ARN, "switching-over", WEST_ARN)["GlobalClusters"][0]},  # type: ignore[index]
        {"GlobalClusterIdentifier": GLOBAL, "TargetDbClusterIdentifier": WEST_ARN},
    )
    rds.add_response("describe_global_clusters", global_cluster(EAST_ARN, "switching-over", WEST_ARN))
    rds.add_response("describe_global_clusters", global_cluster(WEST_ARN, "switching-over", WEST_ARN))
    rds.add_response("describe_global_clusters", global_cluster(WEST_ARN))
    rds.add_response(
        "describe_db_clusters", {"DBClusters": [{"DBClusterArn": WEST_ARN, "Status": "available"}]}
    )

    promotion = AuroraProvider(STUBBED_AURORA, clients=clients, backoff=FAST, poll_seconds=0.01).promote(
        WEST, timeout_seconds=5, mode=None
    )

    assert promotion.promoted and "SwitchoverGlobalCluster" in promotion.actions[0]
    clients.assert_all_used()


def test_aurora_refuses_to_promote_while_the_writer_moves_elsewhere() -> None:
    third = "arn:aws:rds:eu-west-1:123456789012:cluster:checkout-euw1"
    clients = StubbedClients()
    clients.stub("rds", WEST).add_response(
        "describe_global_clusters", global_cluster(EAST_ARN, "switching-over", third)
    )

    with pytest.raises(ApplicationError) as raised:
        AuroraProvider(STUBBED_AURORA, clients=clients, backoff=FAST).promote(
            WEST, timeout_seconds=5, mode="planned"
        )

    assert raised.value.type == "DatabaseStateConflict" and third in raised.value.message
    clients.assert_all_used()


# ------------------------------------------------------------------------------------------------ RDS
@dataclass
class ReadReplica:
    endpoint: str
    config: RdsDatabase


@pytest.fixture
def replica(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> ReadReplica:
    point_aws_at(monkeypatch, rds=moto_endpoint, cloudwatch=moto_endpoint, sts=moto_endpoint)
    source = client("rds", moto_endpoint, EAST).create_db_instance(
        DBInstanceIdentifier=unique("orders-use1"), Engine="postgres", DBInstanceClass="db.r6g.large",
        MasterUsername="app", MasterUserPassword="not-a-secret-1", AllocatedStorage=100,
    )["DBInstance"]  # fmt: skip
    copy = client("rds", moto_endpoint, WEST).create_db_instance_read_replica(
        DBInstanceIdentifier=unique("orders-usw2"), SourceDBInstanceIdentifier=source["DBInstanceArn"]
    )["DBInstance"]
    config = RdsDatabase(
        provider="rds", instances={EAST: source["DBInstanceArn"], WEST: copy["DBInstanceIdentifier"]}
    )
    return ReadReplica(moto_endpoint, config)


def test_rds_measure_reads_roles_from_the_instances_and_replica_lag_from_cloudwatch(
    replica: ReadReplica,
) -> None:
    publish(
        replica.endpoint,
        WEST,
        "ReplicaLag",
        ("DBInstanceIdentifier", replica.config.instances[WEST]),
        4,
        "Seconds",
    )

    status = ActivityEnvironment().run(
        database.measure_replication,
        database.ReplicationRequest(database=replica.config, primary=EAST, standby=WEST),
    )

    assert (status.primary_in_recovery, status.standby_in_recovery) == (False, True)
    assert status.lag_seconds == 4.0 and status.lag_bytes is None
    assert status.errors == []


def test_rds_planned_failover_refuses_at_the_fence_because_rds_cannot_fence(replica: ReadReplica) -> None:
    provider = RdsProvider(replica.config, clients=clients_for(replica.endpoint), backoff=FAST)

    with pytest.raises(ApplicationError) as raised:
        provider.fence(EAST, "planned")
    assert raised.value.type == "FenceFailed" and raised.value.non_retryable
    assert "run an emergency failover" in raised.value.message

    emergency = provider.fence(EAST, "emergency")
    assert (emergency.method, emergency.fenced, emergency.final_lsn) == ("none", False, None)
    assert "was not fenced" in emergency.errors[0]
    unfenced = provider.unfence(EAST)
    assert unfenced.restored and "nothing to undo" in unfenced.actions[0]


def test_rds_preflight_checks_both_instances_and_the_replication_source(replica: ReadReplica) -> None:
    publish(
        replica.endpoint,
        WEST,
        "ReplicaLag",
        ("DBInstanceIdentifier", replica.config.instances[WEST]),
        1,
        "Seconds",
    )
    report = RdsProvider(replica.config, clients=clients_for(replica.endpoint), backoff=FAST).preflight(
        EAST, WEST
    )
    assert report.ok, report.markdown()
    assert "us-west-2 replicates from us-east-1" in report.markdown()

    swapped = RdsProvider(replica.config, clients=clients_for(replica.endpoint), backoff=FAST).preflight(
        WEST, EAST
    )
    assert not swapped.ok and any("us-east-1 replicates from us-west-2" in p for p in swapped.problems)


def test_rds_preflight_advises_when_the_source_region_has_no_room_for_the_re_sync(
    replica: ReadReplica,
) -> None:
    """DescribeAccountAttributes (moto lacks it) from the wire stand-in: the DBInstances quota of the region
    the request is signed for, its use counted from moto's instances there."""
    without = RdsProvider(replica.config, clients=clients_for(replica.endpoint), backoff=FAST).preflight(
        EAST, WEST
    )
    [unknown] = [c for c in without.checks if c.name == "DB instance quota in us-east-1"]
    assert unknown.ok is None and unknown.detail.startswith("could not be read"), "never guessed"

    used = len(client("rds", replica.endpoint, EAST).describe_db_instances()["DBInstances"])
    with throttling_proxy(replica.endpoint) as proxy:
        extras = RdsExtras(proxy, max_instances=used + 10).install()
        roomy = RdsProvider(replica.config, clients=clients_for(proxy.endpoint), backoff=FAST).preflight(
            EAST, WEST
        )
        extras.max_instances = used
        full = RdsProvider(replica.config, clients=clients_for(proxy.endpoint), backoff=FAST).preflight(
            EAST, WEST
        )

    [fine] = [c for c in roomy.checks if c.name == "DB instance quota in us-east-1"]
    assert fine.ok is True and fine.detail == f"{used} of {used + 10} DB instances"
    assert roomy.advice == []
    [advice] = full.advice
    assert advice.warning == "instance-quota-near" and advice.name == "DB instance quota in us-east-1"
    assert "(no room)" in advice.detail and "Service Quotas" in advice.detail
    assert full.ok, "advice never refuses a failover"


def instance(identifier: str, status: str, source: str | None) -> dict[str, object]:
    """DescribeDBInstances' answer, as in the RDS API reference."""
    described: dict[str, object] = {
        "DBInstanceIdentifier": identifier, "DBInstanceStatus": status, "Engine": "postgres",
        "DBInstanceArn": f"arn:aws:rds:us-west-2:123456789012:db:{identifier}",
    }  # fmt: skip
    if source is not None:
        described["ReadReplicaSourceDBInstanceIdentifier"] = source
    return {"DBInstances": [described]}


STUBBED_RDS = RdsDatabase(
    provider="rds", instances={EAST: "arn:aws:rds:us-east-1:123456789012:db:orders-use1", WEST: "orders-usw2"}
)


def test_rds_promotion_promotes_the_replica_and_waits_until_it_stands_alone() -> None:
    clients = StubbedClients()
    rds = clients.stub("rds", WEST)
    source = STUBBED_RDS.instances[EAST]
    rds.add_response("describe_db_instances", instance("orders-usw2", "available", source))
    rds.add_response(
        "promote_read_replica",
        {"DBInstance": instance("orders-usw2", "modifying", source)["DBInstances"][0]},  # type: ignore[index]
        {"DBInstanceIdentifier": "orders-usw2"},
    )
    rds.add_response("describe_db_instances", instance("orders-usw2", "modifying", source))
    rds.add_response("describe_db_instances", instance("orders-usw2", "rebooting", None))
    rds.add_response("describe_db_instances", instance("orders-usw2", "available", None))

    promotion = RdsProvider(STUBBED_RDS, clients=clients, backoff=FAST, poll_seconds=0.01).promote(WEST, 5)

    assert promotion.promoted and promotion.writable and not promotion.already_primary
    assert promotion.replay_lsn_at_promotion is None and promotion.timeline is None
    assert "PromoteReadReplica" in promotion.actions[0]
    clients.assert_all_used()


def test_rds_promotion_of_a_standalone_instance_changes_nothing() -> None:
    clients = StubbedClients()
    rds = clients.stub("rds", WEST)
    rds.add_response("describe_db_instances", instance("orders-usw2", "available", None))
    rds.add_response("describe_db_instances", instance("orders-usw2", "available", None))

    promotion = RdsProvider(STUBBED_RDS, clients=clients, backoff=FAST).promote(WEST, 5)

    assert promotion.already_primary and not promotion.promoted
    clients.assert_all_used()


def test_rds_throttling_is_retried_and_the_promotion_is_sent_once() -> None:
    clients = StubbedClients()
    rds = clients.stub("rds", WEST)
    source = STUBBED_RDS.instances[EAST]
    rds.add_client_error("describe_db_instances", "Throttling", "Rate exceeded", 400)
    rds.add_response("describe_db_instances", instance("orders-usw2", "available", source))
    rds.add_client_error("promote_read_replica", "ThrottlingException", "Rate exceeded", 400)
    rds.add_response("promote_read_replica", {"DBInstance": {"DBInstanceIdentifier": "orders-usw2"}})
    rds.add_response("describe_db_instances", instance("orders-usw2", "available", None))

    promotion = RdsProvider(STUBBED_RDS, clients=clients, backoff=FAST, poll_seconds=0.01).promote(WEST, 5)

    assert promotion.promoted
    clients.assert_all_used()


def test_rds_promotion_that_may_have_run_is_not_sent_again_and_says_so() -> None:
    clients = StubbedClients()
    rds = clients.stub("rds", WEST)
    rds.add_response(
        "describe_db_instances", instance("orders-usw2", "available", STUBBED_RDS.instances[EAST])
    )
    rds.add_client_error("promote_read_replica", "InternalFailure", "internal error", 500)

    with pytest.raises(ApplicationError) as raised:
        RdsProvider(STUBBED_RDS, clients=clients, backoff=FAST).promote(WEST, 5)

    assert raised.value.type == "PromotionFailed" and not raised.value.non_retryable
    assert "a retry checks the instance's state first" in raised.value.message
    clients.assert_all_used()


def test_an_rds_instance_named_by_identifier_needs_an_aws_region_name() -> None:
    from runbooks.model import Runbook

    with pytest.raises(ValueError, match="give the instance's ARN"):
        Runbook.model_validate(
            {
                "service": "orders", "objectives": {"rto": "5m", "rpo": "30s"}, "primary": "east",
                "regions": {"east": {"address": "192.0.2.1"}, "west": {"address": "192.0.2.2"}},
                "dns": {"provider": "route53", "hosted_zone_id": "Z123", "zone": "example.com.",
                        "record": "orders.example.com.", "ttl": 30},
                "database": {"provider": "rds", "instances": {"east": "orders-1", "west": "arn:aws:rds:us-west-2:1:db:o"}},
                "health": [{"name": "deep", "http": {"url": "https://{region}.example.com/"}}],
                "approvals": {"approvers": ["alice"]},
            }
        )  # fmt: skip
