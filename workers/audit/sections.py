"""The sections of the audit report, as format-neutral blocks: what the Markdown and HTML both show."""

from __future__ import annotations

from workers.audit.blocks import Block, Bullets, Heading, Para, Table
from workers.audit.evidence import describe_dns
from workers.audit.formatting import (
    format_met,
    format_seconds,
    format_span,
    format_time,
    format_yes,
    identity_words,
)
from workers.audit.model import ActivityRecord, Timeline
from workers.audit.regulations import regulatory_evidence


def document(t: Timeline) -> list[Block]:
    blocks: list[Block] = [Heading(1, f"Audit record: {t.workflow_type} `{t.workflow_id}`")]
    blocks += _summary(t)
    blocks += _outcome(t)
    blocks += _people(t)
    blocks += _changes(t)
    blocks += _measurements(t)
    blocks += _steps(t)
    blocks += _chronology(t)
    blocks += _failures(t)
    blocks += _workers(t)
    blocks += _notes(t)
    blocks += _regulations(t)
    blocks.append(
        Para(
            f"Rendered from the {t.history_events} events of the run's Temporal history alone, secrets "
            "redacted. `drflow audit replay` checks that today's workflow code makes the same decisions; "
            "`drflow audit verify` checks an archived copy against its SHA-256 manifest."
        )
    )
    return blocks


def _summary(t: Timeline) -> list[Block]:
    r = t.request
    rows = [
        ["workflow", f"{t.workflow_type} `{t.workflow_id}`"],
        ["run", f"`{t.run_id}`"],
        [
            "status",
            t.status
            + (f", outcome **{t.outcome.outcome}**" if t.outcome.outcome else "")
            + (f", verdict **{t.outcome.verdict}**" if t.outcome.verdict else ""),
        ],
        ["started", format_time(t.started_at, day=True)],
        [
            "closed",
            format_time(t.closed_at, day=True)
            + (f" (after {format_span(t.duration)})" if t.duration else ""),
        ],
    ]
    if r.service:
        rows.append(["service", r.service + (f" → {r.target}" if r.target else "")])
    if r.mode:
        rows.append(["mode", r.mode])
    if r.requested_by or (isinstance(r.raw, dict) and "requested_by" in r.raw):
        rows.append(["requested by", r.requested_by or "not given"])
    if r.reason:
        rows.append(["reason", r.reason])
    rows.append(["started by client", t.started_by or "unknown"])
    if t.static_summary:
        rows.append(["summary", t.static_summary])
    if t.parent_workflow_id:
        rows.append(["parent workflow", f"`{t.parent_workflow_id}`"])
    rows.append(["task queue", t.task_queue or "-"])
    if t.objectives.rto or t.objectives.rpo:
        rows.append(["objectives", f"RTO {t.objectives.rto or '-'}, RPO {t.objectives.rpo or '-'} (runbook)"])
    sha = t.outcome.runbook_sha256
    if t.objectives.source or sha:
        rows.append(["runbook", f"{t.objectives.source or '-'}" + (f", sha256 `{sha}`" if sha else "")])
    return [Table(["", ""], rows)]


def _outcome(t: Timeline) -> list[Block]:
    o = t.outcome
    items = Bullets()
    if o.outcome:
        items.add(f"Outcome: **{o.outcome}**")
    if o.verdict:
        items.add(f"Verdict: **{o.verdict}**", *o.reasons)
    if o.achieved_rto_seconds is not None:
        objective = f" against the objective {t.objectives.rto}" if t.objectives.rto else ""
        items.add(
            f"Achieved RTO: {format_seconds(o.achieved_rto_seconds)}{objective}: {format_met(o.rto_met)}"
        )
    elif o.outcome is not None:
        items.add("Achieved RTO: none (the failover did not complete)")
    if o.zero_loss_proven is not None or o.data_loss_bytes is not None:
        if o.zero_loss_proven:
            amount = "none, proven by LSNs"
        else:
            lost = "unknown" if o.data_loss_bytes is None else f"{o.data_loss_bytes} bytes"
            age = "" if o.data_loss_seconds is None else f", {o.data_loss_seconds:.1f} s of writes"
            amount = f"{lost}{age}"
        objective = f" against the objective {t.objectives.rpo}" if t.objectives.rpo else ""
        items.add(
            f"Data loss (RPO): {amount}{objective}: {format_met(o.rpo_met)}",
            *([o.data_loss_basis] if o.data_loss_basis else []),
        )
    if o.approval_wait_seconds is not None:
        items.add(f"Time waiting for approvals: {format_seconds(o.approval_wait_seconds)}")
    if t.failure is not None:
        items.add(f"Failure: {t.failure.message}", *t.failure.causes)
    if not items.items:
        items.add(f"The run is {t.status}; its result carries no drflow report.")
    return [Heading(2, "Outcome"), items]


def _people(t: Timeline) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Approvals and operator decisions")]
    decisions = [u for u in t.updates if u.name in ("approve", "reject", "accept_data_loss", "decide")]
    others = [g for g in t.outcome.gate_records if g.decision in ("expired", "skipped-in-emergency")]
    if not decisions and not others:
        blocks.append(Para("None: no person approved, rejected or decided anything in this run."))
    else:
        # a run with a people file says how each answer was proven (key fingerprint or not verified)
        proven = any(u.identity for u in decisions)
        header = ["when (UTC)", "event", "Update", "gate / step", "by", "channel", "reason", "result"]
        table = Table([*header[:6], "identity", *header[6:]] if proven else header)
        subjects = _subjects(t)
        for u in decisions:
            gate = u.gate or subjects.get(u.update_id) or "-"
            row = [
                format_time(u.accepted_at),
                str(u.accepted_event_id),
                u.name + (f" {u.decision}" if u.decision else ""),
                gate,
                u.person or u.by or "-",
                u.channel or "-",
                u.reason or "-",
                f"{u.status}" + (f": {u.message}" if u.message else ""),
            ]
            if proven:
                row.insert(6, identity_words(u.identity, u.key, u.gateway))
            table.rows.append(row)
        for g in others:
            row = [format_time(g.at), "-", "(none)", g.subject, "-", "-", g.reason, g.decision]
            if proven:
                row.insert(6, "-")
            table.rows.append(row)
        blocks.append(table)
    if any(n.startswith("Updates refused") for n in t.notes):
        blocks.append(Para(next(n for n in t.notes if n.startswith("Updates refused"))))
    return blocks


def _subjects(t: Timeline) -> dict[str, str]:
    """The gate or step each Update answered, from the report (an Update's own ``gate`` is optional).

    The report records answered gates and decisions in the order the Updates were accepted; expiries and
    emergency skips are not Updates and are left out of the pairing.
    """
    answered = [g for g in t.outcome.gate_records if g.decision not in ("expired", "skipped-in-emergency")]
    gates = iter(g.subject for g in answered if g.kind == "approval")
    steps = iter(g.subject for g in answered if g.kind == "decision")
    subjects: dict[str, str] = {}
    for u in t.updates:
        if u.name in ("approve", "reject", "accept_data_loss"):
            subjects[u.update_id] = next(gates, "")
        elif u.name == "decide":
            subjects[u.update_id] = next(steps, "")
    return {k: v for k, v in subjects.items() if v}


def _changes(t: Timeline) -> list[Block]:
    e = t.evidence
    items = Bullets()
    for d in e.dns_changes:
        record = d.after.record or d.before.record or "record"
        how = ("applied" if d.applied else "already in place") + (
            f", change {d.change_id}" if d.change_id else ""
        )
        items.add(
            f"DNS {record} {d.after.type or ''}: before {describe_dns(d.before)} → "
            f"after {describe_dns(d.after)} ({how})",
            *([d.detail] if d.detail else []),
        )
    for f in e.fences:
        state = "fenced" if f.fenced else "NOT fenced"
        items.add(
            f"Fence {f.region}: {state} by {f.method}, final LSN {f.final_lsn or 'unknown'}",
            *f.actions,
            *([f"proof: {f.proof}"] if f.proof else []),
            *[f"error: {x}" for x in f.errors],
        )
    for r in e.replays:
        if r.reached:
            items.add(f"Replay: the standby replayed up to {r.replay_lsn} in {r.waited_ms or 0:.0f} ms")
        else:
            items.add(
                f"Replay: the standby did NOT reach the final LSN (replayed {r.replay_lsn or 'unknown'})"
            )
    for p in e.promotions:
        what = "was already primary" if p.already_primary else "promoted"
        items.add(
            f"Promotion {p.region}: {what} at replay LSN {p.lsn or '?'}, timeline {p.timeline}, "
            f"writable {format_yes(p.writable)}",
            *p.actions,
        )
    for u in e.unfences:
        items.add(f"Compensation: {u.region} {'serves again' if u.restored else 'NOT restored'}", *u.actions)
    if not items.items:
        return [
            Heading(2, "What changed"),
            Para("Nothing: no DNS record or database was changed by this run."),
        ]
    return [Heading(2, "What changed"), items]


def _measurements(t: Timeline) -> list[Block]:
    e = t.evidence
    blocks: list[Block] = []
    if e.replication:
        table = Table(["when", "step", "primary → standby", "primary LSN", "standby replayed", "lag"])
        for s in e.replication:
            lag = (
                f"{s.lag_bytes} bytes / {s.lag_seconds:.1f} s"
                if s.lag_bytes is not None and s.lag_seconds is not None
                else "unknown" + (f" ({'; '.join(s.errors)})" if s.errors else "")
            )
            table.rows.append(
                [
                    format_time(s.at),
                    s.step or "-",
                    f"{s.primary_region} → {s.standby_region}",
                    s.primary_lsn or "?",
                    s.standby_replay_lsn or "?",
                    lag,
                ]
            )
        blocks += [Heading(3, "Replication"), table]
    if e.health:
        table = Table(["when", "kind", "region / check", "result", "detail"])
        for h in e.health:
            if h.source == "validation":
                result = f"passed {h.required}x in a row" if h.ok else f"did NOT pass {h.required}x"
                detail = (
                    f"after {h.passed_after_ms or 0:.0f} ms, {h.attempts} probes"
                    if h.ok
                    else (h.error or "-")
                )
            else:
                result = f"ok ({h.status})" if h.ok else "failed"
                detail = f"{h.latency_ms or 0:.0f} ms" if h.ok else (h.error or "-")
            table.rows.append([format_time(h.at), h.source, f"{h.region} / {h.check}", result, detail])
        blocks += [Heading(3, "Health"), table]
    if e.propagation:
        table = Table(["nameserver", "address", "converged", "after", "answer"])
        for n in e.propagation:
            table.rows.append(
                [
                    n.name or "-",
                    f"{n.address}:{n.port}",
                    format_yes(n.converged),
                    f"{n.after_ms:.0f} ms" if n.after_ms is not None else "-",
                    ", ".join(n.values) or (n.error or "-"),
                ]
            )
        blocks += [Heading(3, "DNS propagation"), table]
    return [Heading(2, "Measurements"), *blocks] if blocks else []


def _steps(t: Timeline) -> list[Block]:
    if not t.outcome.steps:
        return []
    table = Table(["step", "start", "end", "took", "outcome", "attempts", "detail"])
    for s in t.outcome.steps:
        took = format_span(s.finished_at - s.started_at) if s.finished_at and s.started_at else "-"
        detail = s.detail + (f" error: {s.error}" if s.error else "")
        table.rows.append(
            [
                s.name,
                format_time(s.started_at),
                format_time(s.finished_at),
                took,
                s.outcome,
                str(s.attempts),
                detail.strip() or "-",
            ]
        )
    return [Heading(2, "Steps (as the workflow reported them)"), table]


def _chronology(t: Timeline) -> list[Block]:
    by_event = {a.scheduled_event_id: a for a in t.activities}
    items = Bullets()
    for entry in t.entries:
        activity = by_event.get(entry.event_id) if entry.kind == "activity" else None
        items.add(
            f"{format_time(entry.at)} · event {entry.event_id} · {entry.text}", *(_activity_lines(activity))
        )
    return [Heading(2, "Timeline"), items]


def _activity_lines(activity: ActivityRecord | None) -> list[str]:
    if activity is None:
        return []
    lines = list(activity.highlights)
    if activity.retried_after:
        lines.append(f"retried after: {activity.retried_after}")
    return lines


def _failures(t: Timeline) -> list[Block]:
    items = Bullets()
    for a in t.activities:
        if a.failure is not None:
            kind = f" ({a.failure.type})" if a.failure.type else ""
            final = ", not retried" if a.failure.non_retryable else ""
            items.add(
                f"event {a.scheduled_event_id}: {a.name} {a.status} after {a.attempts} attempt(s)"
                f"{kind}{final}: {a.failure.message}",
                *a.failure.causes,
            )
        elif a.attempts > 1:
            items.add(
                f"event {a.scheduled_event_id}: {a.name} succeeded on attempt {a.attempts}",
                *([f"the attempt before failed: {a.retried_after}"] if a.retried_after else []),
            )
    for p in t.task_problems:
        items.add(f"event {p.event_id}: {p.kind}: {p.message}")
    if t.failure is not None:
        items.add(f"the run: {t.failure.message}", *t.failure.causes)
    if not items.items:
        return [
            Heading(2, "Failures and retries"),
            Para("None: every activity succeeded on its first attempt."),
        ]
    return [Heading(2, "Failures and retries"), items]


def _workers(t: Timeline) -> list[Block]:
    table = Table(["worker identity", "build id (code version)", "SDK"])
    for w in t.workers:
        table.rows.append([w.identity, ", ".join(f"`{b}`" for b in w.build_ids) or "-", w.sdk or "-"])
    return [Heading(2, "Workers and code version"), table] if t.workers else []


def _notes(t: Timeline) -> list[Block]:
    notes = [*t.outcome.messages, *(n for n in t.notes if not n.startswith("Updates refused"))]
    markers = [f"version marker at event {m.event_id}: {m.detail}" for m in t.markers]
    items = Bullets([(n, []) for n in notes + markers])
    return [Heading(2, "Notes"), items] if items.items else []


def _regulations(t: Timeline) -> list[Block]:
    table = Table(["requirement", "asks for", "answered by", "this run"])
    for row in regulatory_evidence(t):
        table.rows.append([row.requirement, row.asks_for, row.answered_by, row.this_run])
    return [Heading(2, "Evidence for DR regulations"), table]
