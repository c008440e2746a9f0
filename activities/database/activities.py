"""The ``db_*`` activities: each database step of a failover or failback, whatever the provider.

The workflow calls these with the runbook's database section and region names; ``registry`` picks the
provider and the provider does the work (``provider.DatabaseProvider``). Results are the same typed records
for every provider (``results.py``). The activities block, so they are plain functions that the worker runs
in its thread pool.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer
from temporalio import activity

from activities.cloud.preflight import PreflightReport
from activities.database.provider import DatabaseProvider, SettingsComparer, WriteVerifier
from activities.database.registry import database_provider_for
from activities.database.results import (
    FenceResult,
    PrepareStandbyResult,
    PromoteResult,
    ReplicationStatus,
    UnfenceResult,
    WaitForReplayResult,
)
from activities.heartbeat import beating
from runbooks.model import DatabaseConfig, StrictModel, drop_unset


class ReplicationRequest(StrictModel):
    database: DatabaseConfig
    primary: str
    standby: str
    compare_settings: bool = Field(default=False, description="readiness: also report settings drift")

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        return drop_unset(handler(self), "compare_settings")


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


class PrepareStandbyDatabaseRequest(StrictModel):
    database: DatabaseConfig
    region: str = Field(description="the node to re-sync as a standby: the former primary")
    source: str = Field(description="the current primary it will stream from")
    timeout_seconds: float = 300


class DatabasePreflightRequest(StrictModel):
    database: DatabaseConfig
    primary: str
    standby: str


class WritableRequest(StrictModel):
    database: DatabaseConfig
    regions: list[str] = Field(
        min_length=1,
        description="the regions whose database the app DNS points at may write to, in order: its own region "
        "first, then every other region when its app follows the primary",
    )
    timeout_seconds: float = 5


class WritableResult(StrictModel):
    writable: bool
    region: str | None = Field(description="the region whose database took the write; None if none did")
    checks: list[str] = Field(description="what each region's database answered, in order")


@activity.defn(name="db_measure_replication")
def measure_replication(request: ReplicationRequest) -> ReplicationStatus:
    provider = database_provider_for(request.database)
    with beating():
        status = provider.measure_replication(request.primary, request.standby)
        if not request.compare_settings or not isinstance(provider, SettingsComparer):
            return status
        drift, errors = provider.settings_drift(request.primary, request.standby)
    return status.model_copy(update={"drift": drift, "errors": [*status.errors, *errors]})


@activity.defn(name="db_fence")
def fence(request: DatabaseFenceRequest) -> FenceResult:
    with beating():
        return database_provider_for(request.database).fence(
            request.region, request.mode, request.timeout_seconds
        )


@activity.defn(name="db_wait_for_replay")
def wait_for_replay(request: ReplayRequest) -> WaitForReplayResult:
    return database_provider_for(request.database).wait_for_replay(
        request.region, request.position, request.timeout_seconds
    )


@activity.defn(name="db_promote")
def promote(request: DatabasePromoteRequest) -> PromoteResult:
    with beating():
        return database_provider_for(request.database).promote(
            request.region, request.timeout_seconds, request.mode
        )


@activity.defn(name="db_unfence")
def unfence(request: DatabaseUnfenceRequest) -> UnfenceResult:
    """Compensation: give the old primary its service back when the failover stops before promotion."""
    with beating():
        return database_provider_for(request.database).unfence(request.region)


@activity.defn(name="db_prepare_standby")
def prepare_standby(request: PrepareStandbyDatabaseRequest) -> PrepareStandbyResult:
    """Failback: re-sync the former primary as a streaming standby of the current one (PostgreSQL: rewind)."""
    with beating():
        return database_provider_for(request.database).prepare_standby(
            request.region, request.source, request.timeout_seconds
        )


@activity.defn(name="db_preflight")
def db_preflight(request: DatabasePreflightRequest) -> PreflightReport:
    with beating():
        return database_provider_for(request.database).preflight(request.primary, request.standby)


@activity.defn(name="db_verify_writable")
def verify_writable(request: WritableRequest) -> WritableResult:
    """Before a run ends as completed: does a database the app DNS points at take writes?

    PostgreSQL: a real write (a temporary table committed on the runbook's database, as the promotion
    proves it). Other providers: the writer status their API reports (``measure_replication``).
    """
    provider = database_provider_for(request.database)
    with beating():
        return _verify_writable(provider, request)


def _verify_writable(provider: DatabaseProvider, request: WritableRequest) -> WritableResult:
    checks: list[str] = []
    for region in request.regions:
        if isinstance(provider, WriteVerifier):
            writable, detail = provider.verify_writable(region, request.timeout_seconds)
        else:
            other = next((r for r in request.regions if r != region), region)
            status = provider.measure_replication(region, other)
            writable = status.primary_reachable and status.primary_in_recovery is False
            detail = "the writer" if writable else "; ".join(status.errors) or "not the writer"
        checks.append(f"{region}: {detail}")
        if writable:
            return WritableResult(writable=True, region=region, checks=checks)
    return WritableResult(writable=False, region=None, checks=checks)


DATABASE_ACTIVITIES = [
    measure_replication,
    fence,
    wait_for_replay,
    promote,
    unfence,
    prepare_standby,
    db_preflight,
    verify_writable,
]
