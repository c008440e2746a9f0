"""Who answers a gate, proven how, and whether they may: the pure rules behind the Update validators.

Everything here is deterministic (the caller passes ``workflow.now()`` and the people snapshot pinned in
the history), so the validator and the handler reach the same verdict, and a replay reaches it again.
A verdict is a person of the people file, never the string a caller typed: separation of duties, drill
exclusions and quorum compare people.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from activities.approvals.attestations import ExpectedClick, is_attestation, verify_attestation
from activities.approvals.requests import ExpectedRequest, verify_request
from activities.approvals.signatures import (
    Binding,
    Expected,
    PlanMismatch,
    SignatureRefused,
    verify_decision,
)
from runbooks.model import SLACK_USER_PATTERN, Approvals, Gate, Quorum
from runbooks.people import People, PeopleSnapshot, UnknownApproverError
from workflows.failover_models import Channel, Identity, QuorumStatus, RequesterRecord, cli_command

UNSIGNED_DEFAULT: Literal["refuse"] = "refuse"
UNVERIFIED_REQUESTER_DEFAULT: Literal["two-person"] = "two-person"


@dataclass(frozen=True)
class Answerer:
    person: str
    identity: Identity
    channel: Channel
    key: str | None = None
    gateway: str | None = None

    def fields(
        self, snapshot: PeopleSnapshot, signed: str | None, signature: str | None
    ) -> dict[str, object]:
        """The identity fields of the record this answer becomes."""
        return {
            "person": self.person,
            "identity": self.identity,
            "key": self.key,
            "gateway": self.gateway,
            "signed": signed if self.identity != "unverified" else None,
            "signature": signature if self.identity != "unverified" else None,
            "people_sha256": snapshot.sha256,
        }


def unsigned_policy(approvals: Approvals) -> Literal["refuse", "record"]:
    return approvals.unsigned or UNSIGNED_DEFAULT


def identify(
    *,
    snapshot: PeopleSnapshot,
    approvals: Approvals,
    claim: str,
    channel: Channel,
    signed: str | None,
    signature: str | None,
    bound: Binding,
    now: datetime,
    update: str,
    shown: Sequence[ShownPlan] = (),
) -> Answerer:
    """The person behind an answer; a ``ValueError`` (the Update's refusal) when it cannot be trusted.

    ``shown`` (the plans this run showed) lets a signature for another plan be called stale or wrong.
    """
    people = snapshot.people
    if (signed is None) != (signature is None):
        raise ValueError("a signed answer carries both signed (the payload) and signature")
    if signed is not None and signature is not None:
        try:
            if is_attestation(signed):
                if channel != "slack":
                    raise ValueError("a Slack gateway attestation arrives only with channel slack")
                click = verify_attestation(
                    signed, signature, people=people, now=now,
                    expected=ExpectedClick(**bound.model_dump(), slack_user=claim),
                )  # fmt: skip
                return Answerer(
                    person=click.person, identity="slack-gateway", channel="slack",
                    key=click.fingerprint, gateway=click.gateway,
                )  # fmt: skip
            if channel == "slack":
                raise ValueError("channel slack needs the gateway's attestation, not a person's signature")
            verified = verify_decision(
                signed, signature, people=people, now=now,
                expected=Expected(**bound.model_dump(), person=claim.strip().casefold()),
            )  # fmt: skip
        except PlanMismatch as err:
            truth = None
            if err.signed is not None and err.current is not None:
                truth = checksum_refusal(err.signed, err.current, shown)
            raise ValueError(f"refused ({err.code}): {truth or err}") from None
        except SignatureRefused as err:
            raise ValueError(f"refused ({err.code}): {err}") from None
        return Answerer(person=verified.person, identity="ssh-key", channel=channel, key=verified.fingerprint)
    if unsigned_policy(approvals) == "refuse":
        raise ValueError(
            "this runbook requires verified approvers, and this answer is not signed (the Web UI's Send "
            "Update and a raw temporal call cannot prove who sent them): answer with "
            f"{cli_command(bound.workflow_id, update, bound.plan_checksum)} (signs with your SSH key), or "
            "with the Slack buttons"
        )
    person = people.identify(claim)
    if person is None:
        if channel == "slack" or re.fullmatch(SLACK_USER_PATTERN, claim):
            raise ValueError(
                "your Slack account is not in the people file, so it cannot answer: ask the service owner "
                "to add your Slack user id to your entry"
            )
        raise ValueError(f"{claim!r} is not a person of the people file ({snapshot.source})")
    return Answerer(person=person.name, identity="unverified", channel=channel)


def allowed_people(approvals: Approvals, people: People, slack_members: frozenset[str] | None) -> set[str]:
    """Everyone the runbook lets answer, as people: names, groups, Slack approvers and user group members."""
    allowed: set[str] = set()
    for name in approvals.approvers:
        try:
            allowed |= people.resolve(name)
        except UnknownApproverError:
            continue  # refused when the people file was loaded; a later edit cannot widen the set
    slack = approvals.slack
    if slack is not None:
        for user in [*slack.approvers, *(slack_members or ())]:
            person = people.person_for_slack(user)
            if person is not None:
                allowed.add(person.name)
    return allowed


def excluded_people(excluded: frozenset[str], people: People) -> set[str]:
    """A drill's unavailable approvers as people, however the scenario named them (name or Slack id)."""
    found: set[str] = set()
    for claim in excluded:
        person = people.identify(claim)
        found.add(person.name if person is not None else claim.strip().casefold())
    return found


def check_may_answer(
    answerer: Answerer,
    *,
    approvals: Approvals,
    people: People,
    slack_members: frozenset[str] | None,
    excluded: frozenset[str],
    requester: str | None,
    kind: str,
    approving: bool,
    quorum: QuorumStatus | None,
) -> None:
    who = answerer.person
    if who in excluded_people(excluded, people):
        raise ValueError(f"{who} is unavailable in this drill's scenario: someone else must answer")
    allowed = allowed_people(approvals, people, slack_members)
    if who not in allowed:
        listed = ", ".join(sorted(allowed)) or "nobody"
        raise ValueError(f"{who} is not an approver for this service (approvers: {listed})")
    if approving and approvals.separation_of_duties and requester is not None and who == requester:
        raise ValueError(f"separation of duties: {who} requested this {kind} and cannot approve it")
    if approving and quorum is not None and who in quorum.approved_by:
        members = group_members(quorum, people)
        still = ", ".join(quorum.missing(members))
        raise ValueError(f"{who} already approved the {quorum.gate} gate; still needed: {still}")


def group_members(quorum: QuorumStatus, people: People) -> dict[str, set[str]]:
    members: dict[str, set[str]] = {}
    for group in quorum.groups:
        try:
            members[group] = people.members(group)
        except UnknownApproverError:
            members[group] = set()
    return members


def open_quorum(gate: Gate, approvals: Approvals, two_person: bool) -> QuorumStatus:
    """The gate's rule, frozen as it opens; an unverified requester raises it to two people."""
    rule = approvals.quorum.get(gate, Quorum())
    needed = max(rule.min_approvals, 2) if two_person else rule.min_approvals
    return QuorumStatus(
        gate=gate, min_approvals=needed, groups=list(rule.groups),
        two_person=two_person and rule.min_approvals < 2,
    )  # fmt: skip


def verify_requester(
    *,
    snapshot: PeopleSnapshot,
    expected: ExpectedRequest,
    signed: str | None,
    signature: str | None,
    now: datetime,
) -> tuple[RequesterRecord, str | None]:
    """The requester as a record, and a note when the signature does not hold (the run then treats the
    requester as unverified: it is not refused here, the runbook's ``unverified_requester`` decides)."""
    people = snapshot.people
    if signed is not None and signature is not None:
        try:
            verified = verify_request(signed, signature, expected=expected, people=people, now=now)
        except SignatureRefused as err:
            claimed = people.identify(expected.person)
            return (
                RequesterRecord(
                    person=claimed.name if claimed else None, identity="unverified",
                    people_sha256=snapshot.sha256,
                ),
                f"the request's signature was refused ({err.code}): {err}",
            )  # fmt: skip
        return (
            RequesterRecord(
                person=verified.person, identity="ssh-key", key=verified.fingerprint, signed=signed,
                signature=signature, people_sha256=snapshot.sha256,
            ),
            None,
        )  # fmt: skip
    claimed = people.identify(expected.person) if expected.person else None
    return (
        RequesterRecord(
            person=claimed.name if claimed else None, identity="unverified", people_sha256=snapshot.sha256
        ),
        None,
    )


@dataclass(frozen=True)
class ShownPlan:
    """A plan checksum a gate of this run showed, and when another plan replaced it (if one did)."""

    checksum: str
    gate: Gate
    shown_at: datetime
    replaced_by: str | None = None
    replaced_at: datetime | None = None


def remember_shown(
    shown: tuple[ShownPlan, ...], gate: Gate, checksum: str, now: datetime
) -> tuple[ShownPlan, ...]:
    """The run's shown plans once ``gate`` opens on ``checksum``: a different plan replaces the current one.

    Kept in the workflow's memory only (no command, no event): the history already holds every gate's plan,
    so a replay rebuilds the same list.
    """
    current = next((p for p in reversed(shown) if p.replaced_by is None), None)
    if current is not None and current.checksum == checksum:
        return shown
    marked = tuple(
        replace(p, replaced_by=checksum, replaced_at=now) if p.replaced_by is None else p for p in shown
    )
    return (*[p for p in marked if p.checksum != checksum], ShownPlan(checksum, gate, now))


def checksum_refusal(sent: str, current: str, shown: Sequence[ShownPlan]) -> str | None:
    """Why ``sent`` does not answer the gate showing ``current``, in words that are true; None if it does.

    A prefix asks for the whole checksum; a plan this run showed and replaced is stale (with what replaced
    it, and when); anything else was never a plan of this run, so it is wrong, not "changed".
    """
    if sent == current:
        return None
    if sent and current.startswith(sent):
        return f"give the whole plan checksum, not a prefix: the current plan is {current}"
    earlier = next((p for p in shown if p.checksum == sent and p.replaced_by is not None), None)
    if earlier is not None and earlier.replaced_at is not None:
        newer = "" if earlier.replaced_by == current else f" (the current plan is {current})"
        return (
            f"stale: that plan ({sent}) was replaced by {earlier.replaced_by} at "
            f"{earlier.replaced_at:%Y-%m-%d %H:%M:%S} UTC{newer}; read it (drflow status) and answer again"
        )
    return f"wrong checksum: {sent} is not a plan of this run; the current plan is {current}"
