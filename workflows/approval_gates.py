"""Approval gates: who may pass them, proven how, and how many must (docs/approvals.md).

A mixin under ``ControlledRun``. Answers arrive as Updates whose validators refuse bad input before anything
changes; with a people file (behind the ``verified-approvers`` patch) an answer counts only as a person:
signed, attested by a trusted Slack gateway, or recorded unverified where the runbook allows it. The rules
themselves are pure, in workflows/approval_rules.py.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.approvals.requests import ExpectedRequest
    from activities.approvals.signatures import SIGNED_ANSWER, UPDATE_OF_RECORD, Binding, GateDecision
    from runbooks.model import SLACK_USER_PATTERN, Gate
    from workflows.approval_rules import (
        Answerer,
        check_may_answer,
        checksum_refusal,
        group_members,
        identify,
        open_quorum,
        remember_shown,
        unsigned_policy,
        verify_requester,
    )
    from workflows.common import load_people
    from workflows.failover_models import (
        ApprovalInput,
        ApprovalRecord,
        DecisionInput,
        RunReport,
        UpdateOutcome,
        gate_wait_summary,
    )
    from workflows.run_state import PEOPLE_PATCH, Ended, RunState, failure_message
    from workflows.slack_mirror import GateView, SlackMirror


R = TypeVar("R", bound=RunReport)
PEOPLE_FRESH = timedelta(minutes=1)  # a gate reloads the people file unless the run loaded it this recently


class ApprovalGates(RunState[R]):
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
            loaded = await load_people(runbook)
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
        if checksum is not None:  # memory only: tells a stale checksum from a wrong one
            self._shown_plans = remember_shown(self._shown_plans, gate, checksum, opened)
        if self._people is not None:
            self._update(quorum=open_quorum(gate, approvals, self._two_person))
        # Every gate names its full checksum, people file or not: the views print it and the answer command.
        self._update(open_gate=gate, waiting_since=opened, gate_checksum=checksum)
        previous = self._tag_waiting("awaiting-approval")
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
                    lambda: self._gate_answer is not None, timeout=approvals.timeout,
                    timeout_summary=self._gate_wait_summary(gate, approvals.timeout),
                )  # fmt: skip
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
        self._untag_waiting(previous)
        self._update(
            open_gate=None,
            waiting_since=None,
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
        gate = self._report.open_gate
        assert gate is not None
        try:
            await workflow.wait_condition(
                lambda: self._gate_answer is not None, timeout=approvals.escalate_after,
                timeout_summary=self._gate_wait_summary(gate, approvals.escalate_after, "re-posted in Slack"),
            )  # fmt: skip
            return
        except TimeoutError:
            slack.escalate(view, approvals.escalate_after)
        rest = approvals.timeout - approvals.escalate_after
        await workflow.wait_condition(
            lambda: self._gate_answer is not None, timeout=rest,
            timeout_summary=self._gate_wait_summary(gate, rest),
        )  # fmt: skip

    def _gate_wait_summary(self, gate: Gate, timeout: timedelta, then: str = "the run ends expired") -> str:
        """User metadata of the gate's timer: replay does not compare it, so changing it needs no patch."""
        return gate_wait_summary(workflow.info().workflow_id, gate, self._gate_checksum, timeout, then)

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
        if answer.plan_checksum is not None and checksum is not None:
            # Before the signature: a signed wrong checksum is wrong (or stale), not a "changed plan".
            refusal = checksum_refusal(answer.plan_checksum, checksum, self._shown_plans)
            if refusal is not None:
                raise ValueError(refusal)
        if self._people is not None:
            self._verified_answerer(answer, update, gate)
            return gate
        self._check_person(answer.approver, "approve")
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
            refusal = checksum_refusal(answer.plan_checksum, checksum, self._shown_plans)
            raise ValueError(refusal or f"the current plan is {checksum}")
        decision: GateDecision = SIGNED_ANSWER[update]
        info = workflow.info()
        answerer = identify(
            snapshot=snapshot, approvals=runbook.approvals, claim=answer.approver, channel=answer.channel,
            signed=answer.signed, signature=answer.signature, now=workflow.now(), update=update,
            shown=self._shown_plans,
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
        # the validator's verdict, reached again from the same history
        answerer = self._verified_answerer(answer, UPDATE_OF_RECORD[decision], gate)
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
