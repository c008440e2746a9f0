"""What every drflow run that changes things shares: the service lock, approval gates, operator decisions.

A mixin for the Failover and Failback workflows. Approvals and decisions arrive as Updates whose validators
refuse bad input before anything changes; steps that fail wait for a person instead of failing the run.
Subclasses provide ``kind``, ``skippable_steps``, ``_render()`` and set ``_report``, ``_runbook`` and
``_requested_by`` in their ``__init__`` (through ``_init_control``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.approvals.requests import ExpectedRequest
    from activities.approvals.signatures import Binding, GateDecision
    from activities.runbook import LoadedPeople, LoadPeopleRequest, RunbookActivities
    from activities.search_attributes import STEP_ATTR
    from activities.service_lock import AcquireLockRequest, LockHolder, ReleaseRequest, ServiceLockActivities
    from activities.service_lock import lock_workflow_id as lock_id
    from activities.slack.models import GateFacts
    from runbooks.model import SLACK_USER_PATTERN, Gate, Runbook
    from runbooks.people import PeopleSnapshot
    from workflows.approval_rules import (
        Answerer,
        check_may_answer,
        group_members,
        identify,
        open_quorum,
        unsigned_policy,
        verify_requester,
    )
    from workflows.common import INFRA_RETRY
    from workflows.failover_models import (
        ApprovalInput,
        ApprovalRecord,
        DecisionInput,
        DecisionRecord,
        Outcome,
        RunReport,
        StepRecord,
        UpdateOutcome,
    )
    from workflows.slack_facts import decision_facts, gate_facts
    from workflows.slack_mirror import DECISIONS_PATCH, SLACK_PATCH, GateView, SlackMirror

T = TypeVar("T")
R = TypeVar("R", bound=RunReport)
HEARTBEAT = timedelta(seconds=10)
# After promotion an unanswered decision keeps waiting instead of expiring into an abort.
FORWARD_PATCH = "forward-after-promotion"
# The people file: verified approvers, signed requests, quorum (docs/approvals.md).
PEOPLE_PATCH = "verified-approvers"
# A gate reloads the people file (a revoked key stops counting) unless the run loaded it this recently.
PEOPLE_FRESH = timedelta(minutes=1)
GATE_DECISIONS: dict[str, GateDecision] = {
    "approve": "approve", "reject": "reject", "accept_data_loss": "accept-data-loss"
}  # fmt: skip


class Ended(Exception):
    """Stops the run with an outcome; steps already done stay done and are reported."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


class ControlledRun(Generic[R]):
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

    async def _admit_requester(self, request: Any, **where: str | None) -> None:
        """Load the people file and verify who asked; under a strict runbook an unverified request either
        raises every gate to two people or is refused here, before anything changes.

        ``request`` is the run's input (service, reason, requested_by, signed, signature); ``where`` what
        else the signed request binds (target or home, and the mode).
        """
        if not workflow.patched(PEOPLE_PATCH):
            return
        expected = ExpectedRequest(
            kind=self.kind, workflow_id=workflow.info().workflow_id, service=request.service,
            reason=request.reason, person=(request.requested_by or "").casefold(), **where,
        )  # fmt: skip
        signed, signature = request.signed, request.signature
        await self._load_people(first=True)
        snapshot = self._people
        if snapshot is None:
            if signed is not None:
                self._note("the request is signed, but the runbook uses no people file: it is not verified")
            return
        record, problem = verify_requester(
            snapshot=snapshot, expected=expected, signed=signed, signature=signature, now=workflow.now()
        )
        self._update(requester=record)
        if problem is not None:
            self._note(problem)
        approvals = self._require_runbook().approvals
        if record.identity != "unverified" or unsigned_policy(approvals) == "record":
            return
        if approvals.unverified_requester == "refuse":
            raise Ended(
                "refused",
                f"this runbook requires a signed request: start it with drflow {self.kind} ... --as <you> "
                "(signs with your SSH key)" + (f"; {problem}" if problem else ""),
            )
        self._two_person = True
        self._note(
            "the request is not signed, so nobody is proven to have asked: every gate needs two distinct "
            "verified approvers (two-person rule)"
        )

    async def _load_people(self, *, first: bool = False) -> None:
        """The people file as the next gate uses it, pinned in the history with its digest.

        At the run's start a file that cannot be used refuses the run; later, the last good snapshot stays
        (with a note), so a broken edit cannot strand a run that already changed things.
        """
        now = workflow.now()
        if not first and (
            self._people is None
            or (self._people_loaded_at is not None and now - self._people_loaded_at < PEOPLE_FRESH)
        ):
            return
        runbook = self._require_runbook()
        try:
            loaded: LoadedPeople = await workflow.execute_activity_method(
                RunbookActivities.load_people,
                LoadPeopleRequest(service=runbook.service, approvals=runbook.approvals),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=INFRA_RETRY,
                summary="load the people file",
            )
        except ActivityError as err:
            if first:
                raise Ended("refused", failure_message(err)) from None
            self._note(f"the people file could not be reloaded, the snapshot of the last gate stays: {err}")
            return
        if loaded.snapshot is None and not first:
            self._note("the people file is gone; the snapshot of the last gate stays")
            return
        self._people = loaded.snapshot
        self._people_loaded_at = now

    async def _gate(self, gate: Gate, checksum: str | None, *, always: bool = False) -> None:
        """Wait for a person to pass the gate; expiry and rejection end the run (``Ended``)."""
        runbook = self._require_runbook()
        approvals = runbook.approvals
        if gate not in approvals.gates and not always:
            return
        if self._emergency() and gate in approvals.skip_in_emergency:
            skipped = ApprovalRecord(
                gate=gate, decision="skipped-in-emergency", by=None, at=workflow.now(), channel=None,
                reason="the runbook lets an emergency run pass this gate", plan_checksum=checksum,
            )  # fmt: skip
            self._record_approval(skipped)
            slack = self._slack_mirror()
            if slack is not None:
                slack.gate_skipped(self._slack_gate_facts(gate, checksum), skipped)
            return
        await self._load_people()
        opened = workflow.now()
        self._gate_answer = None
        self._gate_checksum = checksum
        if self._people is not None:
            self._update(quorum=open_quorum(gate, approvals, self._two_person), gate_checksum=checksum)
        self._update(open_gate=gate)
        workflow.upsert_search_attributes([STEP_ATTR.value_set("awaiting-approval")])
        self._show(self._render())
        slack = self._slack_mirror()
        view = (
            None
            if slack is None
            else slack.gate_opened(self._slack_gate_facts(gate, checksum), approvals.timeout)
        )
        try:
            if slack is not None and view is not None and approvals.escalate_after is not None:
                await self._wait_escalating(slack, view)
            else:
                await workflow.wait_condition(
                    lambda: self._gate_answer is not None, timeout=approvals.timeout
                )
        except TimeoutError:
            self._gate_answer = ApprovalRecord(
                gate=gate, decision="expired", by=None, at=workflow.now(), channel=None,
                reason=f"nobody answered within {approvals.timeout}", plan_checksum=checksum,
            )  # fmt: skip
        answer = self._gate_answer
        assert answer is not None
        self._record_approval(answer)
        if slack is not None and view is not None:
            slack.gate_answered(view, answer)
        self._update(
            open_gate=None,
            quorum=None,
            gate_checksum=None,
            approval_wait_seconds=self._report.approval_wait_seconds
            + (workflow.now() - opened).total_seconds(),
        )
        if answer.decision == "expired":
            raise Ended("expired", f"the {gate} gate expired: nobody approved within {approvals.timeout}")
        if answer.decision == "rejected":
            raise Ended("rejected", f"{answer.by} rejected the {gate} gate: {answer.reason}")

    async def _wait_escalating(self, slack: SlackMirror, view: GateView) -> None:
        """Wait for an answer; at ``escalate_after`` re-post in Slack, at ``timeout`` raise TimeoutError."""
        approvals = self._require_runbook().approvals
        assert approvals.escalate_after is not None
        try:
            await workflow.wait_condition(
                lambda: self._gate_answer is not None, timeout=approvals.escalate_after
            )
            return
        except TimeoutError:
            slack.escalate(view, approvals.escalate_after)
        await workflow.wait_condition(
            lambda: self._gate_answer is not None, timeout=approvals.timeout - approvals.escalate_after
        )

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

    @workflow.update
    async def approve(self, answer: ApprovalInput) -> UpdateOutcome:
        return self._answer_gate(answer, "approved")

    @approve.validator
    def _validate_approve(self, answer: ApprovalInput) -> None:
        gate = self._check_gate_answer(answer, "approve")
        if gate == "data-loss":
            raise ValueError("this gate accepts data loss: send accept_data_loss (with a reason) to pass it")
        if gate == "unfenced" and not answer.reason.strip():
            raise ValueError(
                "promoting without a confirmed fence needs a reason (how the old primary was stopped "
                "another way); it is kept in the audit record"
            )
        if gate == "unfenced" and answer.channel == "slack":
            # A button carries no typed reason: the override of a fence is typed, from the CLI or the UI.
            raise ValueError(
                "the unfenced gate cannot be approved from Slack: approve it with a typed reason "
                '(drflow approve <run> --as <you> --reason "how the old primary was stopped")'
            )

    @workflow.update
    async def reject(self, answer: ApprovalInput) -> UpdateOutcome:
        return self._answer_gate(answer, "rejected")

    @reject.validator
    def _validate_reject(self, answer: ApprovalInput) -> None:
        self._check_gate_answer(answer, "reject")

    @workflow.update
    async def accept_data_loss(self, answer: ApprovalInput) -> UpdateOutcome:
        return self._answer_gate(answer, "data-loss-accepted")

    @accept_data_loss.validator
    def _validate_accept_data_loss(self, answer: ApprovalInput) -> None:
        gate = self._check_gate_answer(answer, "accept_data_loss")
        if gate != "data-loss":
            raise ValueError(f"the open gate is {gate!r}, not data-loss: send approve")
        if not answer.reason.strip():
            raise ValueError("accepting data loss needs a reason; it is kept in the audit record")

    def _check_gate_answer(self, answer: ApprovalInput, update: str) -> Gate:
        gate = self._report.open_gate
        if gate is None:
            raise ValueError(f"no approval is pending for this run (it is {self._where()})")
        if answer.gate is not None and answer.gate != gate:
            raise ValueError(f"the open gate is {gate!r}, not {answer.gate!r}")
        earlier = self._gate_answer
        if earlier is not None:  # a second click or command before the run moved on
            by = (
                f"<@{earlier.by}>" if earlier.channel == "slack" and answer.channel == "slack" else earlier.by
            )
            raise ValueError(
                f"the {gate} gate was already answered: {earlier.decision} by {earlier.person or by}"
            )
        checksum = self._gate_checksum
        if self._people is not None:
            self._verified_answerer(answer, update, gate)
            return gate
        self._check_person(answer.approver, "approve")
        if answer.plan_checksum is not None and checksum is not None and answer.plan_checksum != checksum:
            if checksum.startswith(answer.plan_checksum):
                raise ValueError(
                    f"give the whole plan checksum, not a prefix: the plan you approve is {checksum}"
                )
            raise ValueError(
                f"the plan changed since you saw it: the current plan is {checksum}; read it (drflow status) "
                "and approve again"
            )
        return gate

    def _verified_answerer(self, answer: ApprovalInput, update: str, gate: Gate) -> Answerer:
        """Who answers the open gate, proven by signature or attestation (or recorded unverified)."""
        snapshot = self._people
        assert snapshot is not None
        runbook = self._require_runbook()
        checksum = self._gate_checksum
        if answer.signed is None and checksum is not None and answer.plan_checksum != checksum:
            if answer.plan_checksum is None:
                raise ValueError(
                    f"an approval must carry the full checksum of the plan it approves: {checksum} "
                    "(drflow status shows the plan)"
                )
            if checksum.startswith(answer.plan_checksum):
                raise ValueError(
                    f"give the whole plan checksum, not a prefix: the current plan is {checksum}"
                )
            raise ValueError(
                f"the plan changed since you saw it (you sent {answer.plan_checksum}): the current plan is "
                f"{checksum}; read it (drflow status) and answer again"
            )
        decision: GateDecision = GATE_DECISIONS[update]
        info = workflow.info()
        answerer = identify(
            snapshot=snapshot, approvals=runbook.approvals, claim=answer.approver, channel=answer.channel,
            signed=answer.signed, signature=answer.signature, now=workflow.now(), update=update,
            bound=Binding(
                workflow_id=info.workflow_id, run_id=info.run_id, decision=decision,
                gate=gate, plan_checksum=checksum,
            ),
        )  # fmt: skip
        self._may_answer(answerer, approving=update != "reject")
        return answerer

    def _may_answer(self, answerer: Answerer, *, approving: bool) -> None:
        snapshot = self._people
        assert snapshot is not None
        requester = self._report.requester
        check_may_answer(
            answerer, approvals=self._require_runbook().approvals, people=snapshot.people,
            slack_members=self._slack.members if self._slack is not None else None,
            excluded=self._excluded_approvers, requester=requester.person if requester else None,
            kind=self.kind, approving=approving, quorum=self._report.quorum,
        )  # fmt: skip

    def _check_person(self, who: str, action: str) -> None:
        """An approver listed in the runbook (or in its Slack user group), and not the requester.

        Separation of duties compares people: ``approvals.slack.identities`` maps a Slack user id to the name
        the same person uses in the CLI and the Web UI. A Slack user id is answered in the second person,
        because the gateway shows the message to the person who clicked.
        """
        if who in self._excluded_approvers:
            raise ValueError(f"{who} is unavailable in this drill's scenario: someone else must answer")
        runbook = self._require_runbook()
        slack = runbook.approvals.slack
        allowed = list(runbook.approvals.approvers)
        if slack is not None:
            allowed += slack.approvers
        members = self._slack.members if self._slack is not None else None
        in_slack = slack is not None and re.fullmatch(SLACK_USER_PATTERN, who) is not None
        if who not in allowed and (members is None or who not in members):
            raise ValueError(self._not_an_approver(who, in_slack, allowed))
        if (
            action == "approve"
            and runbook.approvals.separation_of_duties
            and self._requested_by is not None
            and self._same_person(who, self._requested_by)
        ):
            if in_slack:
                raise ValueError(
                    f"separation of duties: you requested this {self.kind} and cannot approve it"
                )
            raise ValueError(f"separation of duties: {who} requested this {self.kind} and cannot approve it")

    def _same_person(self, one: str, other: str) -> bool:
        """Without a people file: names compare without letter case, Slack ids through ``identities``."""
        slack = self._require_runbook().approvals.slack
        identities = slack.identities if slack is not None else {}
        return identities.get(one, one).casefold() == identities.get(other, other).casefold()

    def _not_an_approver(self, who: str, in_slack: bool, allowed: list[str]) -> str:
        runbook = self._require_runbook()
        slack = runbook.approvals.slack
        group = slack.usergroup if slack is not None else None
        lookup = ""
        if group is not None and (self._slack is None or self._slack.members is None):
            problem = self._slack.lookup_problem if self._slack is not None else None
            lookup = (
                f"; the members of the user group could not be looked up ({problem})"
                if problem
                else "; the members of the user group are still being looked up, try again in a moment"
            )
        if in_slack and slack is not None:
            people = [f"<@{user}>" for user in slack.approvers]
            if group is not None:
                people.append(f"members of <!subteam^{group}>")
            listed = ", ".join(people) or "nobody in Slack: approve through the CLI"
            return f"you are not an approver for {runbook.service} (approvers: {listed}){lookup}"
        listed = ", ".join(allowed) + (f", members of Slack user group {group}" if group else "")
        return f"{who} is not an approver for {runbook.service} (approvers: {listed}){lookup}"

    def _answer_gate(self, answer: ApprovalInput, decision: Any) -> UpdateOutcome:
        gate = self._report.open_gate
        assert gate is not None
        if self._people is None:
            self._gate_answer = ApprovalRecord(
                gate=gate, decision=decision, by=answer.approver, at=workflow.now(), channel=answer.channel,
                reason=answer.reason, plan_checksum=self._gate_checksum,
            )  # fmt: skip
            return UpdateOutcome(accepted=True, message=f"{gate} gate {decision} by {answer.approver}")
        update = {"approved": "approve", "rejected": "reject", "data-loss-accepted": "accept_data_loss"}
        answerer = self._verified_answerer(answer, update[decision], gate)  # the validator's verdict, again
        record = ApprovalRecord(
            gate=gate, decision=decision, by=answerer.person, at=workflow.now(), channel=answerer.channel,
            reason=answer.reason, plan_checksum=self._gate_checksum,
            **answerer.fields(self._people, answer.signed, answer.signature),
        )  # fmt: skip
        how = "" if answerer.identity != "unverified" else " (identity not verified)"
        quorum = self._report.quorum
        if decision != "rejected" and quorum is not None:
            quorum = quorum.model_copy(update={"approved_by": [*quorum.approved_by, answerer.person]})
            self._update(quorum=quorum)
            missing = quorum.missing(group_members(quorum, self._people.people))
            if missing:  # a vote: recorded now, the gate stays open
                self._record_approval(record)
                if self._slack is not None:
                    self._slack.vote_recorded(record, quorum, missing)
                self._show(self._render())
                return UpdateOutcome(
                    accepted=True,
                    message=f"{gate} gate: {decision} by {answerer.person}{how}; still needed: "
                    + ", ".join(missing),
                )
        self._gate_answer = record
        return UpdateOutcome(accepted=True, message=f"{gate} gate {decision} by {answerer.person}{how}")

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

    def _decider(self, decision: DecisionInput, step: str) -> Answerer:
        snapshot = self._people
        assert snapshot is not None
        info = workflow.info()
        answerer = identify(
            snapshot=snapshot, approvals=self._require_runbook().approvals, claim=decision.operator,
            channel=decision.channel, signed=decision.signed, signature=decision.signature,
            now=workflow.now(), update="decide",
            bound=Binding(
                workflow_id=info.workflow_id, run_id=info.run_id, decision=decision.decision,
                failed_step=step,
            ),
        )  # fmt: skip
        self._may_answer(answerer, approving=False)
        return answerer

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
        self._update(waiting_step=step)
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
                    lambda: self._decision is not None, timeout=runbook.approvals.timeout
                )
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
        self._update(waiting_step=None, decisions=[*self._report.decisions, record])
        return "abort" if record.decision == "expired" else record.decision

    def _slack_for_decisions(self) -> SlackMirror | None:
        """The Slack mirror for a failed step's decision: behind its own ``slack-decisions`` patch.

        A history recorded before it (or a run still open from before) takes the old path: no message, no
        activity. A step failing before the first gate starts the mirror here (``slack-approvals``).
        """
        if self._require_runbook().approvals.slack is None or not workflow.patched(DECISIONS_PATCH):
            return None
        return self._slack_mirror()

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
