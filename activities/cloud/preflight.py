"""The preflight report: what a provider verified before anything changes, as findings, never failures.

Credentials valid, the zone / cluster / replica exist and are what the runbook says, the permissions present
where the API can tell without changing anything. A failed check is a finding in the report (the workflow
decides), never an activity failure. rfc2136 proves its TSIG key with a signed read; postgres reports no
checks: its readiness is already observed by the replication measurement.

A check with a ``warning`` code is advice, not a blocker: a zone without Route53 accelerated recovery, or
near its record-set quota, can still be failed over today, so its failure never makes ``ok`` False; the
readiness check reports it as an early warning under that code.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from runbooks.model import StrictModel, drop_unset

ProviderWarning = Literal["accelerated-recovery-off", "zone-quota-near", "instance-quota-near"]
"""The early-warning codes a provider's advisory checks report under (readiness's ``WarningCode``)."""


class PreflightCheck(StrictModel):
    name: str = Field(description="what was checked, e.g. 'hosted zone Z123 exists'")
    ok: bool | None = Field(description="None: could not be verified without changing something")
    detail: str
    warning: ProviderWarning | None = Field(
        default=None,
        description="set on advisory checks: a failure is this early warning, never a reason to refuse",
    )

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        """A blocking check serialises as before advisory ones existed (previous workers decode it)."""
        return drop_unset(handler(self), "warning")


class PreflightReport(StrictModel):
    """What a provider verified before anything changes; ``ok`` is False when any check failed."""

    provider: str
    ok: bool
    checks: list[PreflightCheck]

    @classmethod
    def of(cls, provider: str, checks: list[PreflightCheck]) -> PreflightReport:
        blocking = [check for check in checks if check.warning is None]
        return cls(provider=provider, ok=all(check.ok is not False for check in blocking), checks=checks)

    @property
    def problems(self) -> list[str]:
        return [
            f"{check.name}: {check.detail}"
            for check in self.checks
            if check.ok is False and check.warning is None
        ]

    @property
    def advice(self) -> list[PreflightCheck]:
        """The advisory checks that failed: early warnings, not reasons."""
        return [check for check in self.checks if check.ok is False and check.warning is not None]

    def markdown(self) -> str:
        def mark(check: PreflightCheck) -> str:
            if check.ok is False and check.warning is not None:
                return "!"
            return {True: "✓", False: "✗", None: "?"}[check.ok]

        return "\n".join(f"- {mark(check)} {check.name}: {check.detail}" for check in self.checks)
