"""Drill: a rehearsed failover and failback, measured against the runbook's objectives.

Both moves run as child workflows, so each keeps its own history, lock, gates and report. Approvals are
real (a drill rehearses the people too). Whatever happens, the drill restores the starting state: a failover
that changed anything is followed by a failback, also after a failure or a worker crash (the workflow's own
durability). An objective missed is a finding in the report, not a crash.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.exceptions import ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from activities.drill_report import DrillReportFiles, write_drill_report
    from activities.search_attributes import STEP_ATTR
    from workflows.archive import start_archive
    from workflows.common import HEARTBEAT, INFRA_RETRY, load_runbook, tag_run
    from workflows.drill_models import (
        DrillReport,
        DrillRequest,
        assess_drill,
        drill_excluded,
        drill_failover_request,
        render_drill,
    )
    from workflows.failback_models import FailbackReport, FailbackRequest
    from workflows.failover_models import FailoverReport

T = TypeVar("T")


@workflow.defn(name="Drill")
class DrillWorkflow:
    @workflow.init
    def __init__(self, request: DrillRequest) -> None:
        info = workflow.info()
        scenario = "planned failover and failback"
        if request.approver_unavailable:
            scenario += f", approver {request.approver_unavailable} unavailable"
        self._report = DrillReport(
            service=request.service, drill_id=info.workflow_id, scenario=scenario, runbook_sha256=None,
            started_at=workflow.now(), phase="failover",
        )  # fmt: skip

    @workflow.query
    def status(self) -> DrillReport:
        return self._report

    @workflow.run
    async def run(self, request: DrillRequest) -> DrillReport:
        tag_run(request.service, "drill", "failover")
        loaded = await load_runbook(request.service)
        runbook = loaded.runbook
        child_request = drill_failover_request(request, runbook)
        target = child_request.target
        excluded = drill_excluded(request)
        self._update(
            runbook_sha256=loaded.sha256,
            target=target,
            rto_objective_seconds=runbook.objectives.rto.total_seconds(),
            rpo_objective_seconds=runbook.objectives.rpo.total_seconds(),
        )
        drill_id = workflow.info().workflow_id
        try:
            failover = await self._child("Failover", child_request, f"{drill_id}-failover", FailoverReport)
            self._record_failover(failover)
        finally:
            await self._restore(request, runbook.primary, excluded, drill_id)
        self._update(phase="assessing", findings=assess_drill(self._report))
        # The phase goes with the end: a finished report is written exactly as before the field existed.
        self._update(
            outcome="passed" if not self._report.findings else "findings", finished_at=workflow.now(),
            phase=None,
        )  # fmt: skip
        written = await workflow.execute_activity(
            write_drill_report,
            DrillReportFiles(
                service=request.service, drill_id=drill_id, json_text=self._report.model_dump_json(indent=2),
                markdown=render_drill(self._report),
            ),
            start_to_close_timeout=timedelta(seconds=30),
            heartbeat_timeout=HEARTBEAT,
            retry_policy=INFRA_RETRY,
            summary="write the drill report (JSON + Markdown)",
        )  # fmt: skip
        self._update(report_files=written.paths)
        workflow.set_current_details(render_drill(self._report))
        workflow.upsert_search_attributes([STEP_ATTR.value_set(self._report.outcome)])
        await start_archive("drill")
        return self._report

    async def _restore(self, request: DrillRequest, home: str, excluded: list[str], drill_id: str) -> None:
        """Fail back whenever the failover may have changed anything; nothing changed means nothing to do."""
        failover = self._report.failover
        changed = failover is None or any(
            (failover.fence, failover.promotion, failover.dns_change, failover.compensation)
        )
        if failover is not None and failover.promotion is None and failover.dns_change is None:
            changed = False  # stopped before promotion: the failover's own compensation restored the primary
        if not changed:
            self._update(restored=True)
            return
        workflow.upsert_search_attributes([STEP_ATTR.value_set("failback")])
        self._update(phase="failback")
        try:
            failback = await self._child(
                "Failback",
                FailbackRequest(
                    service=request.service, reason=f"DR drill restore: {request.reason}",
                    requested_by=request.requested_by, home=home, prepare=True, mode="drill",
                    excluded_approvers=excluded,
                ),
                f"{drill_id}-failback",
                FailbackReport,
            )  # fmt: skip
        except ChildWorkflowError as err:
            self._deviation(f"failback failed: {err.cause or err}")
            return
        self._update(failback=failback, restored=failback.outcome in ("completed", "no-op"))
        if failback.outcome not in ("completed", "no-op"):
            self._deviation(f"failback ended as {failback.outcome}: {'; '.join(failback.messages)}")

    async def _child(self, kind: str, request: object, child_id: str, result_type: type[T]) -> T:
        # Details, not commands: the running report (no verdict before it is checked), no patch needed.
        workflow.set_current_details(render_drill(self._report))
        result: T = await workflow.execute_child_workflow(
            kind,
            request,
            id=child_id,
            result_type=result_type,
            static_summary=f"{kind} for {self._report.drill_id}",
        )
        return result

    def _record_failover(self, report: FailoverReport) -> None:
        rto = report.achieved_rto_seconds
        self._update(
            failover=report,
            rto_achieved_seconds=rto,
            rto_without_approval_seconds=None if rto is None else rto - report.approval_wait_seconds,
            rpo_achieved_seconds=None if report.data_loss is None else (report.data_loss.seconds or 0.0),
        )
        if report.outcome != "completed":
            self._deviation(f"failover ended as {report.outcome}: {'; '.join(report.messages)}")
        for approval in report.approvals:
            if approval.decision != "approved":
                self._deviation(f"{approval.gate} gate: {approval.decision}")

    def _deviation(self, text: str) -> None:
        self._update(deviations=[*self._report.deviations, text])

    def _update(self, **changes: object) -> None:
        self._report = self._report.model_copy(update=changes)
