"""The Readiness verdict and its rendering: pure functions over what the activities observed.

Kept apart from the workflow so every branch of the verdict is tested without a server, and so the CLI and
the Temporal UI render the same report.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from activities.cloud.preflight import PreflightReport, ProviderWarning
from activities.database.results import ReplicationStatus
from activities.dns.reader import DnsReadout
from activities.health import HealthProbeResult
from activities.readiness_alerts import AlertOutcome
from activities.start_input import StartInput
from runbooks.durations import Duration, format_duration
from runbooks.loader import LoadedRunbook
from runbooks.model import Objectives, StrictModel, budget_overrun, drop_unset

Verdict = Literal["ready", "degraded", "not-ready"]


class ReadinessRequest(StartInput):
    service: str
    archive: bool = Field(default=False, description="keep this check's evidence in the audit archive")
    alert: bool = Field(
        default=False,
        description="scheduled checks: tell the runbook's alert channels when the state changes",
    )

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        return drop_unset(handler(self), "alert")


class RegionReadiness(StrictModel):
    region: str
    role: Literal["primary", "standby"]
    address: str
    healthy: bool
    checks: list[HealthProbeResult]


class BudgetAssessment(StrictModel):
    ttl_seconds: int
    ttl_source: Literal["runbook", "observed"]
    propagation_budget: Duration
    health_minimum: Duration
    total: Duration
    rto: Duration
    fits: bool


WarningCode = Literal[
    "lag-near-rpo",
    "lag-bytes-near-rpo",
    "lag-rising",
    "budget-near-rto",
    "approver-cannot-answer",
    "approver-slack-inactive",
    "slack-unverified",
    "quorum-at-risk",
    "version-drift",
    "version-unreported",
    ProviderWarning,  # accelerated-recovery-off, zone-quota-near
]


class EarlyWarning(StrictModel):
    """Something still within its objective but close to it: said before the verdict has to change."""

    code: WarningCode = Field(description="stable, for alerts and metrics")
    message: str


class ReadinessReport(StrictModel):
    service: str
    runbook_source: str
    runbook_sha256: str
    checked_at: datetime
    verdict: Verdict
    reasons: list[str]
    regions: list[RegionReadiness]
    dns: DnsReadout
    expected_address: str
    budget: BudgetAssessment
    replication: list[ReplicationStatus] = []
    warnings: list[EarlyWarning] = []
    people_source: str | None = Field(default=None, description="the people file the approvers came from")
    alert: AlertOutcome | None = Field(default=None, description="scheduled checks: what was announced")
    provider_checks: list[PreflightReport] = Field(
        default_factory=list, description="the providers' preflight: credentials, resources, permissions"
    )

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Unset new fields serialise as before they existed: old CLIs still decode new results."""
        return drop_unset(handler(self), "warnings", "people_source", "alert", "provider_checks")


def assess(
    loaded: LoadedRunbook,
    health: list[HealthProbeResult],
    dns: DnsReadout,
    now: datetime,
    replication: list[ReplicationStatus] | None = None,
    people: tuple[list[str], list[EarlyWarning]] = ([], []),
    people_source: str | None = None,
) -> ReadinessReport:
    """The verdict; ``people`` holds the findings about approvers (workflows/readiness_people.py)."""
    runbook = loaded.runbook
    regions = [
        RegionReadiness(
            region=name,
            role="primary" if name == runbook.primary else "standby",
            address=region.address,
            healthy=all(r.ok for r in health if r.region == name),
            checks=[r for r in health if r.region == name],
        )
        for name, region in runbook.regions.items()
    ]
    expected = runbook.regions[runbook.primary].address
    budget = _budget(loaded, dns)
    blocking: list[str] = []
    warnings: list[str] = []

    standbys = [r for r in regions if r.role == "standby"]
    if not any(r.healthy for r in standbys):
        blocking.append("no standby region passes its health checks: a failover would have nowhere to go")
    for region in regions:
        if not region.healthy:
            failing = ", ".join(f"{c.check} ({c.error})" for c in region.checks if not c.ok)
            if region.role == "primary":
                warnings.append(f"primary {region.region} fails health checks: {failing}")
            elif any(r.healthy for r in standbys):
                warnings.append(f"standby {region.region} fails health checks: {failing}")

    answered = [a for a in dns.answers if a.error is None]
    if not answered:
        blocking.append(f"no authoritative nameserver answered for {dns.record}")
    for answer in dns.answers:
        where = f"{answer.name} ({answer.address}:{answer.port})"
        if answer.error is not None:
            warnings.append(f"nameserver {where} did not answer: {answer.error}")
        elif answer.rcode != "NOERROR" or not answer.values:
            warnings.append(f"nameserver {where} answers {answer.rcode} with no {dns.type} record")
        elif not answer.authoritative:
            warnings.append(f"nameserver {where} is not authoritative for {dns.record}")
    distinct = sorted({tuple(a.values) for a in answered if a.values})
    if len(distinct) > 1:
        listing = "; ".join(f"{a.name}: {', '.join(a.values) or '-'}" for a in answered)
        warnings.append(f"nameservers disagree ({listing})")
    elif distinct and list(distinct[0]) != [expected]:
        owner = [n for n, r in runbook.regions.items() if [r.address] == list(distinct[0])]
        serving = f" ({owner[0]})" if owner else ""
        warnings.append(
            f"{dns.record} answers {', '.join(distinct[0])}{serving}, but the runbook's primary "
            f"{runbook.primary} is {expected}"
        )
    warnings += owner_findings(dns, runbook.dns.managed_by)
    if budget.ttl_source == "observed":
        warnings.append(f"nameservers serve TTL {budget.ttl_seconds}s, the runbook says {runbook.dns.ttl}s")
    if not budget.fits:
        blocking.append(
            budget_overrun(
                timedelta(seconds=budget.ttl_seconds),
                budget.propagation_budget,
                budget.health_minimum,
                budget.rto,
            )
        )

    for status in replication or []:
        _replication_findings(status, runbook.objectives.rpo, blocking, warnings)
    blocking += people[0]
    early = early_warnings(runbook.objectives, budget, replication or []) + people[1]
    early += version_findings(loaded, health)

    verdict: Verdict = "not-ready" if blocking else "degraded" if warnings else "ready"
    return ReadinessReport(
        service=runbook.service,
        runbook_source=loaded.source,
        runbook_sha256=loaded.sha256,
        checked_at=now,
        verdict=verdict,
        reasons=blocking + warnings,
        regions=regions,
        dns=dns,
        expected_address=expected,
        budget=budget,
        replication=replication or [],
        warnings=early,
        people_source=people_source,
    )


def with_provider_checks(report: ReadinessReport, checks: list[PreflightReport]) -> ReadinessReport:
    """A failed provider check (credentials, a missing zone or replica) blocks: the failover's own
    preflight would refuse the same way, at the worst moment. A failed advisory check (accelerated recovery
    off, a zone near its quota) is an early warning: the failover would still go."""
    problems = [f"{c.provider} preflight: {problem}" for c in checks for problem in c.problems]
    reasons = problems + report.reasons
    verdict: Verdict = "not-ready" if problems else report.verdict
    advice = [
        EarlyWarning(code=check.warning, message=f"{c.provider}: {check.name}: {check.detail}")
        for c in checks
        for check in c.advice
        if check.warning is not None
    ]
    return report.model_copy(
        update={
            "provider_checks": checks,
            "reasons": reasons,
            "verdict": verdict,
            "warnings": report.warnings + advice,
        }
    )


def early_warnings(
    objectives: Objectives, budget: BudgetAssessment, replication: list[ReplicationStatus]
) -> list[EarlyWarning]:
    """Within the objective, but past ``objectives.warn_at`` of it: the report says so while the verdict
    can still stay ``ready`` (a lag above the RPO, or a budget above the RTO, is a reason instead)."""
    fraction = objectives.warn_fraction
    found: list[EarlyWarning] = []
    rpo = objectives.rpo.total_seconds()
    for status in replication:
        pair = f"{status.primary_region} → {status.standby_region}"
        lag = status.lag_seconds
        if lag is not None and rpo > 0 and fraction * rpo <= lag <= rpo:
            found.append(EarlyWarning(
                code="lag-near-rpo",
                message=f"replication lag {pair} is {lag:.1f}s, {lag / rpo:.0%} of the RPO of "
                f"{format_duration(objectives.rpo)} (warns from {fraction:.0%})",
            ))  # fmt: skip
        limit = objectives.rpo_bytes
        lag_bytes = status.lag_bytes
        if limit and lag_bytes is not None and fraction * limit <= lag_bytes <= limit:
            found.append(EarlyWarning(
                code="lag-bytes-near-rpo",
                message=f"replication lag {pair} is {lag_bytes} bytes, {lag_bytes / limit:.0%} of rpo_bytes "
                f"{limit} (warns from {fraction:.0%})",
            ))  # fmt: skip
    rto = budget.rto.total_seconds()
    total = budget.total.total_seconds()
    if budget.fits and rto > 0 and total >= fraction * rto:
        found.append(EarlyWarning(
            code="budget-near-rto",
            message=f"the cutover budget {format_duration(budget.total)} (TTL {budget.ttl_seconds}s + "
            f"propagation {format_duration(budget.propagation_budget)} + health minimum "
            f"{format_duration(budget.health_minimum)}) is {total / rto:.0%} of the RTO of "
            f"{format_duration(budget.rto)} (warns from {fraction:.0%}): a slightly higher TTL breaks it",
        ))  # fmt: skip
    return found


def version_findings(loaded: LoadedRunbook, health: list[HealthProbeResult]) -> list[EarlyWarning]:
    """The regions of a check with a ``version_path`` should serve the same build: after a failover users
    get whatever the standby runs. A warning, not a reason: a rolling deploy differs for minutes, and the
    alert says so only if it is still true at the next check that changes."""
    found: list[EarlyWarning] = []
    paths = {c.name: c.http.version_path for c in loaded.runbook.health if c.http.version_path}
    for check, path in paths.items():
        answered = [r for r in health if r.check == check and r.status is not None]
        for result in answered:
            if result.version is None:
                found.append(EarlyWarning(
                    code="version-unreported",
                    message=f"{result.region}'s {check} check reports no version at {path!r}: the build "
                    "it serves cannot be compared with the other regions'",
                ))  # fmt: skip
        versions = {r.region: r.version for r in answered if r.version is not None}
        if len(set(versions.values())) > 1:
            listing = ", ".join(f"{region} {version}" for region, version in versions.items())
            found.append(EarlyWarning(
                code="version-drift",
                message=f"the regions serve different builds ({check} at {path!r}: {listing}): after a "
                "failover users would get another build; deploy the same one to every region",
            ))  # fmt: skip
    return found


def owner_findings(dns: DnsReadout, declared: str | None) -> list[str]:
    """Another system that writes the record may put it back after the failover changed it."""
    found = [
        f"another system manages {dns.record} and may revert the failover: external-dns "
        f"(owner {o.owner or '?'}, resource {o.resource or '?'}; TXT {o.txt_name}); before a failover, stop "
        "it from writing the record (scale it to zero, or change its source) or make the change through it"
        for o in dns.owners or []
    ]
    if declared is not None:
        found.append(
            f"another system manages {dns.record} and may revert the failover: {declared} (the runbook's "
            "dns.managed_by); make sure it will not write the record back, or change it there"
        )
    return found


def _replication_findings(
    status: ReplicationStatus, rpo: timedelta, blocking: list[str], warnings: list[str]
) -> None:
    standby, primary = status.standby_region, status.primary_region
    if not status.standby_reachable:
        blocking.append(f"the {standby} database cannot be reached: {'; '.join(status.errors)}")
        return
    if status.standby_in_recovery is False:
        if status.primary_reachable and status.primary_in_recovery is False:
            blocking.append(f"both {primary} and {standby} databases accept writes (split brain)")
        else:
            warnings.append(f"the {standby} database is not a standby (in recovery: no): already promoted?")
        return
    if not status.primary_reachable:
        warnings.append(f"the {primary} database cannot be reached: {'; '.join(status.errors)}")
    if status.replay_paused:
        warnings.append(f"WAL replay is paused on {standby}: its lag grows while writes continue")
    for drift in status.drift or []:
        values = f"{primary}: {drift.primary or '-'}, {standby}: {drift.standby or '-'}"
        warnings.append(f"drift between {primary} and {standby}: {drift.setting} ({values}): {drift.problem}")
    if status.lag_seconds is not None and status.lag_seconds > rpo.total_seconds():
        warnings.append(
            f"replication lag {primary} → {standby} is {status.lag_seconds:.1f}s "
            f"({status.lag_bytes if status.lag_bytes is not None else '?'} bytes), above the RPO of "
            f"{format_duration(rpo)}"
        )


def _budget(loaded: LoadedRunbook, dns: DnsReadout) -> BudgetAssessment:
    runbook = loaded.runbook
    observed = [a.ttl for a in dns.answers if a.error is None and a.ttl is not None and a.values]
    ttl = max(observed, default=runbook.dns.ttl)
    source: Literal["runbook", "observed"] = "observed" if observed and ttl != runbook.dns.ttl else "runbook"
    total = timedelta(seconds=ttl) + runbook.dns.propagation_budget + runbook.health_minimum
    return BudgetAssessment(
        ttl_seconds=ttl,
        ttl_source=source,
        propagation_budget=runbook.dns.propagation_budget,
        health_minimum=runbook.health_minimum,
        total=total,
        rto=runbook.objectives.rto,
        fits=total <= runbook.objectives.rto,
    )


VERDICT_MARK = {"ready": "READY", "degraded": "DEGRADED", "not-ready": "NOT READY"}


def render_markdown(report: ReadinessReport) -> str:
    """Markdown for the Temporal UI; it also reads well as plain text in a terminal."""
    lines = [
        f"## Readiness of {report.service}: {VERDICT_MARK[report.verdict]}{_warning_count(report)}",
        "",
        f"Checked {report.checked_at.strftime('%Y-%m-%d %H:%M:%S UTC')} against {report.runbook_source} "
        f"(sha256 {report.runbook_sha256[:12]})"
        + (f"; approvers from {report.people_source}" if report.people_source else ""),
        "",
    ]
    if report.reasons:
        lines += ["### Reasons", *[f"- {reason}" for reason in report.reasons], ""]
    if report.warnings:
        lines += ["### Early warnings", *[f"- {w.message} [{w.code}]" for w in report.warnings], ""]
    lines += [
        "### Health",
        "| region | role | check | result | status | latency |",
        "|---|---|---|---|---|---|",
    ]
    for region in report.regions:
        for check in region.checks:
            outcome = "pass" if check.ok else f"FAIL: {check.error}"
            status = str(check.status) if check.status is not None else "-"
            lines.append(
                f"| {region.region} | {region.role} | {check.check} | {outcome} | {status} | "
                f"{check.latency_ms:.0f} ms |"
            )
    lines += [
        "",
        f"### DNS: {report.dns.record} {report.dns.type} (expected {report.expected_address})",
        "| nameserver | answer | TTL | authoritative | latency |",
        "|---|---|---|---|---|",
    ]
    for answer in report.dns.answers:
        where = f"{answer.name} {answer.address}:{answer.port}"
        if answer.error is not None:
            lines.append(f"| {where} | ERROR: {answer.error} | - | - | - |")
        else:
            values = ", ".join(answer.values) or answer.rcode
            aa = "yes" if answer.authoritative else "no"
            lines.append(f"| {where} | {values} | {answer.ttl} | {aa} | {answer.latency_ms:.0f} ms |")
    if report.replication:
        lines += ["", "### Replication", "| primary → standby | lag | replay paused | standby in recovery |",
                  "|---|---|---|---|"]  # fmt: skip
        for rep in report.replication:
            lag = (
                f"{rep.lag_bytes} bytes / {rep.lag_seconds:.1f}s"
                if rep.lag_bytes is not None and rep.lag_seconds is not None
                else "unknown"
            )
            lines.append(
                f"| {rep.primary_region} → {rep.standby_region} | {lag} | "
                f"{_yes_no(rep.replay_paused)} | {_yes_no(rep.standby_in_recovery)} |"
            )
    if report.provider_checks:
        lines += ["", "### Providers"]
        lines += [c.markdown() for c in report.provider_checks if c.checks]
    alert = report.alert
    if alert is not None:
        told = ", ".join(alert.sent) or "no channel"
        said = f"told {told}" if alert.changed else "nothing told"
        changed = "Changed" if alert.changed else "Unchanged"
        lines += ["", "### Alert", f"{changed} since the schedule's previous check: {said}"]
        lines += [f"- not told: {failure}" for failure in alert.failed]
    b = report.budget
    lines += [
        "",
        "### Cutover budget",
        f"TTL {b.ttl_seconds}s ({b.ttl_source}) + propagation {format_duration(b.propagation_budget)} + "
        f"health minimum {format_duration(b.health_minimum)} = {format_duration(b.total)} "
        f"{'fits within' if b.fits else 'EXCEEDS'} RTO {format_duration(b.rto)}",
    ]
    return "\n".join(lines)


def _warning_count(report: ReadinessReport) -> str:
    count = len(report.warnings)
    return "" if not count else f" ({count} early warning{'s' if count > 1 else ''})"


def _yes_no(value: bool | None) -> str:
    return "?" if value is None else "yes" if value else "no"
