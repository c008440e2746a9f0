"""What every database provider reports: one set of result types, whatever the provider.

Fields a provider cannot know (LSNs on RDS and Aurora) are None, so the history shows fencing actions and
promotion details as the provider saw them. These shapes are recorded in workflow histories: a field is never
removed or renamed (models are ``extra="forbid"``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from activities.hooks import HookRun
from runbooks.model import StrictModel, drop_unset


def lsn_to_int(lsn: str) -> int:
    """``"0/3000060"`` -> 50331744: the two hex halves of a pg_lsn as one byte position."""
    high, sep, low = lsn.strip().partition("/")
    if not sep:
        raise ValueError(f"{lsn!r} is not an LSN (expected X/Y in hexadecimal, e.g. 0/3000060)")
    return (int(high, 16) << 32) | int(low, 16)


def lsn_diff(a: str, b: str) -> int:
    """Bytes from ``b`` to ``a`` (positive when ``a`` is ahead), as ``pg_wal_lsn_diff(a, b)``."""
    return lsn_to_int(a) - lsn_to_int(b)


class SettingDrift(StrictModel):
    """One setting (or extension) where the standby differs from the primary in a way a failover feels."""

    setting: str
    primary: str | None
    standby: str | None
    problem: str


class ReplicationStatus(StrictModel):
    primary_region: str
    standby_region: str
    primary_reachable: bool
    primary_in_recovery: bool | None
    primary_lsn: str | None = Field(description="pg_current_wal_lsn() on the primary")
    standby_reachable: bool
    standby_in_recovery: bool | None
    standby_receive_lsn: str | None
    standby_replay_lsn: str | None
    replay_paused: bool | None
    lag_bytes: int | None = Field(description="primary_lsn - standby_replay_lsn; None if either is unknown")
    lag_seconds: float | None = Field(
        description="0 when replay has caught up, else now() - pg_last_xact_replay_timestamp() on the standby"
    )
    errors: list[str]
    drift: list[SettingDrift] | None = Field(
        default=None, description="when asked (readiness): settings that differ; None: not compared"
    )

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Not compared: serialised as before ``drift`` existed (rolling upgrades)."""
        return handler(self) if self.drift is not None else drop_unset(handler(self), "drift")


FenceMode = Literal["planned", "emergency", "drill"]


class FenceResult(StrictModel):
    region: str
    method: Literal["shutdown", "connections-cut", "hook", "none"]
    fenced: bool
    already_fenced: bool
    final_lsn: str | None = Field(description="the last LSN the old primary can ever have written")
    actions: list[str] = Field(description="what was done, in order")
    errors: list[str] = Field(description="what could not be done (emergency: best effort)")
    proof: str | None = Field(
        default=None,
        description="how the fence was proven (a write as the application's role refused), or why not",
    )
    hook: HookRun | None = Field(default=None, description="the runbook's fence hook, when it ran")

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Fences of nodes drflow manages serialise as before the proof existed (rolling upgrades)."""
        return drop_unset(handler(self), "proof", "hook")


class WaitForReplayResult(StrictModel):
    reached: bool
    replay_lsn: str | None
    waited_ms: float


class PromoteResult(StrictModel):
    region: str
    promoted: bool
    already_primary: bool
    replay_lsn_at_promotion: str | None = Field(
        description="pg_last_wal_replay_lsn() right before pg_promote"
    )
    timeline: int | None
    writable: bool = Field(description="a real write (temporary table) committed on the runbook's database")
    duration_ms: float = Field(description="from the start of the activity until writability was verified")
    actions: list[str]


class UnfenceResult(StrictModel):
    region: str
    restored: bool = Field(description="the old primary serves writes again (a real write succeeded)")
    actions: list[str] = Field(description="what was done, in order; only checks when it already served")


class PrepareStandbyResult(StrictModel):
    region: str
    source_region: str
    already_standby: bool = Field(description="it was already streaming from the source: nothing was done")
    rewound: bool = Field(description="pg_rewind ran against the source (see diverged for what it undid)")
    diverged: bool | None = Field(
        description="it had WAL the source never received, which pg_rewind discarded; None if not rewound"
    )
    streaming: bool = Field(
        description="its WAL receiver streams from the source, which lists it as a standby"
    )
    actions: list[str]
    hook: HookRun | None = Field(default=None, description="the runbook's re-sync hook, when it ran")

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        return drop_unset(handler(self), "hook")
