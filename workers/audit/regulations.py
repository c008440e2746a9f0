"""The regulation mapping: which parts of an audit record serve which DR requirement, for this run."""

from __future__ import annotations

from pydantic import Field

from runbooks.model import StrictModel
from workers.audit.evidence import describe_dns
from workers.audit.formatting import format_met, format_seconds, format_time
from workers.audit.model import Timeline


class RegulatoryEvidence(StrictModel):
    requirement: str
    asks_for: str
    answered_by: str = Field(description="sections of the Markdown/HTML report and fields of the JSON")
    this_run: str


def regulatory_evidence(t: Timeline) -> list[RegulatoryEvidence]:
    """Which parts of this record serve which DR requirement: short, factual, filed as is."""
    o = t.outcome
    people = [u for u in t.updates if u.name in ("approve", "reject", "accept_data_loss", "decide")]
    who = ", ".join(sorted({u.by for u in people if u.by})) or "nobody"
    switch = (
        f"{t.request.service}: {describe_dns(t.evidence.dns_changes[0].before)} → "
        f"{describe_dns(t.evidence.dns_changes[0].after)}"
        if t.evidence.dns_changes
        else "no switchover performed"
    )
    rto = (
        f"RTO {format_seconds(o.achieved_rto_seconds)} vs {t.objectives.rto or '?'} "
        f"({format_met(o.rto_met).strip('*')})"
    )
    rpo = (
        f"data loss {'none (proven)' if o.zero_loss_proven else _loss(t)} vs RPO {t.objectives.rpo or '?'} "
        f"({format_met(o.rpo_met).strip('*')})"
    )
    result = o.outcome or o.verdict or t.status
    when = format_time(t.started_at, day=True)
    return [
        RegulatoryEvidence(
            requirement="DORA (EU) 2022/2554 Art. 11(6)(a), 11(8)",
            asks_for="ICT response and recovery plans tested at least yearly; readily accessible records of "
            "activities before and during disruption events when the plans are activated",
            answered_by="summary (who, when, why, mode); Timeline (`timeline.entries`); Approvals "
            "(`timeline.updates`); What changed (`timeline.evidence`)",
            this_run=f"{t.workflow_type} {t.request.mode or ''} run started {when}, requested by "
            f"{t.request.requested_by or 'unknown'}; {len(t.entries)} timeline entries; decisions by {who}",
        ),
        RegulatoryEvidence(
            requirement="RTS (EU) 2024/1774 Art. 25",
            asks_for="business continuity tests including switchover from primary ICT infrastructure to "
            "redundant capacity (Art. 25(2)(c)); results documented, deficiencies identified",
            answered_by="Outcome (`timeline.outcome`); Steps (`timeline.outcome.steps`); "
            "Failures and retries; Notes",
            this_run=f"{switch}; outcome {result}; {_failure_count(t)}",
        ),
        RegulatoryEvidence(
            requirement="SOC 2 (TSC 2017) A1.3",
            asks_for="recovery plan procedures supporting system recovery are tested",
            answered_by="Steps; Outcome (RTO/RPO against objectives); Measurements "
            "(`timeline.evidence.health`, `timeline.evidence.replication`)",
            this_run=f"{rto}; {rpo}",
        ),
        RegulatoryEvidence(
            requirement="ISO 22301:2019 clause 8.5",
            asks_for="an exercise programme validating business continuity solutions, with post-exercise "
            "reports of outcomes; documented information retained",
            answered_by="Outcome; Steps; Notes; retention: the archive (`manifest.json` with SHA-256 per "
            "file, S3 Object Lock)",
            this_run=f"outcome {result}; {len(t.outcome.steps)} steps reported",
        ),
        RegulatoryEvidence(
            requirement="PCI DSS v4.0 12.10.2",
            asks_for="the incident response plan, including business recovery and continuity procedures "
            "(12.10.1), reviewed and tested at least once every 12 months",
            answered_by="summary (date, mode); Steps; Outcome; Approvals",
            this_run=f"tested {when} ({t.request.mode or t.workflow_type}); outcome {result}",
        ),
    ]


def _loss(t: Timeline) -> str:
    o = t.outcome
    if o.data_loss_bytes is None and o.data_loss_seconds is None:
        return "unknown"
    return f"{o.data_loss_bytes if o.data_loss_bytes is not None else '?'} bytes"


def _failure_count(t: Timeline) -> str:
    failed = [a for a in t.activities if a.failure is not None]
    retried = [a for a in t.activities if a.failure is None and a.attempts > 1]
    if not failed and not retried:
        return "no failed or retried step"
    return f"{len(failed)} failed and {len(retried)} retried activities (see Failures and retries)"
