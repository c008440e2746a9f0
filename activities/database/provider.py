"""The contract every database backend implements: the steps of a failover and a failback, state-checked.

Every method checks state before acting, so a retry after a lost result does no harm, and returns what it saw
and did (``results.py``), so the history alone is an audit record. Methods block (psycopg, boto3, pg_ctl):
the activities that call them are plain functions run in the worker's thread pool. A step a provider does not
have raises a non-retryable ``ApplicationError`` (``NotApplicableToProvider`` or ``UnsupportedProvider``)
saying so.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from temporalio.exceptions import ApplicationError

from activities.cloud.preflight import PreflightReport
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
from activities.errors import ErrorType


class DatabaseProvider(Protocol):
    """One database service across the runbook's regions; regions are the runbook's names for its nodes."""

    def measure_replication(self, primary: str, standby: str) -> ReplicationStatus:
        """Positions and lag as the provider reports them; an unreachable node is a finding, never raised."""
        ...

    def fence(self, region: str, mode: FenceMode, timeout_seconds: float = 30) -> FenceResult:
        """Make the old primary unable to accept writes, or say exactly why it is not (``fenced=False``)."""
        ...

    def wait_for_replay(self, region: str, position: str, timeout_seconds: float) -> WaitForReplayResult:
        """Wait until the standby replayed ``position`` (the fence's final LSN); a timeout is an answer."""
        ...

    def promote(self, region: str, timeout_seconds: float, mode: FenceMode | None = None) -> PromoteResult:
        """Promote the standby unless it already is the primary, then prove it takes writes."""
        ...

    def unfence(self, region: str) -> UnfenceResult:
        """Compensation before promotion: the old primary serves again."""
        ...

    def prepare_standby(self, region: str, source: str, timeout_seconds: float) -> PrepareStandbyResult:
        """Failback: re-sync the former primary ``region`` as a streaming standby of ``source``."""
        ...

    def preflight(self, primary: str, standby: str) -> PreflightReport:
        """Credentials, resources and permissions, checked without changing anything; findings only."""
        ...


@runtime_checkable
class WriteVerifier(Protocol):
    """A provider that can prove a region's database takes writes with a real write (PostgreSQL).

    Providers without it are judged by the writer status their API reports (``measure_replication``).
    """

    def verify_writable(self, region: str, timeout_seconds: float) -> tuple[bool, str]:
        """(True, what committed) or (False, why not), never raised."""
        ...


@runtime_checkable
class SettingsComparer(Protocol):
    """A provider that reads each node's settings itself (PostgreSQL); managed databases keep theirs in
    parameter groups, which their own tooling compares."""

    def settings_drift(self, primary: str, standby: str) -> tuple[list[SettingDrift], list[str]]:
        """(what differs, what could not be read), never raised."""
        ...


def no_replay_position(provider: str) -> ApplicationError:
    """For a managed database whose fence reports no final LSN: there is nothing to wait for."""
    return ApplicationError(
        f"{provider} has no replay position to wait for (its fence reports no final LSN)",
        type=ErrorType.NOT_APPLICABLE,
        non_retryable=True,
    )
