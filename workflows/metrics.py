"""drflow's own Prometheus metrics, recorded through the SDK's workflow meter (docs/observability.md).

``workflow.metric_meter()`` is replay-safe: the SDK records nothing while a worker replays a history, so a
run's end is counted once however often its history is replayed. Recording a metric is not a command: no
history event, no patch needed.

Every run of every kind is measured at ONE place, ``RunMetricsInterceptor``: a workflow inbound interceptor
that reads the report a run returns (Failover, Failback, Drill, Readiness) and records it. The workflows
themselves stay untouched, except Readiness, which also records its verdict and replication lag with the
RPO they are judged against (``record_readiness``), as that objective is not in its report.

Labels are bounded: service, region, kind, mode, outcome, verdict, step (without the parenthesised
values some step names carry); never a workflow id, a person or a secret.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, get_args

from temporalio import workflow
from temporalio.common import MetricMeter
from temporalio.exceptions import FailureError
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

with workflow.unsafe.imports_passed_through():
    from workflows.drill_models import DrillReport
    from workflows.failback_models import FailbackReport
    from workflows.failover_models import FailoverReport, MoveReport
    from workflows.readiness_report import ReadinessReport, WarningCode

VERDICTS = ("ready", "degraded", "not-ready")
KINDS = {"Failover": "failover", "Failback": "failback", "Drill": "drill", "Readiness": "readiness"}


def _meter() -> MetricMeter:
    return workflow.metric_meter()


def step_label(name: str) -> str:
    """``wait out the old TTL (60s)`` -> ``wait out the old TTL``: runbook values stay out of labels."""
    return re.sub(r"\s*\(.*\)$", "", name).strip() or name


def record_readiness(report: ReadinessReport, rpo: timedelta) -> None:
    """The verdict (1 for the current one, 0 for the others), lag per standby and the RPO objective."""
    meter = _meter()
    verdict = meter.create_gauge("drflow_readiness_verdict", "1 for the service's current readiness verdict")
    for name in VERDICTS:
        verdict.set(1 if name == report.verdict else 0, {"service": report.service, "verdict": name})
    meter.create_gauge_float("drflow_rpo_objective_seconds", "the runbook's RPO objective", "s").set(
        rpo.total_seconds(), {"service": report.service}
    )
    lag = meter.create_gauge_float(
        "drflow_replication_lag_seconds", "replication lag to the standby at the last check", "s"
    )
    for status in report.replication:
        if status.lag_seconds is not None:
            lag.set(status.lag_seconds, {"service": report.service, "region": status.standby_region})
    meter.create_gauge(
        "drflow_readiness_reasons", "how many reasons (blocking or warnings) the last check gave"
    ).set(len(report.reasons), {"service": report.service})
    warning = meter.create_gauge("drflow_readiness_warning", "1 for each early warning the last check gave")
    present = {w.code for w in report.warnings}
    for code in get_args(WarningCode):  # a closed set of codes: bounded labels
        warning.set(1 if code in present else 0, {"service": report.service, "warning": code})


def record_run(kind: str, result: Any) -> None:
    """At the end of a run: its outcome, and for moves and drills their RTO, RPO, waits and steps."""
    meter = _meter()
    outcome = _outcome(result)
    meter.create_counter("drflow_runs_total", "runs that ended, by kind and outcome").add(
        1, {"kind": kind, "outcome": outcome}
    )
    if isinstance(result, MoveReport):
        _record_move(meter, kind, result)
    elif isinstance(result, DrillReport):
        _record_drill(meter, result)


def _outcome(result: Any) -> str:
    if isinstance(result, ReadinessReport):
        return result.verdict
    outcome = getattr(result, "outcome", None)
    return outcome if isinstance(outcome, str) else "completed"


def _mode(report: MoveReport) -> str:
    if isinstance(report, FailoverReport | FailbackReport):
        return report.mode
    return "planned"


def _record_objectives(
    meter: MetricMeter, labels: dict[str, str], rto: float | None, rpo: float | None
) -> None:
    """The achieved RTO and data-loss window of the service's last run of this kind (moves and drills)."""
    if rto is not None:
        meter.create_gauge_float(
            "drflow_failover_rto_seconds", "the achieved RTO of the service's last run of this kind", "s"
        ).set(rto, labels)
    if rpo is not None:
        meter.create_gauge_float(
            "drflow_failover_rpo_seconds", "the data-loss window of the service's last run of this kind", "s"
        ).set(rpo, labels)


def _record_move(meter: MetricMeter, kind: str, report: MoveReport) -> None:
    labels = {"service": report.service, "kind": kind, "mode": _mode(report)}
    loss = report.data_loss.seconds if report.data_loss is not None else None
    _record_objectives(meter, labels, report.achieved_rto_seconds, loss)
    if report.approvals or report.approval_wait_seconds:
        meter.create_histogram_float(
            "drflow_approval_wait_seconds", "time a run waited for people at its gates", "s"
        ).record(report.approval_wait_seconds, {"kind": kind})
    steps = meter.create_histogram_float("drflow_step_duration_seconds", "duration of a run's steps", "s")
    for step in report.steps:
        if step.finished_at is not None and step.outcome == "ok":
            seconds = max(0.0, (step.finished_at - step.started_at).total_seconds())
            steps.record(seconds, {"kind": kind, "step": step_label(step.name)})


def _record_drill(meter: MetricMeter, report: DrillReport) -> None:
    labels = {"service": report.service, "kind": "drill", "mode": "drill"}
    _record_objectives(meter, labels, report.rto_achieved_seconds, report.rpo_achieved_seconds)
    if report.outcome == "passed" and report.finished_at is not None:
        meter.create_gauge_float(
            "drflow_last_drill_success_timestamp_seconds", "when the service's last passed drill ended", "s"
        ).set(report.finished_at.timestamp(), {"service": report.service})


class RunMetricsInterceptor(Interceptor):
    """Given to every drflow Worker: each run is measured when it returns (or fails)."""

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _RunMetrics


class _RunMetrics(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        kind = KINDS.get(workflow.info().workflow_type)
        if kind is None:  # the service lock and archive helpers are not runs
            return await self.next.execute_workflow(input)
        try:
            result = await self.next.execute_workflow(input)
        except FailureError:  # the run fails (a task failure, retried, is not counted)
            _meter().create_counter("drflow_runs_total", "runs that ended, by kind and outcome").add(
                1, {"kind": kind, "outcome": "failed"}
            )
            raise
        try:
            record_run(kind, result)
        except Exception as err:  # a metric must never fail a run
            workflow.logger.warning("run metrics not recorded: %r", err)
        return result
