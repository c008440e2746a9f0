"""Self-managed PostgreSQL behind the ``DatabaseProvider`` contract: runbook regions become nodes."""

from __future__ import annotations

import time

from activities.cloud.preflight import PreflightReport
from activities.database.postgres.connection import PostgresTarget, verify_writable
from activities.database.postgres.drift import settings_drift
from activities.database.postgres.fence import FenceRequest, UnfenceRequest, fence, unfence
from activities.database.postgres.measure import MeasureReplicationRequest, measure_replication
from activities.database.postgres.promote import (
    PromoteRequest,
    WaitForReplayRequest,
    promote,
    wait_for_replay,
)
from activities.database.postgres.rewind import PrepareStandbyRequest, prepare_standby
from activities.database.results import (
    FenceMode,
    FenceResult,
    PrepareStandbyResult,
    PromoteResult,
    ReplicationStatus,
    SettingDrift,
    UnfenceResult,
    WaitForReplayResult,
)
from runbooks.model import PostgresDatabase


class PostgresProvider:
    def __init__(self, config: PostgresDatabase) -> None:
        self.config = config

    def target(self, region: str) -> PostgresTarget:
        return PostgresTarget(region=region, node=self.config.nodes[region])

    def measure_replication(self, primary: str, standby: str) -> ReplicationStatus:
        return measure_replication(
            MeasureReplicationRequest(primary=self.target(primary), standby=self.target(standby))
        )

    def fence(self, region: str, mode: FenceMode, timeout_seconds: float = 30) -> FenceResult:
        remote = self.config.nodes[region].data_directory is None
        return fence(
            FenceRequest(
                target=self.target(region),
                mode=mode,
                timeout_seconds=timeout_seconds,
                proof_role=self.config.application if remote else None,
                hook=self.config.hooks.fence if remote else None,
            )
        )

    def wait_for_replay(self, region: str, position: str, timeout_seconds: float) -> WaitForReplayResult:
        return wait_for_replay(
            WaitForReplayRequest(standby=self.target(region), lsn=position, timeout_seconds=timeout_seconds)
        )

    def promote(self, region: str, timeout_seconds: float, mode: FenceMode | None = None) -> PromoteResult:
        return promote(PromoteRequest(standby=self.target(region), timeout_seconds=timeout_seconds))

    def unfence(self, region: str) -> UnfenceResult:
        application = self.config.application
        return unfence(
            UnfenceRequest(
                target=self.target(region),
                hook=self.config.hooks.unfence,
                app_user=application.user if application is not None else None,
            )
        )

    def prepare_standby(self, region: str, source: str, timeout_seconds: float) -> PrepareStandbyResult:
        return prepare_standby(
            PrepareStandbyRequest(
                target=self.target(region),
                source=self.target(source),
                timeout_seconds=timeout_seconds,
                hook=self.config.hooks.resync,
            )
        )

    def settings_drift(self, primary: str, standby: str) -> tuple[list[SettingDrift], list[str]]:
        return settings_drift(self.target(primary), self.target(standby))

    def verify_writable(self, region: str, timeout_seconds: float) -> tuple[bool, str]:
        """A temporary table committed on the region's node, as the promotion proves writability."""
        return verify_writable(self.config.nodes[region], time.monotonic() + timeout_seconds)

    def preflight(self, primary: str, standby: str) -> PreflightReport:
        """No cloud API to ask: readiness is what ``measure_replication`` and the plan observe."""
        return PreflightReport.of(self.config.provider, [])
