"""Aurora Global failback re-sync: drflow confirms the old writer became a secondary, waiting until it has.

ministack moves the writer (switchover and failover settle at once) and detaches a member; the one sequence
it cannot show, a global cluster still ``failing-over`` and an old writer that rejoins later, is a botocore
Stubber with answers shaped as in the RDS API reference.
"""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError

from activities.database.aurora import AuroraProvider
from tests.support.aws import (
    StubbedClients,
    client,
    ministack_server,  # noqa: F401  (session fixture ministack_endpoint)
)
from tests.test_rds_aurora import (
    EAST,
    EAST_ARN,
    FAST,
    GLOBAL,
    STUBBED_AURORA,
    WEST,
    WEST_ARN,
    GlobalDatabase,
    aurora,  # noqa: F401  (fixture)
    aurora_provider,
    global_cluster,
)


def test_after_a_switchover_the_old_writer_is_already_a_secondary_and_nothing_changes(
    aurora: GlobalDatabase,  # noqa: F811
) -> None:
    provider = aurora_provider(aurora)
    provider.promote(WEST, timeout_seconds=20, mode="planned")

    prepared = provider.prepare_standby(EAST, WEST, timeout_seconds=10)

    assert prepared.already_standby and prepared.streaming and not prepared.rewound
    assert prepared.diverged is None and (prepared.region, prepared.source_region) == (EAST, WEST)
    assert "IsWriter false" in prepared.actions[-1] and "drflow changed nothing" in prepared.actions[-1]
    assert aurora.writer() == WEST
    assert provider.prepare_standby(EAST, WEST, timeout_seconds=10) == prepared, "idempotent"
    assert aurora.config.resync_problem(EAST) is None, "preflight no longer warns"


def test_after_an_emergency_failover_an_old_writer_aurora_rejoined_is_a_secondary(
    aurora: GlobalDatabase,  # noqa: F811
) -> None:
    provider = aurora_provider(aurora)
    provider.promote(WEST, timeout_seconds=20, mode="emergency")

    prepared = provider.prepare_standby(EAST, WEST, timeout_seconds=10)

    assert prepared.streaming and aurora.writer() == WEST


def test_a_detached_old_writer_is_a_non_retryable_failure_that_says_what_to_do(
    aurora: GlobalDatabase,  # noqa: F811
) -> None:
    provider = aurora_provider(aurora)
    provider.promote(WEST, timeout_seconds=20, mode="emergency")
    client("rds", aurora.endpoint, EAST).remove_from_global_cluster(
        GlobalClusterIdentifier=aurora.config.global_cluster, DbClusterIdentifier=aurora.config.clusters[EAST]
    )

    with pytest.raises(ApplicationError) as raised:
        provider.prepare_standby(EAST, WEST, timeout_seconds=10)

    assert raised.value.type == "StandbyResyncFailed" and raised.value.non_retryable
    message = raised.value.message
    assert "no longer a member" in message and "its cluster still exists" in message
    assert f"GlobalClusterIdentifier={aurora.config.global_cluster}" in message
    assert "set clusters.us-east-1 in the runbook" in message


def test_an_old_writer_that_is_still_the_writer_is_a_state_conflict(
    aurora: GlobalDatabase,  # noqa: F811
) -> None:
    with pytest.raises(ApplicationError) as raised:
        aurora_provider(aurora).prepare_standby(EAST, WEST, timeout_seconds=1)
    assert raised.value.type == "DatabaseStateConflict" and "did not happen" in raised.value.message


def _failing_over() -> dict[str, object]:
    answer = global_cluster(WEST_ARN, "failing-over")
    [described] = answer["GlobalClusters"]  # type: ignore[misc]
    described["FailoverState"] = {
        "Status": "failing-over", "FromDbClusterArn": EAST_ARN, "ToDbClusterArn": WEST_ARN,
        "IsDataLossAllowed": True,
    }  # fmt: skip
    return answer


def _rejoining() -> dict[str, object]:
    answer = global_cluster(WEST_ARN)
    [described] = answer["GlobalClusters"]  # type: ignore[misc]
    for member in described["GlobalClusterMembers"]:
        if member["DBClusterArn"] == EAST_ARN:
            member["SynchronizationStatus"] = "pending-resync"
    return answer


def _cluster(status: str) -> dict[str, object]:
    return {"DBClusters": [{"DBClusterArn": EAST_ARN, "Status": status}]}


def test_the_re_sync_waits_through_a_failover_and_a_rejoin_until_the_old_writer_is_connected() -> None:
    clients = StubbedClients()
    west, east = clients.stub("rds", WEST), clients.stub("rds", EAST)
    west.add_response("describe_global_clusters", _failing_over())
    east.add_response("describe_db_clusters", _cluster("available"))
    west.add_response("describe_global_clusters", _rejoining())
    east.add_response("describe_db_clusters", _cluster("resetting-master-credentials"))
    west.add_response("describe_global_clusters", global_cluster(WEST_ARN))
    east.add_response("describe_db_clusters", _cluster("available"))

    prepared = AuroraProvider(
        STUBBED_AURORA, clients=clients, backoff=FAST, poll_seconds=0.01
    ).prepare_standby(EAST, WEST, timeout_seconds=5)

    assert not prepared.already_standby and prepared.streaming
    assert "failing-over move of the writer" in prepared.actions[0]
    clients.assert_all_used()


def test_an_old_writer_that_never_settles_fails_the_re_sync_after_the_timeout_retryably() -> None:
    clients = StubbedClients()
    west, east = clients.stub("rds", WEST), clients.stub("rds", EAST)
    for _ in range(200):
        west.add_response("describe_global_clusters", _rejoining())
        east.add_response("describe_db_clusters", _cluster("available"))

    with pytest.raises(ApplicationError) as raised:
        AuroraProvider(STUBBED_AURORA, clients=clients, backoff=FAST, poll_seconds=0.01).prepare_standby(
            EAST, WEST, timeout_seconds=0.2
        )

    assert raised.value.type == "StandbyResyncFailed" and not raised.value.non_retryable
    assert "synchronization is pending-resync" in raised.value.message and GLOBAL in raised.value.message
