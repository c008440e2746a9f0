"""Mirror a run's approval gates and progress into Slack, without ever holding the run up.

One background task per run makes Slack show the run's state: the gate message (posted when the gate opens,
edited in place when it is answered or expires), an escalation re-post, one thread line per step (edited as
the step finishes) and a final summary. Each change is an activity with bounded retries; a failure is noted
in the report and the run carries on, so approving through the CLI or the Web UI never waits for Slack.

The mirror exists only for runbooks with ``approvals.slack`` and only behind the ``slack-approvals`` patch,
so histories recorded before it (and runs still open from before) replay unchanged. What the messages say
(gate facts, step lines, the summary) is built by the pure functions of ``workflows.slack_facts``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.slack.activities import (
        post_decision,
        post_gate,
        post_summary,
        resolve_approvers,
        sync_progress,
        update_decision,
        update_gate,
    )
    from activities.slack.client import FATAL_ERRORS, NON_RETRYABLE_ERRORS
    from activities.slack.models import (
        Approvers,
        DecisionFacts,
        DecisionMessageRequest,
        DecisionStatus,
        Escalation,
        GateFacts,
        GateMessageRequest,
        GateStatus,
        GateVotes,
        ProgressLine,
        ProgressRequest,
        ResolveApproversRequest,
        SummaryRequest,
    )
    from runbooks.durations import format_duration
    from runbooks.model import SLACK_USER_PATTERN, Runbook, SlackApprovals
    from workflows.failover_models import ApprovalRecord, DecisionRecord, QuorumStatus, RunReport
    from workflows.slack_facts import step_line, summary_lines

SLACK_PATCH = "slack-approvals"
# Failed steps shown in Slack with Retry / Skip / Abort: a run recorded before it replays without them.
DECISIONS_PATCH = "slack-decisions"
# Since this patch the end of a run waits at most CLOSE_WAIT for Slack to catch up: a hung Slack held a
# finished failover open for 94 s (measured, tests/test_slack_gateway.py), and with it `--wait`, the
# archive and a drill's next child. A run recorded before it waits for the mirror as long as it takes.
CLOSE_PATCH = "slack-close-bounded"
CLOSE_WAIT = timedelta(seconds=15)
SLACK_TIMEOUT = timedelta(seconds=30)
# Bounded: a rate limit waits Slack's Retry-After, an outage a few seconds; then the run moves on without it.
SLACK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=4,
    non_retryable_error_types=NON_RETRYABLE_ERRORS,
)
MAX_FAILURES = 3
T = TypeVar("T")


@dataclass
class GateView:
    """One gate as Slack shows it: its messages (the post, then an escalation re-post) and what they show."""

    facts: GateFacts
    record: ApprovalRecord | None = None
    timeout: timedelta | None = None
    resolved: bool = False
    posted: bool = False
    messages: list[str] = field(default_factory=list)
    shown: str | None = None
    escalation: Escalation | None = None
    escalated: bool = False
    votes: GateVotes | None = None

    @property
    def state(self) -> str:
        """What the message shows; each vote on a quorum gate is a change of its own ("open:1")."""
        if self.record is not None:
            return self.record.decision
        return "open" if self.votes is None else f"open:{len(self.votes.approved_by)}"


@dataclass
class DecisionView:
    """A failed step waiting for an operator, as Slack shows it: one message, edited once decided."""

    facts: DecisionFacts
    timeout: timedelta | None = None
    record: DecisionRecord | None = None
    resolved: bool = False
    posted: bool = False
    messages: list[str] = field(default_factory=list)
    shown: str | None = None

    @property
    def state(self) -> str:
        return "open" if self.record is None else self.record.decision


class SlackMirror:
    """What Slack shows of one run; validators read ``members`` (they cannot do I/O themselves)."""

    def __init__(
        self, runbook: Runbook, kind: str, report: Callable[[], RunReport], note: Callable[[str], None]
    ) -> None:
        assert runbook.approvals.slack is not None
        self._runbook = runbook
        self.slack: SlackApprovals = runbook.approvals.slack
        self._kind = kind
        self._report = report
        self._note = note
        self.members: frozenset[str] | None = None
        self.names: dict[str, str] = {}
        self.lookup_problem: str | None = None
        self._gates: list[GateView] = []
        self._decisions: list[DecisionView] = []
        self._lines: dict[str, ProgressLine] = {}
        self._blocked_lines: list[ProgressLine] | None = None
        self._thread_ts: str | None = None
        self._summary_done = False
        self._disabled = False
        self._failures = 0
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    # --------------------------------------------------------------------------- what the run tells it
    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def gate_opened(self, facts: GateFacts, timeout: timedelta) -> GateView:
        view = GateView(facts=facts, timeout=timeout)
        self._gates.append(view)
        return view

    def gate_skipped(self, facts: GateFacts, record: ApprovalRecord) -> None:
        self._gates.append(GateView(facts=facts, record=record, resolved=True))

    def escalate(self, view: GateView, after: timedelta) -> None:
        slack = self.slack
        if slack.escalation_group:
            mention = [f"<!subteam^{slack.escalation_group}>"]
        elif slack.usergroup:
            mention = [f"<!subteam^{slack.usergroup}>"]
        else:
            mention = [f"<@{user}>" for user in slack.approvers] or ["<!here>"]
        view.escalation = Escalation(after=after, mention=mention)
        self._note(f"the {view.facts.gate} gate was escalated in Slack after {format_duration(after)}")

    def vote_recorded(self, record: ApprovalRecord, quorum: QuorumStatus, missing: list[str]) -> None:
        """An approval counted on a quorum gate that stays open: the message shows who and what is missing.

        Called from the Update handler (which does not hold the view): the open view of that gate.
        """
        open_views = [v for v in self._gates if v.facts.gate == record.gate and v.record is None]
        view = open_views[-1] if open_views else None
        if view is None:
            return
        view.votes = GateVotes(
            approved_by=list(quorum.approved_by), min_approvals=quorum.min_approvals, missing=list(missing)
        )

    def gate_answered(self, view: GateView, record: ApprovalRecord) -> None:
        view.record = record
        votes = view.votes
        if votes is not None and record.decision != "rejected" and record.person not in votes.approved_by:
            approved = [*votes.approved_by, record.person or record.by or "?"]
            view.votes = votes.model_copy(update={"approved_by": approved, "missing": []})

    def decision_opened(self, facts: DecisionFacts, timeout: timedelta) -> DecisionView:
        # The approvers are looked up at every gate; a step failing before any gate looks them up itself.
        view = DecisionView(facts=facts, timeout=timeout, resolved=any(g.resolved for g in self._gates))
        self._decisions.append(view)
        return view

    def decision_made(self, view: DecisionView, record: DecisionRecord) -> None:
        view.record = record

    async def close(self) -> None:
        """Let Slack catch up with the end of the run (final statuses, last lines, the summary), for at most
        ``CLOSE_WAIT``: the run's report, not its Slack thread, is the record."""
        self._closing = True
        task = self._task
        if task is None:
            return
        if not workflow.patched(CLOSE_PATCH):
            await task
            return
        try:
            await workflow.wait_condition(task.done, timeout=CLOSE_WAIT)
        except TimeoutError:
            task.cancel()  # the activity in flight is cancelled; nothing more is posted for this run
            self._disabled = True
            self._note(
                f"Slack: not caught up {format_duration(CLOSE_WAIT)} after the run ended; its final state is "
                "in this report, not in Slack"
            )

    def requester_slack_id(self, requested_by: str | None) -> str | None:
        if requested_by is None:
            return None
        if re.fullmatch(SLACK_USER_PATTERN, requested_by):
            return requested_by
        return next((uid for uid, name in self.slack.identities.items() if name == requested_by), None)

    def person(self, who: str) -> str:
        """One person's name across channels: a Slack user id maps to the runbook's identity for it."""
        return self.slack.identities.get(who, who)

    # ----------------------------------------------------------------------------------------- the loop
    async def _run(self) -> None:
        while True:
            await workflow.wait_condition(lambda: self._closing or self._next() is not None)
            action = self._next()
            if action is None:
                return
            try:
                await action()
            except Exception as err:  # a bug here must not hold a failover up: say so and stop mirroring
                self._disable(f"Slack mirror stopped after an internal error: {err!r}")

    def _next(self) -> Callable[[], Awaitable[None]] | None:
        """The next thing Slack lacks, in the order a reader needs it; None when Slack is up to date."""
        if self._disabled:
            return None
        for view in self._gates:
            if not view.resolved:
                return partial(self._resolve, view)
            if not view.posted:
                return partial(self._post, view)
            if view.messages and view.shown != view.state:
                return partial(self._update, view)
            if view.escalation is not None and not view.escalated and view.record is None:
                return partial(self._escalate, view)
        for decision in self._decisions:
            if not decision.resolved:
                return partial(self._resolve, decision)
            if not decision.posted:
                return partial(self._post_decision, decision)
            if decision.messages and decision.shown != decision.state:
                return partial(self._update_decision, decision)
        lines = self._pending_lines()
        if lines:
            return partial(self._sync_progress, lines)
        if self._report().outcome != "running" and not self._summary_done and self._thread_ts is not None:
            return self._summary
        return None

    async def _resolve(self, view: GateView | DecisionView) -> None:
        view.resolved = True
        slack = self.slack
        if slack.usergroup is None and not slack.approvers:
            return
        directory = await self._call(
            "look up the Slack approvers",
            resolve_approvers,
            ResolveApproversRequest(usergroup=slack.usergroup, user_ids=list(slack.approvers)),
            f"slack: look up approvers ({slack.usergroup or 'listed'})",
        )
        if directory is None:
            self.lookup_problem = self.lookup_problem or "Slack could not be asked"
            return
        self.lookup_problem = None
        if directory.members is not None:
            self.members = frozenset(directory.members)
        self.names.update(directory.names)
        for problem in directory.problems:
            self._note(f"Slack: {problem}")

    async def _post(self, view: GateView) -> None:
        view.posted = True
        state = view.state
        posted = await self._call(
            f"post the {view.facts.gate} gate",
            post_gate,
            self._message(view),
            f"slack: post the {view.facts.gate} gate",
        )
        if posted is None:
            return
        view.messages.append(posted.ts)
        view.shown = state
        if self._thread_ts is None:
            self._thread_ts = posted.ts

    async def _update(self, view: GateView) -> None:
        state = view.state
        view.shown = state  # one attempt per change: a failure is noted, never retried in a loop
        await self._call(
            f"update the {view.facts.gate} gate message",
            update_gate,
            self._message(view),
            f"slack: {view.facts.gate} gate {state}",
        )

    async def _escalate(self, view: GateView) -> None:
        view.escalated = True
        state = view.state
        posted = await self._call(
            f"escalate the {view.facts.gate} gate",
            post_gate,
            self._message(view, messages=[]),
            f"slack: escalate the {view.facts.gate} gate",
        )
        if posted is not None:
            view.messages.append(posted.ts)
            if view.state != state:  # answered meanwhile: the re-post must show it too
                view.shown = None

    async def _post_decision(self, view: DecisionView) -> None:
        view.posted = True
        state = view.state
        if state != "open":
            return  # decided (through the CLI or the Web UI) before Slack was told: nothing to click
        posted = await self._call(
            f"post the decision for {view.facts.step}",
            post_decision,
            self._decision_message(view),
            f"slack: {view.facts.step} failed, decide",
        )
        if posted is None:
            return
        view.messages.append(posted.ts)
        view.shown = state
        if self._thread_ts is None:
            self._thread_ts = posted.ts

    async def _update_decision(self, view: DecisionView) -> None:
        state = view.state
        view.shown = state  # one attempt per change, as for gates
        await self._call(
            f"update the decision message of {view.facts.step}",
            update_decision,
            self._decision_message(view),
            f"slack: {view.facts.step} {state}",
        )

    async def _sync_progress(self, lines: list[ProgressLine]) -> None:
        assert self._thread_ts is not None
        result = await self._call(
            "post progress",
            sync_progress,
            ProgressRequest(channel=self.slack.channel, thread_ts=self._thread_ts, lines=lines),
            f"slack: {len(lines)} progress line{'s' if len(lines) != 1 else ''}",
        )
        if result is None:
            self._blocked_lines = lines
            return
        for line in result.lines:
            self._lines[line.key] = line
        if result.error is not None:
            self._blocked_lines = self._pending_lines(ignore_blocked=True)
            if result.error_type in FATAL_ERRORS:
                self._disable(f"Slack: {result.error}")
            else:
                self._failed_once(f"could not post progress: {result.error}")

    async def _summary(self) -> None:
        self._summary_done = True
        assert self._thread_ts is not None
        report = self._report()
        await self._call(
            "post the summary",
            post_summary,
            SummaryRequest(
                channel=self.slack.channel,
                thread_ts=self._thread_ts,
                title=f"{self._title()}: {report.outcome.upper()}",
                outcome=report.outcome,
                lines=summary_lines(report, self._runbook),
                workflow_id=report.workflow_id,
                run_id=report.run_id,
            ),
            "slack: summary",
        )

    # --------------------------------------------------------------------------------------- helpers
    def _message(self, view: GateView, messages: list[str] | None = None) -> GateMessageRequest:
        record = view.record
        status = None
        if record is not None:
            status = GateStatus(
                decision=record.decision, by=record.by, channel=record.channel, at=record.at,
                reason=record.reason if record.decision != "expired" else "", timeout=view.timeout,
                person=record.person,
            )  # fmt: skip
        return GateMessageRequest(
            channel=self.slack.channel,
            facts=view.facts,
            approvers=Approvers(
                user_ids=list(self.slack.approvers), names=dict(self.names), usergroup=self.slack.usergroup
            ),
            status=status,
            escalation=view.escalation,
            messages=list(view.messages) if messages is None else messages,
            votes=view.votes,
        )

    def _decision_message(self, view: DecisionView) -> DecisionMessageRequest:
        record = view.record
        status = None
        if record is not None:
            status = DecisionStatus(
                decision=record.decision, by=record.by, channel=record.channel, at=record.at,
                reason=record.reason if record.decision != "expired" else "", timeout=view.timeout,
                person=record.person,
            )  # fmt: skip
        return DecisionMessageRequest(
            channel=self.slack.channel,
            facts=view.facts,
            approvers=Approvers(
                user_ids=list(self.slack.approvers), names=dict(self.names), usergroup=self.slack.usergroup
            ),
            status=status,
            timeout=view.timeout,
            messages=list(view.messages),
        )

    def _pending_lines(self, ignore_blocked: bool = False) -> list[ProgressLine]:
        if self._thread_ts is None:
            return []
        pending = []
        for step in self._report().steps:
            text = step_line(step)
            posted = self._lines.get(step.name)
            if posted is None or posted.text != text:
                pending.append(ProgressLine(key=step.name, text=text, ts=posted.ts if posted else None))
        if not ignore_blocked and pending == self._blocked_lines:
            return []  # the same lines failed last time: wait for the run to change before trying again
        return pending

    def _title(self) -> str:
        return self._gates[0].facts.title if self._gates else f"{self._kind.capitalize()}"

    async def _call(self, what: str, activity: Callable[[Any], T], arg: Any, summary: str) -> T | None:
        try:
            result: T = await workflow.execute_activity(
                activity,
                arg,
                start_to_close_timeout=SLACK_TIMEOUT,
                retry_policy=SLACK_RETRY,
                summary=summary,
            )
        except ActivityError as err:
            cause = err.cause
            while (
                cause is not None and not isinstance(cause, ApplicationError) and cause.__cause__ is not None
            ):
                cause = cause.__cause__
            message = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
            if isinstance(cause, ApplicationError) and cause.type in FATAL_ERRORS:
                self._disable(f"Slack: {message}")
            else:
                self._failed_once(f"could not {what}: {message}")
            return None
        self._failures = 0
        return result

    def _failed_once(self, message: str) -> None:
        self._failures += 1
        self._note(f"Slack: {message}")
        if self._failures >= MAX_FAILURES:
            self._disable(f"Slack: {MAX_FAILURES} failures in a row, no more Slack messages for this run")

    def _disable(self, message: str) -> None:
        if self._disabled:
            return
        self._disabled = True
        self.lookup_problem = self.lookup_problem or message
        self._note(f"{message}; approvals continue through the CLI and the Web UI")
