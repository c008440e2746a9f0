"""Readiness of the people a failover needs: the findings alone (pure), then a real check in people mode.

The real check runs the Readiness workflow on the sandbox (real BIND, PostgreSQL, apps) with the demo people
file `drflow sandbox up` writes, then with a key revoked and with the file broken, and reads the verdict.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from runbooks.model import Approvals
from runbooks.people import PeopleSnapshot, fingerprint, parse_people
from tests.support.sandbox import SandboxWorld, sandbox_world
from tests.support.sshkeys import Key, make_key
from workers.worker import build_worker
from workflows.readiness import ReadinessWorkflow
from workflows.readiness_people import people_findings
from workflows.readiness_report import ReadinessReport, ReadinessRequest, render_markdown


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    directory = tmp_path_factory.mktemp("readiness-people-keys")
    return {name: make_key(directory, name) for name in ("alice", "bob", "carol", "dave")}


def snapshot(
    keys: dict[str, Key], *, revoked: tuple[str, ...] = (), dba: tuple[str, ...] = ()
) -> PeopleSnapshot:
    people = [
        {
            "name": name,
            "keys": [keys[name].public_line],
            "revoked_keys": [keys[name].fingerprint] if name in revoked else [],
            "groups": ["dba"] if name in dba else [],
        }
        for name in ("alice", "bob", "carol", "dave")
    ]
    parsed = parse_people(json.dumps({"people": people}).encode(), "people.yaml")
    return PeopleSnapshot(people=parsed, source="people.yaml", sha256="0" * 64)


def approvals(**fields: object) -> Approvals:
    return Approvals.model_validate({"approvers": ["bob", "carol", "dave"], **fields})


def test_three_approvers_for_one_approval_each_is_fine(keys: dict[str, Key]) -> None:
    assert people_findings(approvals(), snapshot(keys)) == ([], [])
    assert people_findings(approvals(), None) == ([], []), "no people file: nothing to say"


def test_a_revoked_key_leaves_an_approver_unable_and_the_quorum_thin(keys: dict[str, Key]) -> None:
    blocking, warnings = people_findings(approvals(), snapshot(keys, revoked=("dave",)))
    assert blocking == []
    assert [(w.code, w.message) for w in warnings] == [
        ("approver-cannot-answer", "approver dave cannot answer a gate: no key that is not revoked, and no "
         "Slack route (unsigned answers are refused)"),
        ("quorum-at-risk", "the failover, data-loss and failback gates need 1 approval(s) and 2 approver(s) can "
         "give one (bob, carol): if one of them asks for the run, one absence more and it cannot pass"),
    ]  # fmt: skip
    # where the runbook records unsigned answers, a revoked key does not silence anyone
    assert people_findings(approvals(unsigned="record"), snapshot(keys, revoked=("dave",))) == ([], [])


def test_a_quorum_that_cannot_be_met_blocks_and_a_group_without_able_members_too(
    keys: dict[str, Key],
) -> None:
    rules = approvals(quorum={"failover": {"min_approvals": 3, "groups": ["dba"]}})
    blocking, warnings = people_findings(rules, snapshot(keys, revoked=("dave",), dba=("dave",)))
    assert blocking == [
        "the failover gate needs 3 approval(s) and 2 approver(s) can give one (bob, carol)",
        "the failover gate needs someone of group dba, and none of them can answer",
    ]
    assert [w.code for w in warnings] == ["approver-cannot-answer", "quorum-at-risk"]  # promote, failback


@pytest.fixture
def world() -> Iterator[SandboxWorld]:
    with sandbox_world(people=True) as built:
        yield built


async def check(env: WorkflowEnvironment, world: SandboxWorld) -> ReadinessReport:
    queue = f"readiness-people-{uuid.uuid4()}"
    async with build_worker(env.client, world.runbooks, task_queue=queue):
        return await env.client.execute_workflow(
            ReadinessWorkflow.run, ReadinessRequest(service=world.service),
            id=f"readiness-people-{uuid.uuid4()}", task_queue=queue,
        )  # fmt: skip


def revoke_every_key(people_file: Path, name: str) -> None:
    """Edit the demo people file (a comment line, then JSON) as an admin revoking a person's keys would."""
    header, body = people_file.read_text().split("\n", 1)
    listed = json.loads(body)
    person = next(p for p in listed["people"] if p["name"] == name)
    person["revoked_keys"] = [fingerprint(line) for line in person["keys"]]
    people_file.write_text(f"{header}\n{json.dumps(listed)}")


async def test_a_scheduled_check_reads_the_people_file_as_a_gate_would(
    dev_env: WorkflowEnvironment, world: SandboxWorld
) -> None:
    report = await check(dev_env, world)
    people_file = Path(world.runbook.approvals.people or "")
    assert report.people_source == str(people_file)
    assert report.verdict == "ready", report.reasons
    assert f"approvers from {people_file}" in render_markdown(report)

    # Signed answers only, and carol's only key revoked: she cannot answer; bob alone is one absence away.
    world.write_runbook(approvals__unsigned="refuse")
    revoke_every_key(people_file, "carol")
    report = await check(dev_env, world)
    assert report.verdict == "ready", report.reasons
    assert [w.code for w in report.warnings] == ["approver-cannot-answer", "quorum-at-risk"]
    assert "1 approver(s) can give one (bob): one absence, or a request by one of them" in (
        report.warnings[1].message
    )

    # A people file that does not load: every run would be refused before it changes anything.
    people_file.write_bytes(b"people: [")  # noqa: ASYNC240 (one small write)
    report = await check(dev_env, world)
    assert report.verdict == "not-ready"
    assert report.reasons[0].startswith(f"runs of {world.service} would be refused: ")
