"""Failover: move a service's traffic and data to another region, with people approving the risky steps.

Reads like the runbook it executes. Every side effect is an activity that checks state before acting, so a
retry (or a replacement worker after a crash) never applies a change twice; every decision a person makes
arrives as an Update whose validator refuses bad input before anything changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities import database
    from activities.dns_providers import (
        ApplyDnsChangeRequest,
        DnsChangePlan,
        DnsChangeResult,
        PlanDnsChangeRequest,
        apply_dns_change,
        plan_dns_change,
    )
    from activities.dns_reader import DnsQuery, DnsReadout, read_dns_record
    from activities.health import (
        HealthProbe,
        HealthProbeRequest,
        HealthProbeResults,
        HealthValidationRequest,
        HealthValidationResult,
        ValidatedProbe,
        probe_budget,
        probe_health,
        validate_health,
    )
    from activities.postgres import FenceResult, ReplicationStatus, WaitForReplayResult, lsn_diff
    from activities.propagation import PropagationRequest, PropagationResult, verify_propagation
    from activities.service_lock import AcquireLockRequest, LockHolder, ReleaseRequest, ServiceLockActivities
    from activities.service_lock import lock_workflow_id as lock_id
    from runbooks.loader import LoadedRunbook
    from runbooks.model import Gate, Runbook, render_url
    from workflows.common import INFRA_RETRY, STEP_ATTR, load_runbook, tag_run
    from workflows.failover_models import (
        ApprovalInput,
        ApprovalRecord,
        DatabasePlan,
        DataLossWindow,
        DecisionInput,
        DecisionRecord,
        FailoverPlan,
        FailoverReport,
        FailoverRequest,
        FinalState,
        Outcome,
        StepRecord,
        UpdateOutcome,
        plan_checksum,
        render_plan,
        render_report,
    )

T = TypeVar("T")

INVALID_REQUEST = "InvalidFailoverRequest"
SKIPPABLE_STEPS = frozenset({"verify propagation", "validate health"})
HEARTBEAT = timedelta(seconds=10)
REPLAY_WAIT_PLANNED = timedelta(seconds=60)
REPLAY_WAIT_EMERGENCY = timedelta(seconds=5)


class _Ended(Exception):
    """Stops the run with an outcome; steps already done stay done and are reported."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


@workflow.defn(name="Failover")
class FailoverWorkflow:
    @workflow.init
    def __init__(self, request: FailoverRequest) -> None:
        info = workflow.info()
        self._request = request
        self._runbook: Runbook | None = None
        self._report = FailoverReport(
            service=request.service,
            target=request.target,
            mode=request.mode,
            reason=request.reason,
            requested_by=request.requested_by,
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            started_at=workflow.now(),
        )
        self._gate_answer: ApprovalRecord | None = None
        self._decision: DecisionRecord | None = None
        self._skippable = False
        self._holds_lock = False

    # ------------------------------------------------------------------------------------------ the run
    @workflow.run
    async def run(self, request: FailoverRequest) -> FailoverReport:
        tag_run(request.service, "failover", "preflight")
        loaded = await self._load(request)
        holder = await self._acquire_lock(request.service)
        try:
            if holder is not None:
                raise _Ended(
                    "refused", f"another run holds the lock of {request.service}: {holder.workflow_id}"
                )
            plan = await self._preflight(loaded)
            await self._gate("failover", plan)
            workflow.upsert_search_attributes([STEP_ATTR.value_set("executing")])
            if plan.database is not None:
                await self._fence(plan)
                await self._gate("promote", plan)
                await self._promote(plan)
            await self._cut_over_dns(plan)
            await self._verify_propagation(plan)
            await asyncio.gather(self._wait_out_old_ttl(plan), self._validate_health(plan))
            self._finish("completed")
        except _Ended as ended:
            await self._end_early(ended)
        finally:
            await self._release_lock(request.service)
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.upsert_search_attributes([STEP_ATTR.value_set(self._report.outcome)])
        return self._report

    # -------------------------------------------------------------------------------------- preflight
    async def _load(self, request: FailoverRequest) -> LoadedRunbook:
        loaded = await load_runbook(request.service)
        runbook = loaded.runbook
        if request.target not in runbook.regions:
            raise ApplicationError(
                f"{request.target!r} is not a region of {request.service} "
                f"(regions: {', '.join(runbook.regions)})",
                type=INVALID_REQUEST,
                non_retryable=True,
            )
        self._runbook = runbook
        self._update(runbook_sha256=loaded.sha256)
        if request.requested_by is None and runbook.approvals.separation_of_duties:
            self._note("requested_by was not given: separation of duties cannot be checked for this run")
        return loaded

    async def _acquire_lock(self, service: str) -> LockHolder | None:
        """Returns the holder when the lock is taken by another run, None when this run holds it."""
        info = workflow.info()
        result = await workflow.execute_activity_method(
            ServiceLockActivities.acquire,
            AcquireLockRequest(
                service=service,
                contender=LockHolder(workflow_id=info.workflow_id, run_id=info.run_id, kind="failover"),
                task_queue=info.task_queue,
            ),
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=INFRA_RETRY,
            summary=f"take the lock of {service}",
        )
        if result.note:
            self._note(result.note)
        if result.granted:
            self._holds_lock = True
            return None
        self._update(lock_holder=result.holder)
        return result.holder

    async def _preflight(self, loaded: LoadedRunbook) -> FailoverPlan:
        runbook = loaded.runbook
        target = self._request.target
        target_address = runbook.regions[target].address

        async def observe() -> tuple[DnsChangePlan, HealthProbeResults, ReplicationStatus | None, str]:
            dns_plan, health = await asyncio.gather(
                self._activity(
                    plan_dns_change,
                    PlanDnsChangeRequest(dns=runbook.dns, target_address=target_address),
                    f"plan DNS {runbook.dns.record} → {target_address}",
                ),
                self._probe_target(runbook, target),
            )
            source = _serving_region(runbook, dns_plan, target)
            replication = None
            if runbook.database is not None and source != target:
                replication = await self._activity(
                    database.measure_replication,
                    database.ReplicationRequest(database=runbook.database, primary=source, standby=target),
                    f"measure replication {source} → {target}",
                )
            return dns_plan, health, replication, source

        dns_plan, health, replication, source = await self._step("preflight", observe)
        self._update(source=source)
        problems, warnings = _preflight_findings(runbook, target, dns_plan, health, replication)
        database_plan = (
            None
            if runbook.database is None or replication is None
            else DatabasePlan(
                provider=runbook.database.provider, source=source, target=target, replication=replication
            )
        )
        plan = FailoverPlan(
            service=runbook.service,
            mode=self._request.mode,
            source=source,
            target=target,
            target_address=target_address,
            dns=dns_plan,
            database=database_plan,
            target_health=health.results,
            rto=runbook.objectives.rto,
            rpo=runbook.objectives.rpo,
            warnings=warnings,
            checksum=plan_checksum(
                runbook.service, self._request.mode, source, target, dns_plan, database_plan
            ),
        )
        self._update(plan=plan)
        if problems:
            raise _Ended("not-ready", "; ".join(problems))
        if source == target and dns_plan.no_op:
            raise _Ended("no-op", f"{runbook.service} already runs in {target}: DNS answers {target_address}")
        return plan

    async def _probe_target(self, runbook: Runbook, target: str) -> HealthProbeResults:
        probes = _probes(runbook, target, serving=False)
        results: HealthProbeResults = await self._activity(
            probe_health,
            HealthProbeRequest(probes=probes),
            f"health of {target}",
            timeout=probe_budget(probes),
        )
        return results

    # --------------------------------------------------------------------------------------- approvals
    async def _gate(self, gate: Gate, plan: FailoverPlan, *, always: bool = False) -> None:
        runbook = self._require_runbook()
        approvals = runbook.approvals
        if gate not in approvals.gates and not always:
            return
        if self._request.mode == "emergency" and gate in approvals.skip_in_emergency:
            self._record_approval(
                ApprovalRecord(
                    gate=gate, decision="skipped-in-emergency", by=None, at=workflow.now(), channel=None,
                    reason="the runbook lets an emergency failover pass this gate",
                    plan_checksum=plan.checksum,
                )
            )  # fmt: skip
            return
        opened = workflow.now()
        self._gate_answer = None
        self._update(open_gate=gate)
        workflow.upsert_search_attributes([STEP_ATTR.value_set("awaiting-approval")])
        self._show(render_report(self._report))
        try:
            await workflow.wait_condition(lambda: self._gate_answer is not None, timeout=approvals.timeout)
        except TimeoutError:
            self._gate_answer = ApprovalRecord(
                gate=gate, decision="expired", by=None, at=workflow.now(), channel=None,
                reason=f"nobody answered within {approvals.timeout}", plan_checksum=plan.checksum,
            )  # fmt: skip
        answer = self._gate_answer
        assert answer is not None
        self._record_approval(answer)
        self._update(
            open_gate=None,
            approval_wait_seconds=self._report.approval_wait_seconds
            + (workflow.now() - opened).total_seconds(),
        )
        if answer.decision == "expired":
            raise _Ended("expired", f"the {gate} gate expired: nobody approved within {approvals.timeout}")
        if answer.decision == "rejected":
            raise _Ended("rejected", f"{answer.by} rejected the {gate} gate: {answer.reason}")

    @workflow.update
    async def approve(self, answer: ApprovalInput) -> UpdateOutcome:
        return self._answer_gate(answer, "approved")

    @approve.validator
    def _validate_approve(self, answer: ApprovalInput) -> None:
        gate = self._check_gate_answer(answer)
        if gate == "data-loss":
            raise ValueError("this gate accepts data loss: send accept_data_loss (with a reason) to pass it")

    @workflow.update
    async def reject(self, answer: ApprovalInput) -> UpdateOutcome:
        return self._answer_gate(answer, "rejected")

    @reject.validator
    def _validate_reject(self, answer: ApprovalInput) -> None:
        self._check_gate_answer(answer)

    @workflow.update
    async def accept_data_loss(self, answer: ApprovalInput) -> UpdateOutcome:
        return self._answer_gate(answer, "data-loss-accepted")

    @accept_data_loss.validator
    def _validate_accept_data_loss(self, answer: ApprovalInput) -> None:
        gate = self._check_gate_answer(answer)
        if gate != "data-loss":
            raise ValueError(f"the open gate is {gate!r}, not data-loss: send approve")
        if not answer.reason.strip():
            raise ValueError("accepting data loss needs a reason; it is kept in the audit record")

    def _check_gate_answer(self, answer: ApprovalInput) -> Gate:
        gate = self._report.open_gate
        if gate is None:
            raise ValueError(f"no approval is pending for this run (it is {self._where()})")
        if answer.gate is not None and answer.gate != gate:
            raise ValueError(f"the open gate is {gate!r}, not {answer.gate!r}")
        self._check_person(answer.approver, "approve")
        plan = self._report.plan
        if (
            answer.plan_checksum is not None
            and plan is not None
            and answer.plan_checksum != plan.checksum[: len(answer.plan_checksum)]
        ):
            raise ValueError(
                "the plan changed since you saw it: read the current plan (drflow status) and approve again"
            )
        return gate

    def _check_person(self, who: str, action: str) -> None:
        runbook = self._require_runbook()
        allowed = list(runbook.approvals.approvers)
        if runbook.approvals.slack is not None:
            allowed += runbook.approvals.slack.approvers
        if who not in allowed:
            raise ValueError(
                f"{who} is not an approver for {runbook.service} (approvers: {', '.join(allowed)})"
            )
        if (
            action == "approve"
            and runbook.approvals.separation_of_duties
            and self._request.requested_by is not None
            and who == self._request.requested_by
        ):
            raise ValueError(f"separation of duties: {who} requested this failover and cannot approve it")

    def _answer_gate(self, answer: ApprovalInput, decision: Any) -> UpdateOutcome:
        gate = self._report.open_gate
        assert gate is not None
        plan = self._report.plan
        self._gate_answer = ApprovalRecord(
            gate=gate, decision=decision, by=answer.approver, at=workflow.now(), channel=answer.channel,
            reason=answer.reason, plan_checksum=plan.checksum if plan else None,
        )  # fmt: skip
        return UpdateOutcome(accepted=True, message=f"{gate} gate {decision} by {answer.approver}")

    # ---------------------------------------------------------------------------------- step failures
    @workflow.update
    async def decide(self, decision: DecisionInput) -> UpdateOutcome:
        step = self._report.waiting_step
        assert step is not None
        self._decision = DecisionRecord(
            step=step, error=self._last_error(), decision=decision.decision, by=decision.operator,
            at=workflow.now(), channel=decision.channel, reason=decision.reason,
        )  # fmt: skip
        return UpdateOutcome(accepted=True, message=f"{decision.decision} of {step} by {decision.operator}")

    @decide.validator
    def _validate_decide(self, decision: DecisionInput) -> None:
        step = self._report.waiting_step
        if step is None:
            raise ValueError(f"no step is waiting for a decision (the run is {self._where()})")
        self._check_person(decision.operator, "decide")
        if decision.decision == "skip" and not self._skippable:
            raise ValueError(f"{step} cannot be skipped: retry or abort")

    @workflow.query
    def status(self) -> FailoverReport:
        return self._report

    async def _step(
        self, name: str, action: Callable[[], Awaitable[T]], detail: Callable[[T], str] | None = None
    ) -> T:
        """Run a step that cannot be skipped; on failure an operator retries or aborts it."""
        result = await self._optional_step(name, action, detail)
        assert result is not None, f"{name} is not skippable"
        return result

    async def _optional_step(
        self, name: str, action: Callable[[], Awaitable[T]], detail: Callable[[T], str] | None = None
    ) -> T | None:
        """Run a step; on failure wait for an operator: retry, skip (where allowed: None) or abort."""
        attempts = 0
        while True:
            attempts += 1
            self._set_step(StepRecord(name=name, started_at=workflow.now(), attempts=attempts))
            try:
                result = await action()
            except ActivityError as err:
                message = _failure_message(err)
                self._finish_step(name, "failed", error=message)
                decision = await self._await_decision(name, message)
                if decision == "retry":
                    continue
                if decision == "skip":
                    self._finish_step(name, "skipped", error=message)
                    return None
                raise _Ended("aborted", f"{name} failed and was aborted: {message}") from None
            self._finish_step(name, "ok", detail=detail(result) if detail else "")
            return result

    async def _await_decision(self, step: str, error: str) -> str:
        runbook = self._require_runbook()
        self._decision = None
        self._skippable = step in SKIPPABLE_STEPS
        self._update(waiting_step=step)
        self._show(render_report(self._report))
        try:
            await workflow.wait_condition(
                lambda: self._decision is not None, timeout=runbook.approvals.timeout
            )
        except TimeoutError:
            self._decision = DecisionRecord(
                step=step, error=error, decision="expired", by=None, at=workflow.now(), channel=None,
                reason=f"no decision within {runbook.approvals.timeout}: aborting",
            )  # fmt: skip
        record = self._decision
        assert record is not None
        self._update(waiting_step=None, decisions=[*self._report.decisions, record])
        return "abort" if record.decision == "expired" else record.decision

    # ------------------------------------------------------------------------------------ the changes
    async def _fence(self, plan: FailoverPlan) -> None:
        runbook = self._require_runbook()
        db = runbook.database
        assert db is not None and plan.database is not None
        mode = self._request.mode
        fence: FenceResult = await self._step(
            f"fence {plan.source}",
            lambda: self._activity(
                database.fence,
                database.DatabaseFenceRequest(database=db, region=plan.source, mode=mode),
                f"fence {plan.source} ({mode})",
            ),
            lambda r: (
                f"{r.method}, final LSN {r.final_lsn or 'unknown'}"
                + ("" if r.fenced else f"; NOT fenced: {'; '.join(r.errors)}")
            ),
        )
        self._update(fence=fence)
        wait = REPLAY_WAIT_EMERGENCY if mode == "emergency" else REPLAY_WAIT_PLANNED
        replay: WaitForReplayResult | None = None
        if fence.final_lsn is not None:
            final_lsn = fence.final_lsn
            replayed = await self._step(
                f"wait for {plan.target} to replay {final_lsn}",
                lambda: self._activity(
                    database.wait_for_replay,
                    database.ReplayRequest(
                        database=db,
                        region=plan.target,
                        position=final_lsn,
                        timeout_seconds=wait.total_seconds(),
                    ),
                    f"wait for {plan.target} to replay up to {final_lsn}",
                    timeout=wait + timedelta(seconds=30),
                    heartbeat=True,
                ),
                _describe_replay,
            )
            replay = replayed
            self._update(replay=replay)
        if mode != "emergency" and (replay is None or not replay.reached):
            await self._unfence_and_end(
                plan, "the standby did not replay the fenced primary's last write in time"
            )
        window = await self._data_loss_window(plan, fence, replay)
        self._update(data_loss=window)
        if not window.within_rpo:
            self._note(f"RPO guard: {window.basis}")
            await self._gate("data-loss", plan, always=True)

    async def _data_loss_window(
        self, plan: FailoverPlan, fence: FenceResult, replay: WaitForReplayResult | None
    ) -> DataLossWindow:
        rpo = plan.rpo.total_seconds()
        if fence.final_lsn is not None and replay is not None and replay.reached:
            return DataLossWindow(
                zero_proven=True, bytes=0, seconds=0.0, within_rpo=True,
                basis=f"{plan.target} replayed {replay.replay_lsn}, at or past the fenced primary's final "
                f"LSN {fence.final_lsn}",
            )  # fmt: skip
        db = self._require_runbook().database
        assert db is not None
        status = await self._activity(
            database.measure_replication,
            database.ReplicationRequest(database=db, primary=plan.source, standby=plan.target),
            f"measure what {plan.target} lacks",
        )
        lost_bytes = None
        if fence.final_lsn is not None and status.standby_replay_lsn is not None:
            lost_bytes = max(lsn_diff(fence.final_lsn, status.standby_replay_lsn), 0)
        elif status.lag_bytes is not None:
            lost_bytes = status.lag_bytes
        seconds = status.lag_seconds
        within = seconds is not None and seconds <= rpo and lost_bytes is not None
        basis = (
            f"{plan.target} lacks {lost_bytes if lost_bytes is not None else 'an unknown amount of'} bytes"
            f" ({f'{seconds:.1f}s' if seconds is not None else 'age unknown'}) of {plan.source}'s WAL; "
            f"RPO {rpo:g}s"
        )
        return DataLossWindow(
            zero_proven=False, bytes=lost_bytes, seconds=seconds, within_rpo=within, basis=basis
        )

    async def _promote(self, plan: FailoverPlan) -> None:
        db = self._require_runbook().database
        assert db is not None
        promotion = await self._step(
            f"promote {plan.target}",
            lambda: self._activity(
                database.promote,
                database.DatabasePromoteRequest(database=db, region=plan.target),
                f"promote {plan.target}",
                timeout=timedelta(seconds=120),
            ),
            lambda r: (
                ("already primary" if r.already_primary else f"promoted at {r.replay_lsn_at_promotion}")
                + f", timeline {r.timeline}, writable {r.writable}"
            ),
        )
        self._update(promotion=promotion)

    async def _cut_over_dns(self, plan: FailoverPlan) -> None:
        runbook = self._require_runbook()
        change: DnsChangeResult = await self._step(
            f"cut DNS over to {plan.target_address}",
            lambda: self._activity(
                apply_dns_change,
                ApplyDnsChangeRequest(dns=runbook.dns, plan=plan.dns),
                f"{runbook.dns.provider}: {runbook.dns.record} → {plan.target_address}",
            ),
            lambda r: (
                f"{', '.join(r.before.values) or '-'} → {', '.join(r.after.values)}"
                + ("" if r.applied else " (already in place)")
            ),
        )
        self._update(dns_change=change)

    async def _verify_propagation(self, plan: FailoverPlan) -> None:
        runbook = self._require_runbook()
        dns = runbook.dns
        budget = dns.propagation_budget
        query = DnsQuery(record=dns.record, type=dns.type, zone=dns.zone, nameservers=dns.nameservers)
        result = await self._optional_step(
            "verify propagation",
            lambda: self._activity(
                verify_propagation,
                PropagationRequest(
                    query=query, expected=[plan.target_address], timeout_seconds=budget.total_seconds()
                ),
                f"every authoritative nameserver answers {plan.target_address}",
                timeout=budget + timedelta(seconds=30),
                heartbeat=True,
            ),
            _describe_propagation,
        )
        self._update(propagation=result)

    async def _wait_out_old_ttl(self, plan: FailoverPlan) -> None:
        ttl = plan.dns.current.ttl or self._require_runbook().dns.ttl
        started = workflow.now()
        self._set_step(StepRecord(name=f"wait out the old TTL ({ttl}s)", started_at=started))
        await workflow.sleep(timedelta(seconds=ttl), summary="resolvers may serve the old answer this long")
        self._finish_step(f"wait out the old TTL ({ttl}s)", "ok", detail="clients moved")
        self._update(ttl_wait_seconds=(workflow.now() - started).total_seconds())

    async def _validate_health(self, plan: FailoverPlan) -> None:
        runbook = self._require_runbook()
        checks = {c.name: c for c in runbook.checks_for(plan.target)}
        probes = [
            ValidatedProbe(probe=p, consecutive_successes=checks[p.check].consecutive_successes,
                           interval=checks[p.check].interval)
            for p in _probes(runbook, plan.target, serving=True)
        ]  # fmt: skip
        budget = max(runbook.health_minimum * 3, timedelta(seconds=30))
        result = await self._optional_step(
            "validate health",
            lambda: self._activity(
                validate_health,
                HealthValidationRequest(probes=probes, timeout=budget),
                f"{len(probes)} health checks on {plan.target}, consecutive successes",
                timeout=budget + timedelta(seconds=30),
                heartbeat=True,
            ),
            _describe_health,
        )
        self._update(health=result)

    # ----------------------------------------------------------------------------------- compensation
    async def _unfence_and_end(self, plan: FailoverPlan, why: str) -> NoReturn:
        await self._compensate(plan)
        raise _Ended("aborted", why)

    async def _compensate(self, plan: FailoverPlan) -> None:
        """Fenced but not promoted: giving the old primary its service back is safe and is done at once."""
        db = self._require_runbook().database
        fence = self._report.fence
        if db is None or fence is None or not fence.fenced or self._report.promotion is not None:
            return
        try:
            result = await self._activity(
                database.unfence,
                database.DatabaseUnfenceRequest(database=db, region=plan.source),
                f"compensate: unfence {plan.source}",
            )
        except ActivityError as err:
            self._note(f"could not unfence {plan.source}: {_failure_message(err)}")
            return
        self._update(compensation=result)
        self._note(f"compensated: {plan.source} serves again ({'; '.join(result.actions)})")

    async def _end_early(self, ended: _Ended) -> None:
        plan = self._report.plan
        if plan is not None and ended.outcome in ("aborted", "rejected", "expired"):
            await self._compensate(plan)
            if self._report.fence is not None:
                self._update(final_state=await self._final_state(plan))
        self._note(str(ended))
        self._finish(ended.outcome)

    async def _final_state(self, plan: FailoverPlan) -> FinalState:
        runbook = self._require_runbook()
        notes: list[str] = []
        dns_state: DnsReadout | None = None
        replication: ReplicationStatus | None = None
        dns = runbook.dns
        try:
            dns_state = await self._activity(
                read_dns_record,
                DnsQuery(record=dns.record, type=dns.type, zone=dns.zone, nameservers=dns.nameservers),
                "final state: DNS",
            )
        except ActivityError as err:
            notes.append(f"DNS could not be read: {_failure_message(err)}")
        if runbook.database is not None:
            try:
                replication = await self._activity(
                    database.measure_replication,
                    database.ReplicationRequest(
                        database=runbook.database, primary=plan.source, standby=plan.target
                    ),
                    "final state: databases",
                )
            except ActivityError as err:
                notes.append(f"databases could not be read: {_failure_message(err)}")
        return FinalState(dns=dns_state, replication=replication, notes=notes)

    async def _release_lock(self, service: str) -> None:
        if not self._holds_lock:
            return
        info = workflow.info()
        try:
            await workflow.get_external_workflow_handle(lock_id(service)).signal(
                "release", ReleaseRequest(workflow_id=info.workflow_id, run_id=info.run_id)
            )
        except FailureError as err:  # the lock run is gone (terminated by hand): nothing to release
            self._note(f"lock release: {err.message}")

    # ---------------------------------------------------------------------------------------- helpers
    async def _activity(
        self,
        activity: Callable[..., Any],
        arg: Any,
        summary: str,
        *,
        timeout: timedelta = timedelta(seconds=60),
        heartbeat: bool = False,
        retry: RetryPolicy = INFRA_RETRY,
    ) -> Any:
        return await workflow.execute_activity(
            activity,
            arg,
            start_to_close_timeout=timeout,
            heartbeat_timeout=HEARTBEAT if heartbeat else None,
            retry_policy=retry,
            summary=summary,
        )

    def _require_runbook(self) -> Runbook:
        assert self._runbook is not None, "the runbook is loaded before any step"
        return self._runbook

    def _update(self, **changes: Any) -> None:
        self._report = self._report.model_copy(update=changes)

    def _note(self, message: str) -> None:
        self._update(messages=[*self._report.messages, message])

    def _record_approval(self, record: ApprovalRecord) -> None:
        self._update(approvals=[*self._report.approvals, record])

    def _set_step(self, record: StepRecord) -> None:
        """Start a step; a retry replaces the failed record of the same step."""
        steps = [s for s in self._report.steps if not (s.name == record.name and s.outcome == "failed")]
        self._update(steps=[*steps, record])
        self._show(render_report(self._report))

    def _finish_step(self, name: str, outcome: Any, detail: str = "", error: str | None = None) -> None:
        """Close the latest record of the step (a retried step keeps one record, with its attempt count)."""
        steps = list(self._report.steps)
        index = max(i for i, s in enumerate(steps) if s.name == name)
        steps[index] = steps[index].model_copy(
            update={"finished_at": workflow.now(), "outcome": outcome, "detail": detail, "error": error}
        )
        self._update(steps=steps)
        self._show(render_report(self._report))

    def _finish(self, outcome: Outcome) -> None:
        now = workflow.now()
        rto = (now - self._report.started_at).total_seconds() if outcome == "completed" else None
        self._update(
            outcome=outcome, finished_at=now, achieved_rto_seconds=rto, open_gate=None, waiting_step=None
        )
        self._show(render_report(self._report))

    def _show(self, markdown: str) -> None:
        workflow.set_current_details(markdown)

    def _where(self) -> str:
        running = [s.name for s in self._report.steps if s.outcome == "running"]
        if self._report.outcome != "running":
            return f"finished: {self._report.outcome}"
        return f"at step {running[-1]}" if running else "between steps"

    def _last_error(self) -> str:
        failed = [s.error for s in self._report.steps if s.error]
        return failed[-1] if failed else ""


def _probes(runbook: Runbook, region: str, serving: bool) -> list[HealthProbe]:
    spec = runbook.regions[region]
    return [
        HealthProbe(
            region=region, check=c.name, url=render_url(c, region, spec), http=c.http, timeout=c.timeout
        )
        for c in runbook.checks_for(region, serving=serving)
    ]


def _serving_region(runbook: Runbook, dns_plan: DnsChangePlan, target: str) -> str:
    """The region whose address DNS serves now; the runbook's primary when the answer matches none."""
    for name, region in runbook.regions.items():
        if dns_plan.current.values == [region.address]:
            return name
    return runbook.primary if runbook.primary != target else target


def _preflight_findings(
    runbook: Runbook,
    target: str,
    dns_plan: DnsChangePlan,
    health: HealthProbeResults,
    replication: ReplicationStatus | None,
) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    warnings: list[str] = []
    failing = [f"{r.check} ({r.error})" for r in health.results if not r.ok]
    if failing:
        problems.append(f"target {target} fails its health checks: {', '.join(failing)}")
    if not dns_plan.current.values:
        warnings.append(f"{dns_plan.record} has no {dns_plan.type} record today")
    elif not any(dns_plan.current.values == [r.address] for r in runbook.regions.values()):
        warnings.append(
            f"{dns_plan.record} answers {', '.join(dns_plan.current.values)}, which is no region's address"
        )
    ttl = dns_plan.current.ttl
    if ttl is not None:
        budget = timedelta(seconds=ttl) + runbook.dns.propagation_budget + runbook.health_minimum
        if budget > runbook.objectives.rto:
            warnings.append(
                f"served TTL {ttl}s + propagation budget + health minimum = {budget} exceeds the RTO "
                f"{runbook.objectives.rto}: clients may take longer than the objective"
            )
    if replication is not None:
        if not replication.standby_reachable:
            problems.append(f"the {target} database cannot be reached: {'; '.join(replication.errors)}")
        elif (
            replication.primary_reachable
            and replication.primary_in_recovery is False
            and (replication.standby_in_recovery is False)
        ):
            problems.append(
                f"both {replication.primary_region} and {target} databases accept writes (split brain): "
                "resolve by hand before failing over"
            )
        if (
            replication.lag_seconds is not None
            and replication.lag_seconds > runbook.objectives.rpo.total_seconds()
        ):
            warnings.append(
                f"replication lag {replication.lag_seconds:.1f}s exceeds the RPO {runbook.objectives.rpo}"
            )
    return problems, warnings


def _describe_replay(result: WaitForReplayResult) -> str:
    return f"replayed {result.replay_lsn} in {result.waited_ms:.0f} ms" if result.reached else "not reached"


def _describe_propagation(result: PropagationResult) -> str:
    return ", ".join(f"{n.name} {n.converged_after_ms or 0:.0f} ms" for n in result.nameservers)


def _describe_health(result: HealthValidationResult) -> str:
    return ", ".join(f"{c.check} {c.required}x in {c.passed_after_ms or 0:.0f} ms" for c in result.checks)


def _failure_message(err: ActivityError) -> str:
    cause = err.cause
    while cause is not None and not isinstance(cause, ApplicationError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause or err)


__all__ = ["FailoverWorkflow", "render_plan"]
