"""Readiness of the people a failover needs: could each gate be passed today, by whom, proven how?

Pure, over the people file as ``load_people`` read it (the snapshot a gate would pin). A run refuses an
approver the file does not know before it changes anything; this says so in the scheduled check instead,
weeks earlier, and also what a run would only find at its gate: approvers who cannot answer (every key
revoked and no Slack route under ``unsigned: refuse``) and quorums one absence away from unreachable.
"""

from __future__ import annotations

from runbooks.model import Approvals, Gate
from runbooks.people import People, PeopleSnapshot
from workflows.approval_rules import unsigned_policy
from workflows.readiness_report import EarlyWarning

ALWAYS_GATES: tuple[Gate, ...] = ("failback",)  # a failback opens it whatever approvals.gates says


def people_findings(
    approvals: Approvals, snapshot: PeopleSnapshot | None
) -> tuple[list[str], list[EarlyWarning]]:
    """Blocking reasons and early warnings about who can pass the gates; nothing without a people file."""
    if snapshot is None:
        return [], []
    people = snapshot.people
    named = _approvers(approvals, people)
    able = {name for name in named if _can_answer(approvals, people, name)}
    blocking: list[str] = []
    warnings: list[EarlyWarning] = []
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


def _can_answer(approvals: Approvals, people: People, name: str) -> bool:
    """A signed CLI answer (a key not revoked) or a Slack click the gateway attests, or any answer at all
    where the runbook records unsigned ones."""
    if unsigned_policy(approvals) == "record":
        return True
    person = people.person(name)
    if any(fp not in person.revoked_keys for fp in person.fingerprints()):
        return True
    return approvals.slack is not None and bool(people.gateways) and bool(person.slack)


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _who(names: set[str]) -> str:
    return f" ({', '.join(sorted(names))})" if names else ""
