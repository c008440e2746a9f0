"""The results that matter, read from activity inputs and results as plain JSON.

Tolerant on purpose: a field that an older drflow did not write, or wrote differently, shows as unknown
instead of failing the whole audit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from runbooks.durations import parse_duration
from workers.audit.model import (
    ActivityRecord,
    DnsChangeEvidence,
    DnsState,
    Evidence,
    FenceEvidence,
    HealthSample,
    NameserverEvidence,
    Objectives,
    Outcome,
    PromotionEvidence,
    ReplayEvidence,
    ReplicationSample,
    ReportGateRecord,
    ReportStep,
    UnfenceEvidence,
)

_TIMEDELTA = TypeAdapter(timedelta)


def seconds_of(value: Any) -> float | None:
    """A duration as a runbook (``2m``) or pydantic (``PT2M``) wrote it, in seconds."""
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    try:
        return parse_duration(value).total_seconds()
    except ValueError:
        pass
    try:
        return _TIMEDELTA.validate_python(value).total_seconds()
    except ValidationError:
        return None


# ------------------------------------------------------------------------------------- tolerant access
def _get(data: Any, *path: str | int) -> Any:
    for key in path:
        if isinstance(key, int):
            data = data[key] if isinstance(data, list) and -len(data) <= key < len(data) else None
        else:
            data = data.get(key) if isinstance(data, dict) else None
    return data


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _strs(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _dns_state(data: Any) -> DnsState:
    return DnsState(
        record=_str(_get(data, "record")),
        type=_str(_get(data, "type")),
        ttl=_int(_get(data, "ttl")),
        values=_strs(_get(data, "values")),
    )


def describe_dns(state: DnsState) -> str:
    values = ", ".join(state.values) or "no record"
    return f"{values} (TTL {state.ttl}s)" if state.ttl is not None else values


def _ms(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f} ms"


def _yes(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


# ------------------------------------------------------------------------- the results that matter
def _highlights_load_runbook(_: Any, result: Any) -> list[str]:
    runbook = _get(result, "runbook")
    rto, rpo = _get(runbook, "objectives", "rto"), _get(runbook, "objectives", "rpo")
    sha = _str(_get(result, "sha256"))
    return [
        f"runbook of {_get(runbook, 'service')} from {_get(result, 'source')}"
        + (f" (sha256 {sha[:12]})" if sha else ""),
        f"objectives: RTO {rto}, RPO {rpo}",
    ]


def _highlights_lock(_: Any, result: Any) -> list[str]:
    holder = _get(result, "holder", "workflow_id")
    granted = _get(result, "granted")
    line = "lock granted" if granted else f"lock refused: held by {holder}"
    note = _str(_get(result, "note"))
    return [line + (f" ({note})" if note else "")]


def _highlights_dns_plan(_: Any, result: Any) -> list[str]:
    current, desired = _dns_state(_get(result, "current")), _dns_state(_get(result, "desired"))
    checksum = _str(_get(result, "checksum")) or ""
    noop = " (no change needed)" if _get(result, "no_op") else ""
    return [
        f"plan {_get(result, 'record')} {_get(result, 'type')}: {describe_dns(current)} → "
        f"{describe_dns(desired)}{noop}, checksum {checksum[:16]}"
    ]


def _highlights_dns_apply(_: Any, result: Any) -> list[str]:
    before, after = _dns_state(_get(result, "before")), _dns_state(_get(result, "after"))
    applied = "applied" if _get(result, "applied") else "already in place"
    change = _str(_get(result, "change_id"))
    return [
        f"DNS {after.record or before.record}: before {describe_dns(before)}, after {describe_dns(after)} "
        f"({applied}{f', change {change}' if change else ''})"
    ]


def _highlights_replication(_: Any, result: Any) -> list[str]:
    lag_bytes, lag_seconds = _int(_get(result, "lag_bytes")), _float(_get(result, "lag_seconds"))
    lag = (
        f"lag {lag_bytes} bytes / {lag_seconds:.1f}s"
        if lag_bytes is not None and lag_seconds is not None
        else "lag unknown"
    )
    line = (
        f"replication {_get(result, 'primary_region')} → {_get(result, 'standby_region')}: {lag}; "
        f"primary LSN {_get(result, 'primary_lsn') or '?'}, standby replayed "
        f"{_get(result, 'standby_replay_lsn') or '?'}"
    )
    errors = _strs(_get(result, "errors"))
    return [line, *[f"error: {e}" for e in errors]]


def _highlights_fence(_: Any, result: Any) -> list[str]:
    fenced = "fenced" if _get(result, "fenced") else "NOT fenced"
    lines = [
        f"{_get(result, 'region')} {fenced} by {_get(result, 'method')}, final LSN "
        f"{_get(result, 'final_lsn') or 'unknown'}"
    ]
    return lines + [f"error: {e}" for e in _strs(_get(result, "errors"))]


def _highlights_replay(input_: Any, result: Any) -> list[str]:
    target = _get(input_, "position")
    if _get(result, "reached"):
        waited = _ms(_float(_get(result, "waited_ms")))
        return [f"standby replayed {_get(result, 'replay_lsn')} (target {target}) in {waited}"]
    return [f"standby did NOT reach {target}: replayed {_get(result, 'replay_lsn') or 'unknown'}"]


def _highlights_promote(_: Any, result: Any) -> list[str]:
    what = "already primary" if _get(result, "already_primary") else "promoted"
    return [
        f"{_get(result, 'region')} {what} at replay LSN {_get(result, 'replay_lsn_at_promotion') or '?'}, "
        f"timeline {_get(result, 'timeline')}, writable {_yes(_bool(_get(result, 'writable')))}, "
        f"{_ms(_float(_get(result, 'duration_ms')))}"
    ]


def _highlights_unfence(_: Any, result: Any) -> list[str]:
    restored = "serves again" if _get(result, "restored") else "NOT restored"
    return [f"{_get(result, 'region')} {restored}: {'; '.join(_strs(_get(result, 'actions')))}"]


def _highlights_propagation(_: Any, result: Any) -> list[str]:
    lines = []
    for ns in _dicts(_get(result, "nameservers")):
        if ns.get("converged"):
            lines.append(
                f"{ns.get('name')} answers {', '.join(_strs(ns.get('last_values')))} after "
                f"{_ms(_float(ns.get('converged_after_ms')))}"
            )
        else:
            lines.append(
                f"{ns.get('name')} did not converge: {ns.get('last_error') or ns.get('last_values')}"
            )
    return lines


def _highlights_probe(_: Any, result: Any) -> list[str]:
    lines = []
    for r in _dicts(_get(result, "results")):
        state = f"ok ({r.get('status')})" if r.get("ok") else f"FAILED: {r.get('error')}"
        lines.append(f"{r.get('region')}/{r.get('check')} {state}, {_ms(_float(r.get('latency_ms')))}")
    return lines


def _highlights_validate(_: Any, result: Any) -> list[str]:
    lines = []
    for c in _dicts(_get(result, "checks")):
        if c.get("passed"):
            lines.append(
                f"{c.get('region')}/{c.get('check')} passed {c.get('required')}x in a row after "
                f"{_ms(_float(c.get('passed_after_ms')))} ({c.get('attempts')} probes)"
            )
        else:
            last = _get(c, "last", "error")
            lines.append(f"{c.get('region')}/{c.get('check')} did NOT pass {c.get('required')}x: {last}")
    return lines


def _highlights_read_dns(_: Any, result: Any) -> list[str]:
    lines = []
    for a in _dicts(_get(result, "answers")):
        answer = a.get("error") or (", ".join(_strs(a.get("values"))) or a.get("rcode"))
        lines.append(f"{a.get('name')} answers {answer}")
    return lines


def _highlights_archive_start(_: Any, result: Any) -> list[str]:
    return [str(_get(result, "note") or "")]


def _highlights_archive(_: Any, result: Any) -> list[str]:
    return [f"archived to {_get(result, 'location')} (manifest sha256 {_get(result, 'manifest_sha256')})"]


HIGHLIGHTS: dict[str, Callable[[Any, Any], list[str]]] = {
    "load_runbook": _highlights_load_runbook,
    "acquire_service_lock": _highlights_lock,
    "dns_plan_change": _highlights_dns_plan,
    "dns_apply_change": _highlights_dns_apply,
    "db_measure_replication": _highlights_replication,
    "pg_measure_replication": _highlights_replication,
    "db_fence": _highlights_fence,
    "pg_fence": _highlights_fence,
    "db_wait_for_replay": _highlights_replay,
    "pg_wait_for_replay": _highlights_replay,
    "db_promote": _highlights_promote,
    "pg_promote": _highlights_promote,
    "db_unfence": _highlights_unfence,
    "pg_unfence": _highlights_unfence,
    "dns_verify_propagation": _highlights_propagation,
    "probe_health": _highlights_probe,
    "validate_health": _highlights_validate,
    "read_dns_record": _highlights_read_dns,
    "archive_start": _highlights_archive_start,
    "archive_run": _highlights_archive,
}


def objectives_of(activities: Iterable[ActivityRecord]) -> Objectives:
    for activity in activities:
        if activity.name == "load_runbook" and activity.result is not None:
            rto = _get(activity.result, "runbook", "objectives", "rto")
            rpo = _get(activity.result, "runbook", "objectives", "rpo")
            return Objectives(
                rto=_str(rto),
                rpo=_str(rpo),
                rto_seconds=seconds_of(rto),
                rpo_seconds=seconds_of(rpo),
                source=_str(_get(activity.result, "source")),
            )
    return Objectives()


def outcome_of(result: Any, objectives: Objectives) -> Outcome:
    if not isinstance(result, dict):
        return Outcome()
    if objectives.rto_seconds is None:  # a run without load_runbook: the report's own plan has them
        plan = _get(result, "plan")
        if plan is not None:
            objectives = Objectives(
                rto_seconds=seconds_of(_get(plan, "rto")), rpo_seconds=seconds_of(_get(plan, "rpo"))
            )
    rto = _float(result.get("achieved_rto_seconds"))
    data_loss = _get(result, "data_loss")
    steps = [
        ReportStep(
            name=str(s.get("name")),
            started_at=_datetime(s.get("started_at")),
            finished_at=_datetime(s.get("finished_at")),
            outcome=str(s.get("outcome")),
            attempts=_int(s.get("attempts")) or 1,
            detail=str(s.get("detail") or ""),
            error=_str(s.get("error")),
        )
        for s in _dicts(result.get("steps"))
    ]
    records = [
        ReportGateRecord(
            kind="approval",
            subject=str(a.get("gate")),
            decision=str(a.get("decision")),
            by=_str(a.get("by")),
            at=_datetime(a.get("at")),
            channel=_str(a.get("channel")),
            reason=str(a.get("reason") or ""),
            **_identity(a),
        )
        for a in _dicts(result.get("approvals"))
    ] + [
        ReportGateRecord(
            kind="decision",
            subject=str(d.get("step")),
            decision=str(d.get("decision")),
            by=_str(d.get("by")),
            at=_datetime(d.get("at")),
            channel=_str(d.get("channel")),
            reason=str(d.get("reason") or ""),
            **_identity(d),
        )
        for d in _dicts(result.get("decisions"))
    ]
    return Outcome(
        outcome=_str(result.get("outcome")),
        verdict=_str(result.get("verdict")),
        reasons=_strs(result.get("reasons")),
        achieved_rto_seconds=rto,
        rto_met=None if rto is None or objectives.rto_seconds is None else rto <= objectives.rto_seconds,
        approval_wait_seconds=_float(result.get("approval_wait_seconds")),
        zero_loss_proven=_bool(_get(data_loss, "zero_proven")),
        data_loss_bytes=_int(_get(data_loss, "bytes")),
        data_loss_seconds=_float(_get(data_loss, "seconds")),
        rpo_met=_bool(_get(data_loss, "within_rpo")),
        data_loss_basis=_str(_get(data_loss, "basis")),
        runbook_sha256=_str(result.get("runbook_sha256")),
        steps=steps,
        gate_records=records,
        messages=_strs(result.get("messages")),
    )


def _identity(record: dict[str, Any]) -> dict[str, str | None]:
    """Who answered, proven how, as the report recorded it (absent in runs without a people file)."""
    return {name: _str(record.get(name)) for name in ("person", "identity", "key", "gateway")}


def _datetime(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def evidence_of(activities: list[ActivityRecord]) -> Evidence:
    evidence = Evidence()
    for a in activities:
        if a.status != "completed" or not isinstance(a.result, dict):
            continue
        r, at = a.result, a.closed_at
        name = a.name.removeprefix("db_").removeprefix("pg_")
        if name == "dns_apply_change":
            evidence.dns_changes.append(
                DnsChangeEvidence(
                    at=at,
                    before=_dns_state(r.get("before")),
                    after=_dns_state(r.get("after")),
                    applied=_bool(r.get("applied")),
                    change_id=_str(r.get("change_id")),
                    detail=_str(r.get("detail")),
                )
            )
        elif name == "fence":
            evidence.fences.append(
                FenceEvidence(
                    at=at,
                    region=_str(r.get("region")),
                    method=_str(r.get("method")),
                    fenced=_bool(r.get("fenced")),
                    already_fenced=_bool(r.get("already_fenced")),
                    final_lsn=_str(r.get("final_lsn")),
                    actions=_strs(r.get("actions")),
                    errors=_strs(r.get("errors")),
                    proof=_str(r.get("proof")),
                )
            )
        elif name == "wait_for_replay":
            evidence.replays.append(
                ReplayEvidence(
                    at=at,
                    reached=_bool(r.get("reached")),
                    replay_lsn=_str(r.get("replay_lsn")),
                    waited_ms=_float(r.get("waited_ms")),
                )
            )
        elif name == "promote":
            evidence.promotions.append(
                PromotionEvidence(
                    at=at,
                    region=_str(r.get("region")),
                    promoted=_bool(r.get("promoted")),
                    already_primary=_bool(r.get("already_primary")),
                    lsn=_str(r.get("replay_lsn_at_promotion")),
                    timeline=_int(r.get("timeline")),
                    writable=_bool(r.get("writable")),
                    duration_ms=_float(r.get("duration_ms")),
                    actions=_strs(r.get("actions")),
                )
            )
        elif name == "unfence":
            evidence.unfences.append(
                UnfenceEvidence(
                    at=at,
                    region=_str(r.get("region")),
                    restored=_bool(r.get("restored")),
                    actions=_strs(r.get("actions")),
                )
            )
        elif name == "measure_replication":
            evidence.replication.append(
                ReplicationSample(
                    at=at,
                    step=a.summary,
                    primary_region=_str(r.get("primary_region")),
                    standby_region=_str(r.get("standby_region")),
                    primary_lsn=_str(r.get("primary_lsn")),
                    standby_replay_lsn=_str(r.get("standby_replay_lsn")),
                    lag_bytes=_int(r.get("lag_bytes")),
                    lag_seconds=_float(r.get("lag_seconds")),
                    primary_reachable=_bool(r.get("primary_reachable")),
                    standby_reachable=_bool(r.get("standby_reachable")),
                    errors=_strs(r.get("errors")),
                )
            )
        elif name == "probe_health":
            evidence.health.extend(_probe_sample(at, "probe", p) for p in _dicts(r.get("results")))
        elif name == "validate_health":
            for c in _dicts(r.get("checks")):
                last = c.get("last")
                sample = _probe_sample(at, "validation", last if isinstance(last, dict) else c)
                evidence.health.append(
                    sample.model_copy(
                        update={
                            "region": _str(c.get("region")),
                            "check": _str(c.get("check")),
                            "url": _str(c.get("url")),
                            "ok": _bool(c.get("passed")),
                            "required": _int(c.get("required")),
                            "attempts": _int(c.get("attempts")),
                            "passed_after_ms": _float(c.get("passed_after_ms")),
                        }
                    )
                )
        elif name == "dns_verify_propagation":
            evidence.propagation.extend(
                NameserverEvidence(
                    at=at,
                    name=_str(ns.get("name")),
                    address=_str(ns.get("address")),
                    port=_int(ns.get("port")),
                    converged=_bool(ns.get("converged")),
                    after_ms=_float(ns.get("converged_after_ms")),
                    values=_strs(ns.get("last_values")),
                    error=_str(ns.get("last_error")),
                )
                for ns in _dicts(r.get("nameservers"))
            )
    return evidence


def _probe_sample(
    at: datetime | None, source: Literal["probe", "validation"], p: dict[str, Any]
) -> HealthSample:
    return HealthSample(
        at=at,
        source=source,
        region=_str(p.get("region")),
        check=_str(p.get("check")),
        url=_str(p.get("url")),
        ok=_bool(p.get("ok")),
        status=_int(p.get("status")),
        latency_ms=_float(p.get("latency_ms")),
        error=_str(p.get("error")),
    )


# What the timeline builder reads from decoded payloads, with the same tolerance.
get_path = _get
as_str = _str
