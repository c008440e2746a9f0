"""Database steps of a failover, whatever the provider: the runbook's ``database.provider`` picks the code.

The workflow calls these four activities with the runbook's database section and region names; each one
dispatches to the provider module (``activities.postgres`` today). Results are the provider's own typed
records, so the history shows LSNs, fencing actions and promotion details as the provider saw them.
"""

from __future__ import annotations

from typing import Literal

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import postgres
from activities.errors import ErrorType
from activities.postgres import (
    FenceResult,
    PostgresTarget,
    PromoteResult,
    ReplicationStatus,
    WaitForReplayResult,
)
from runbooks.model import DatabaseConfig, PostgresDatabase, StrictModel


class ReplicationRequest(StrictModel):
    database: DatabaseConfig
    primary: str
    standby: str


class DatabaseFenceRequest(StrictModel):
    database: DatabaseConfig
    region: str
    mode: Literal["planned", "emergency", "drill"]
    timeout_seconds: float = 30


class ReplayRequest(StrictModel):
    database: DatabaseConfig
    region: str
    position: str
    timeout_seconds: float


class DatabasePromoteRequest(StrictModel):
    database: DatabaseConfig
    region: str
    timeout_seconds: float = 60


class DatabaseUnfenceRequest(StrictModel):
    database: DatabaseConfig
    region: str


class UnfenceResult(StrictModel):
    region: str
    restored: bool
    actions: list[str]


def _postgres(database: DatabaseConfig, region: str) -> PostgresTarget:
    if not isinstance(database, PostgresDatabase):
        raise ApplicationError(
            f"database provider {database.provider!r} is not supported by this worker yet",
            type=ErrorType.UNSUPPORTED_PROVIDER,
            non_retryable=True,
        )
    return PostgresTarget(region=region, node=database.nodes[region])


@activity.defn(name="db_measure_replication")
def measure_replication(request: ReplicationRequest) -> ReplicationStatus:
    return postgres.measure_replication(
        postgres.MeasureReplicationRequest(
            primary=_postgres(request.database, request.primary),
            standby=_postgres(request.database, request.standby),
        )
    )


@activity.defn(name="db_fence")
def fence(request: DatabaseFenceRequest) -> FenceResult:
    return postgres.fence(
        postgres.FenceRequest(
            target=_postgres(request.database, request.region),
            mode=request.mode,
            timeout_seconds=request.timeout_seconds,
        )
    )


@activity.defn(name="db_wait_for_replay")
def wait_for_replay(request: ReplayRequest) -> WaitForReplayResult:
    return postgres.wait_for_replay(
        postgres.WaitForReplayRequest(
            standby=_postgres(request.database, request.region),
            lsn=request.position,
            timeout_seconds=request.timeout_seconds,
        )
    )


@activity.defn(name="db_promote")
def promote(request: DatabasePromoteRequest) -> PromoteResult:
    return postgres.promote(
        postgres.PromoteRequest(
            standby=_postgres(request.database, request.region), timeout_seconds=request.timeout_seconds
        )
    )


@activity.defn(name="db_unfence")
def unfence(request: DatabaseUnfenceRequest) -> UnfenceResult:
    """Compensation: give the old primary its service back when the failover stops before promotion."""
    result = postgres.unfence(postgres.UnfenceRequest(target=_postgres(request.database, request.region)))
    return UnfenceResult(region=request.region, restored=result.restored, actions=result.actions)


DATABASE_ACTIVITIES = [measure_replication, fence, wait_for_replay, promote, unfence]
