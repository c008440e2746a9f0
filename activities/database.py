"""Database steps of a failover, whatever the provider: the runbook's ``database.provider`` picks the code.

The workflow calls these activities with the runbook's database section and region names; each one
dispatches to the provider module (``activities.postgres``, ``activities.rds``, ``activities.aurora``).
Results are the same typed records for every provider (fields a provider cannot know, such as LSNs on RDS and
Aurora, are None), so the history shows fencing actions and promotion details as the provider saw them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import postgres
from activities.aurora import AuroraProvider
from activities.errors import ErrorType
from activities.postgres import (
    FenceResult,
    PostgresTarget,
    PrepareStandbyResult,
    PromoteResult,
    ReplicationStatus,
    WaitForReplayResult,
)
from activities.rds import RdsProvider
from runbooks.model import AuroraGlobalDatabase, DatabaseConfig, PostgresDatabase, RdsDatabase, StrictModel


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
    mode: Literal["planned", "emergency", "drill"] | None = Field(
        default=None,
        description="Aurora: emergency fails over with AllowDataLoss, anything else switches over (no loss)",
    )


class DatabaseUnfenceRequest(StrictModel):
    database: DatabaseConfig
    region: str


class UnfenceResult(StrictModel):
    region: str
    restored: bool
    actions: list[str]


class PrepareStandbyDatabaseRequest(StrictModel):
    database: DatabaseConfig
    region: str = Field(description="the node to re-sync as a standby: the former primary")
    source: str = Field(description="the current primary it will stream from")
    timeout_seconds: float = 300


def _cloud(database: DatabaseConfig) -> RdsProvider | AuroraProvider | None:
    if isinstance(database, RdsDatabase):
        return RdsProvider(database)
    if isinstance(database, AuroraGlobalDatabase):
        return AuroraProvider(database)
    return None


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
    if (cloud := _cloud(request.database)) is not None:
        return cloud.measure_replication(request.primary, request.standby)
    return postgres.measure_replication(
        postgres.MeasureReplicationRequest(
            primary=_postgres(request.database, request.primary),
            standby=_postgres(request.database, request.standby),
        )
    )


@activity.defn(name="db_fence")
def fence(request: DatabaseFenceRequest) -> FenceResult:
    if (cloud := _cloud(request.database)) is not None:
        return cloud.fence(request.region, request.mode)
    return postgres.fence(
        postgres.FenceRequest(
            target=_postgres(request.database, request.region),
            mode=request.mode,
            timeout_seconds=request.timeout_seconds,
        )
    )


@activity.defn(name="db_wait_for_replay")
def wait_for_replay(request: ReplayRequest) -> WaitForReplayResult:
    if _cloud(request.database) is not None:
        raise ApplicationError(
            f"{request.database.provider} has no replay position to wait for (its fence reports no final "
            "LSN)",
            type=ErrorType.NOT_APPLICABLE,
            non_retryable=True,
        )
    return postgres.wait_for_replay(
        postgres.WaitForReplayRequest(
            standby=_postgres(request.database, request.region),
            lsn=request.position,
            timeout_seconds=request.timeout_seconds,
        )
    )


@activity.defn(name="db_promote")
def promote(request: DatabasePromoteRequest) -> PromoteResult:
    if isinstance(request.database, RdsDatabase):
        return RdsProvider(request.database).promote(request.region, request.timeout_seconds)
    if isinstance(request.database, AuroraGlobalDatabase):
        return AuroraProvider(request.database).promote(request.region, request.timeout_seconds, request.mode)
    return postgres.promote(
        postgres.PromoteRequest(
            standby=_postgres(request.database, request.region), timeout_seconds=request.timeout_seconds
        )
    )


@activity.defn(name="db_unfence")
def unfence(request: DatabaseUnfenceRequest) -> UnfenceResult:
    """Compensation: give the old primary its service back when the failover stops before promotion."""
    if (cloud := _cloud(request.database)) is not None:
        done = cloud.unfence(request.region)
        return UnfenceResult(region=request.region, restored=done.restored, actions=done.actions)
    result = postgres.unfence(postgres.UnfenceRequest(target=_postgres(request.database, request.region)))
    return UnfenceResult(region=request.region, restored=result.restored, actions=result.actions)


@activity.defn(name="db_prepare_standby")
def prepare_standby(request: PrepareStandbyDatabaseRequest) -> PrepareStandbyResult:
    """Failback: re-sync the former primary as a streaming standby of the current one (PostgreSQL: rewind)."""
    return postgres.prepare_standby(
        postgres.PrepareStandbyRequest(
            target=_postgres(request.database, request.region),
            source=_postgres(request.database, request.source),
            timeout_seconds=request.timeout_seconds,
        )
    )


DATABASE_ACTIVITIES = [measure_replication, fence, wait_for_replay, promote, unfence, prepare_standby]
