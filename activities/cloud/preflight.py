"""The preflight report: what a provider verified before anything changes, as findings, never failures.

Credentials valid, the zone / cluster / replica exist and are what the runbook says, the permissions present
where the API can tell without changing anything. A failed check is a finding in the report (the workflow
decides), never an activity failure. rfc2136 proves its TSIG key with a signed read; postgres reports no
checks: its readiness is already observed by the replication measurement.
"""

from __future__ import annotations

from pydantic import Field

from runbooks.model import StrictModel


class PreflightCheck(StrictModel):
    name: str = Field(description="what was checked, e.g. 'hosted zone Z123 exists'")
    ok: bool | None = Field(description="None: could not be verified without changing something")
    detail: str


class PreflightReport(StrictModel):
    """What a provider verified before anything changes; ``ok`` is False when any check failed."""

    provider: str
    ok: bool
    checks: list[PreflightCheck]

    @classmethod
    def of(cls, provider: str, checks: list[PreflightCheck]) -> PreflightReport:
        return cls(provider=provider, ok=all(check.ok is not False for check in checks), checks=checks)

    @property
    def problems(self) -> list[str]:
        return [f"{check.name}: {check.detail}" for check in self.checks if check.ok is False]

    def markdown(self) -> str:
        mark = {True: "✓", False: "✗", None: "?"}
        return "\n".join(f"- {mark[check.ok]} {check.name}: {check.detail}" for check in self.checks)
