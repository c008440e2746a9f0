"""What every drflow run that changes things shares: the service lock, steps, operator decisions.

A mixin for the Failover and Failback workflows, on top of the approval gates (workflows/approval_gates.py).
Steps that fail wait for a person (the ``decide`` Update) instead of failing the run. Subclasses provide
``kind``, ``skippable_steps``, ``_render()`` and set ``_report``, ``_runbook`` and ``_requested_by`` in their
``__init__`` (through ``_init_control``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.service_lock import AcquireLockRequest, LockHolder, ReleaseRequest, ServiceLockActivities
    from activities.service_lock import lock_workflow_id as lock_id
    from workflows.approval_gates import ApprovalGates
    from workflows.common import HEARTBEAT, INFRA_RETRY
    from workflows.failover_models import (
        DecisionInput,
        DecisionRecord,
        RunReport,
        StepRecord,
        UpdateOutcome,
        decision_wait_summary,
    )
    from workflows.run_state import FORWARD_PATCH, WAIT_ATTR_PATCH, Ended, failure_message
    from workflows.slack_facts import decision_facts


T = TypeVar("T")
R = TypeVar("R", bound=RunReport)

__all__ = ["ControlledRun", "Ended", "failure_message"]


class ControlledRun(ApprovalGates[R]):
    async def _acquire_lock(self, service: str) -> LockHolder | None:
        """Returns the holder when the lock is taken by another run, None when this run holds it."""
        info = workflow.info()
        result = await workflow.execute_activity_method(
            ServiceLockActivities.acquire,
            AcquireLockRequest(
                service=service,
                contender=LockHolder(workflow_id=info.workflow_id, run_id=info.run_id, kind=self.kind),
                task_queue=info.task_queue,
            ),
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=HEARTBEAT,
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

    @workflow.update
    async def decide(self, decision: DecisionInput) -> UpdateOutcome:
        step = self._report.waiting_step
        assert step is not None
        if self._people is None:
            self._decision = DecisionRecord(
                step=step, error=self._last_error(), decision=decision.decision, by=decision.operator,
                at=workflow.now(), channel=decision.channel, reason=decision.reason,
            )  # fmt: skip
            return UpdateOutcome(
                accepted=True, message=f"{decision.decision} of {step} by {decision.operator}"
            )
        answerer = self._decider(decision, step)
        self._decision = DecisionRecord(
            step=step, error=self._last_error(), decision=decision.decision, by=answerer.person,
            at=workflow.now(), channel=answerer.channel, reason=decision.reason,
            **answerer.fields(self._people, decision.signed, decision.signature),
        )  # fmt: skip
        how = "" if answerer.identity != "unverified" else " (identity not verified)"
        return UpdateOutcome(
            accepted=True, message=f"{decision.decision} of {step} by {answerer.person}{how}"
        )

    @decide.validator
    def _validate_decide(self, decision: DecisionInput) -> None:
        step = self._report.waiting_step
        if step is None:
            raise ValueError(f"no step is waiting for a decision (the run is {self._where()})")
        if decision.step is not None and decision.step != step:
            raise ValueError(f"{decision.step!r} is not waiting any more; the run now waits on {step!r}")
        earlier = self._decision
        if earlier is not None:  # a second click or command before the run moved on
            by = (
                f"<@{earlier.by}>"
                if earlier.channel == "slack" and decision.channel == "slack"
                else (earlier.by or "nobody")
            )
            raise ValueError(f"{step} was already decided: {earlier.decision} by {earlier.person or by}")
        if self._people is not None:
            self._decider(decision, step)
        else:
            self._check_person(decision.operator, "decide")
        if decision.decision == "skip" and not self._skippable:
            raise ValueError(f"{step} cannot be skipped: retry or abort")

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
                message = failure_message(err)
                self._finish_step(name, "failed", error=message)
                decision = await self._await_decision(name, message, attempts)
                if decision == "retry":
                    continue
                if decision == "skip":
                    self._finish_step(name, "skipped", error=message)
                    return None
                raise Ended("aborted", f"{name} failed and was aborted: {message}") from None
            self._finish_step(name, "ok", detail=detail(result) if detail else "")
            return result

    async def _await_decision(self, step: str, error: str, attempts: int = 1) -> str:
        runbook = self._require_runbook()
        await self._load_people()
        self._decision = None
        self._skippable = self._is_skippable(step)
        self._update(waiting_step=step, waiting_since=workflow.now())
        previous = self._tag_waiting("awaiting-decision") if workflow.patched(WAIT_ATTR_PATCH) else None
        self._show(self._render())
        slack = self._slack_for_decisions()
        view = (
            None
            if slack is None
            else slack.decision_opened(
                decision_facts(self._report, self.kind, step, error, attempts, self._skippable),
                runbook.approvals.timeout,
            )
        )
        while True:
            try:
                await workflow.wait_condition(
                    lambda: self._decision is not None, timeout=runbook.approvals.timeout,
                    timeout_summary=decision_wait_summary(  # user metadata: no patch
                        workflow.info().workflow_id, step, runbook.approvals.timeout
                    ),
                )  # fmt: skip
                break
            except TimeoutError:
                if self._past_point_of_no_return() and workflow.patched(FORWARD_PATCH):
                    # Aborting now would leave the data moved and the traffic not: keep asking instead.
                    self._note(
                        f"no decision on {step} within {runbook.approvals.timeout}; the database is "
                        "already promoted, so the run does not abort by itself: still waiting for a decision"
                    )
                    self._show(self._render())
                    continue
                self._decision = DecisionRecord(
                    step=step, error=error, decision="expired", by=None, at=workflow.now(), channel=None,
                    reason=f"no decision within {runbook.approvals.timeout}: aborting",
                )  # fmt: skip
                break
        record = self._decision
        assert record is not None
        if slack is not None and view is not None:
            slack.decision_made(view, record)
        self._untag_waiting(previous)
        self._update(waiting_step=None, waiting_since=None, decisions=[*self._report.decisions, record])
        return "abort" if record.decision == "expired" else record.decision

    def _is_skippable(self, step: str) -> bool:
        return step in self.skippable_steps

    def _past_point_of_no_return(self) -> bool:
        """True once the run changed something that an abort would not undo (a promoted database)."""
        return False

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
