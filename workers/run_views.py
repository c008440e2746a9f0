"""How the CLI shows a run, whatever its workflow type: the report model, its Markdown, its live lines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workflows.drill_models import DrillReport, render_drill
from workflows.failback_models import FailbackReport, render_failback
from workflows.failover_models import FailoverReport, progress_lines, render_plan, render_report


@dataclass(frozen=True)
class RunView:
    report_type: type[Any]
    render: Callable[[Any], str]
    progress: Callable[[Any], list[tuple[str, str]]]


def _failover_progress(report: FailoverReport) -> list[tuple[str, str]]:
    return progress_lines(report, render_plan(report.plan) if report.plan is not None else None)


def _failback_progress(report: FailbackReport) -> list[tuple[str, str]]:
    lines = progress_lines(report)
    for stage in report.stages:
        result = stage.analysis
        if result is None or stage.outcome == "running":
            continue
        split = ", ".join(f"{region} {share:.0%}" for region, share in sorted(result.split.items()))
        why = f" ({'; '.join(result.reasons)})" if result.reasons else ""
        lines.append(
            (
                f"stage {stage.percent} {stage.outcome}",
                f"  analysis at {stage.percent}%: {stage.outcome}{why}; {result.requests} requests, "
                f"errors {result.error_rate:.1%}, split {split}",
            )
        )
    return lines


def _drill_progress(report: DrillReport) -> list[tuple[str, str]]:
    lines = [(f"target {report.target}", f"drill of {report.service} → {report.target}")]
    if report.failover is not None:
        lines.append((f"failover {report.failover.outcome}", f"failover: {report.failover.outcome}"))
    if report.failback is not None:
        lines.append((f"failback {report.failback.outcome}", f"failback: {report.failback.outcome}"))
    return lines


VIEWS: dict[str, RunView] = {
    "Failover": RunView(FailoverReport, render_report, _failover_progress),
    "Failback": RunView(FailbackReport, render_failback, _failback_progress),
    "Drill": RunView(DrillReport, render_drill, _drill_progress),
}


def view_for(workflow_type: str) -> RunView:
    try:
        return VIEWS[workflow_type]
    except KeyError:
        known = ", ".join(VIEWS)
        raise ValueError(f"{workflow_type} runs have no live report here (known: {known})") from None
