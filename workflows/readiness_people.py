"""Readiness of the people a failover needs: could each gate be passed today, by whom, proven how?

Pure, over the people file as ``load_people`` read it (the snapshot a gate would pin). A run refuses an
approver the file does not know before it changes anything; this says so in the scheduled check instead,
weeks earlier, and also what a run would only find at its gate: approvers who cannot answer (every key
revoked and no Slack route under ``unsigned: refuse``) and quorums one absence away from unreachable.
"""

from __future__ import annotations

from activities.slack.models import SlackUsers
from runbooks.model import Approvals, Gate
from runbooks.people import People, PeopleSnapshot
from workflows.approval_rules import unsigned_policy
from workflows.readiness_report import EarlyWarning

ALWAYS_GATES: tuple[Gate, ...] = ("failback",)  # a failback opens it whatever approvals.gates says


def slack_ids_to_check(approvals: Approvals, snapshot: PeopleSnapshot | None) -> list[str]:
    """The Slack ids of every approver a gate names, when the runbook approves through Slack."""
    if snapshot is None or approvals.slack is None:
        return []
    people = snapshot.people
    return [i for name in sorted(_approvers(approvals, people)) for i in people.person(name).slack]


def people_findings(
    approvals: Approvals, snapshot: PeopleSnapshot | None, slack: SlackUsers | None = None
) -> tuple[list[str], list[EarlyWarning]]:
    """Blocking reasons and early warnings about who can pass the gates; nothing without a people file.

    ``slack``: what Slack said of the approvers' accounts; a deactivated or unknown account is no Slack
    route, so it counts toward the quorum only if the person can still sign a CLI answer."""
    if snapshot is None:
        return [], []
    people = snapshot.people
    named = _approvers(approvals, people)
    gone = {i for i, state in (slack.states if slack is not None else {}).items() if state != "active"}
    able = {name for name in named if _can_answer(approvals, people, name, gone)}
    blocking: list[str] = []
    warnings: list[EarlyWarning] = []
    for name in sorted(named):
        for slack_id in people.person(name).slack:
            if slack_id in gone and slack is not None:
                state = "is deactivated" if slack.states[slack_id] == "deactivated" else "does not exist"
                still = "a CLI answer still counts" if name in able else "and they have no other way"
                warnings.append(EarlyWarning(
                    code="approver-slack-inactive",
                    message=f"approver {name}'s Slack account {slack_id} {state} in the workspace: their "
                    f"clicks cannot arrive ({still}); fix their slack id in the people file",
                ))  # fmt: skip
    if slack is not None and slack.problems:
        warnings.append(EarlyWarning(
            code="slack-unverified",
            message="Slack could not say whether these approvers' accounts are active: "
            + "; ".join(slack.problems),
        ))  # fmt: skip
    for name in sorted(named - able):
        warnings.append(EarlyWarning(
            code="approver-cannot-answer",
            message=f"approver {name} cannot answer a gate: no key that is not revoked, and no Slack route "
            "(unsigned answers are refused)",
        ))  # fmt: skip
    gates = list(dict.fromkeys([*approvals.gates, *ALWAYS_GATES]))
    by_rule: dict[tuple[int, tuple[str, ...]], list[str]] = {}  # gates with the same rule: one finding
    for gate in gates:
        rule = approvals.quorum.get(gate)
        key = (rule.min_approvals, tuple(rule.groups)) if rule is not None else (1, ())
        by_rule.setdefault(key, []).append(gate)
    for (need, groups), same in by_rule.items():
        named_gates = f"the {_listing(same)} gate{'s' if len(same) > 1 else ''}"
        verb = "need" if len(same) > 1 else "needs"
        who = f"{len(able)} approver(s) can give one{_who(able)}"
        can = f"{named_gates} {verb} {need} approval(s) and {who}"
        margin = len(able) - need  # approvers beyond what the gate needs
        if margin < 0:
            blocking.append(can)
        elif margin == 0:
            warnings.append(EarlyWarning(
                code="quorum-at-risk",
                message=f"{can}: one absence, or a request by one of them, and it cannot pass",
            ))  # fmt: skip
        elif margin == 1 and approvals.separation_of_duties:
            warnings.append(EarlyWarning(
                code="quorum-at-risk",
                message=f"{can}: if one of them asks for the run, one absence more and it cannot pass",
            ))  # fmt: skip
        for group in groups:
            if not {p.name for p in people.people if group in p.groups} & able:
                blocking.append(f"{named_gates} {verb} someone of group {group}, and none of them can answer")
    return blocking, warnings


def _approvers(approvals: Approvals, people: People) -> set[str]:
    """The people a gate's approvals name (people, groups, Slack approvers); unknown names are skipped:
    ``load_people`` refuses them before this runs."""
    found: set[str] = set()
    for name in approvals.approvers:
        if any(p.name == name for p in people.people):
            found.add(name)
        else:
            found |= {p.name for p in people.people if name in p.groups}
    slack = approvals.slack
    for user in slack.approvers if slack is not None else []:
        person = people.person_for_slack(user)
        if person is not None:
            found.add(person.name)
    return found


def _can_answer(approvals: Approvals, people: People, name: str, gone: set[str]) -> bool:
    """A signed CLI answer (a key not revoked) or a Slack click the gateway attests from an account that
    still exists, or any answer at all where the runbook records unsigned ones."""
    if unsigned_policy(approvals) == "record":
        return True
    person = people.person(name)
    if any(fp not in person.revoked_keys for fp in person.fingerprints()):
        return True
    live = [slack_id for slack_id in person.slack if slack_id not in gone]
    return approvals.slack is not None and bool(people.gateways) and bool(live)


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _who(names: set[str]) -> str:
    return f" ({', '.join(sorted(names))})" if names else ""
