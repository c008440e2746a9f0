"""The state every drflow run that changes things keeps, and the helpers that change it.

The base of the run mixins (``ApprovalGates`` in workflows/approval_gates.py, ``ControlledRun`` in
workflows/run_control.py): the report, the runbook, the Slack mirror, step records and the ``Ended``
exception. Subclasses provide ``kind``, ``skippable_steps``, ``_render()`` and call ``_init_control``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.search_attributes import STEP_ATTR
    from activities.slack.models import GateFacts
    from runbooks.model import Gate, Runbook
    from runbooks.people import PeopleSnapshot
    from workflows.approval_rules import ShownPlan
    from workflows.common import HEARTBEAT, INFRA_RETRY
    from workflows.failover_models import (
        ApprovalRecord,
        DecisionRecord,
        Outcome,
        RunReport,
        StepRecord,
    )
    from workflows.slack_facts import gate_facts
    from workflows.slack_mirror import DECISIONS_PATCH, SLACK_PATCH, SlackMirror


T = TypeVar("T")
R = TypeVar("R", bound=RunReport)
# After promotion an unanswered decision keeps waiting instead of expiring into an abort.
FORWARD_PATCH = "forward-after-promotion"
# The people file: verified approvers, signed requests, quorum (docs/approvals.md).
PEOPLE_PATCH = "verified-approvers"
# DrflowStep says "awaiting-decision" while a failed step waits, and gets its value back once a gate or a
# decision is answered (before it, the attribute kept "awaiting-approval" after the promote gate).
WAIT_ATTR_PATCH = "step-attr-while-waiting"


class Ended(Exception):
    """Stops the run with an outcome; steps already done stay done and are reported."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


class RunState(Generic[R]):
    kind: ClassVar[str] = "run"
    skippable_steps: ClassVar[frozenset[str]] = frozenset()

    _report: R

    def _init_control(self, report: R, requested_by: str | None, excluded: list[str] | None = None) -> None:
        self._report = report
        self._requested_by = requested_by
        self._excluded_approvers = frozenset(excluded or ())  # unavailable in a drill scenario
        self._runbook: Runbook | None = None
        self._gate_answer: ApprovalRecord | None = None
        self._gate_checksum: str | None = None
        self._shown_plans: tuple[ShownPlan, ...] = ()  # every plan a gate of this run showed
        self._decision: DecisionRecord | None = None
        self._skippable = False
        self._holds_lock = False
        self._slack: SlackMirror | None = None
        self._people: PeopleSnapshot | None = None  # None: no people file, approvers are unverified strings
        self._people_loaded_at: datetime | None = None
        self._two_person = False

    def _render(self) -> str:
        raise NotImplementedError

    def _emergency(self) -> bool:
        return False

    def _slack_mirror(self) -> SlackMirror | None:
        """The run's Slack mirror, started at its first gate when the runbook names a Slack channel.

        Behind the ``slack-approvals`` patch: a history recorded before it (or a run still open from before)
        takes the old path, without the mirror's activities and timers.
        """
        if self._slack is None:
            runbook = self._require_runbook()
            if runbook.approvals.slack is not None and workflow.patched(SLACK_PATCH):
                self._slack = SlackMirror(runbook, self.kind, lambda: self._report, self._note)
                self._slack.start()
        return self._slack

    def _slack_gate_facts(self, gate: Gate, checksum: str | None) -> GateFacts:
        """What the gate message shows; a run without a move plan can override it.

        A message must never hold a gate up: facts that cannot be rendered leave the plan out, with a note.
        """
        runbook = self._require_runbook()
        requester = self._slack.requester_slack_id(self._requested_by) if self._slack else None
        try:
            return gate_facts(self._report, runbook, self.kind, gate, checksum, requester)
        except Exception as err:  # deterministic (same state, same outcome), so replay-safe
            self._note(f"Slack: the plan could not be shown in the {gate} gate message: {err!r}")
            return gate_facts(self._report, runbook, self.kind, gate, checksum, requester, with_plan=False)

    async def _close_slack(self) -> None:
        """At the end of the run: let Slack show the final state (no-op without a Slack mirror)."""
        if self._slack is not None:
            await self._slack.close()

    def _slack_for_decisions(self) -> SlackMirror | None:
        """The Slack mirror for a failed step's decision: behind its own ``slack-decisions`` patch.

        A history recorded before it (or a run still open from before) takes the old path: no message, no
        activity. A step failing before the first gate starts the mirror here (``slack-approvals``).
        """
        if self._require_runbook().approvals.slack is None or not workflow.patched(DECISIONS_PATCH):
            return None
        return self._slack_mirror()

    async def _activity(
        self,
        activity: Callable[..., Any],
        arg: Any,
        summary: str,
        *,
        timeout: timedelta = timedelta(seconds=60),
        heartbeat: bool = True,
        retry: RetryPolicy = INFRA_RETRY,
    ) -> Any:
        """Every step's activity heartbeats (its own progress, or ``activities.heartbeat`` beside a blocking
        call): a dead worker is noticed after ``HEARTBEAT``, whatever ``timeout`` allows the call itself."""
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
        self._show(self._render())

    def _finish_step(self, name: str, outcome: Any, detail: str = "", error: str | None = None) -> None:
        """Close the latest record of the step (a retried step keeps one record, with its attempt count)."""
        steps = list(self._report.steps)
        index = max(i for i, s in enumerate(steps) if s.name == name)
        steps[index] = steps[index].model_copy(
            update={"finished_at": workflow.now(), "outcome": outcome, "detail": detail, "error": error}
        )
        self._update(steps=steps)
        self._show(self._render())

    def _tag_waiting(self, waiting: str) -> str | None:
        """Set DrflowStep to what the run waits for; returns the value to put back once answered."""
        previous = workflow.info().typed_search_attributes.get(STEP_ATTR)
        workflow.upsert_search_attributes([STEP_ATTR.value_set(waiting)])
        return previous

    def _untag_waiting(self, previous: str | None) -> None:
        """Give DrflowStep its value from before the wait, so a visibility query no longer lists the run."""
        if previous is not None and workflow.patched(WAIT_ATTR_PATCH):
            workflow.upsert_search_attributes([STEP_ATTR.value_set(previous)])

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


def failure_message(err: ActivityError) -> str:
    cause = err.cause
    while cause is not None and not isinstance(cause, ApplicationError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause or err)
