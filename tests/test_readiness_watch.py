"""Readiness watches what drifts slowly: the lag's trend over the last checks, the approvers' Slack accounts,
and the build each region serves.

Pure findings first, then the real thing: the sandbox's PostgreSQL pair with replay paused (the trend), the
Slack stand-in's ``users.info`` with a deactivated account, real HTTP apps reporting different versions.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.database.results import ReplicationStatus
from activities.health import reported_version
from activities.readiness_history import PastCheck, PastLag
from activities.slack.models import SlackUsers
from runbooks.model import Objectives
from runbooks.people import PeopleSnapshot, parse_people
from tests.support.sandbox import SandboxWorld, Writer, sandbox_world
from tests.support.slack.standin import SlackStandIn, slack_for_worker
from tests.support.sshkeys import Key
from tests.test_readiness_people import approvals, keys  # noqa: F401  (fixture)
from tests.test_readiness_workflow import World, readiness, run_readiness, world  # noqa: F401
from workers.worker import build_worker
from workflows.readiness import ReadinessWorkflow
from workflows.readiness_people import people_findings
from workflows.readiness_report import ReadinessReport, ReadinessRequest, render_markdown
from workflows.readiness_trend import lag_trend

QUEUE = f"readiness-watch-{uuid.uuid4().hex[:8]}"
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
OBJECTIVES = Objectives(rto=timedelta(minutes=5), rpo=timedelta(seconds=60))


def status(lag: float | None, standby: str = "region-b") -> ReplicationStatus:
    return ReplicationStatus(
        primary_region="region-a", standby_region=standby, primary_reachable=True, primary_in_recovery=False,
        primary_lsn="0/1", standby_reachable=True, standby_in_recovery=True, standby_receive_lsn="0/1",
        standby_replay_lsn="0/1", replay_paused=False, lag_bytes=0, lag_seconds=lag, errors=[],
    )  # fmt: skip


def past(*lags: float | None, every: timedelta = timedelta(minutes=15)) -> list[PastCheck]:
    """Checks before NOW, newest first as the activity returns them: ``lags`` oldest first."""
    count = len(lags)
    return [
        PastCheck(
            checked_at=NOW - every * (count - i),
            verdict="ready",
            lags=[PastLag(primary_region="region-a", standby_region="region-b", lag_seconds=lag)],
        )
        for i, lag in enumerate(lags)
    ][::-1]


# ------------------------------------------------------------------------------------------ the trend
def test_a_lag_rising_toward_the_rpo_warns_while_it_is_still_low() -> None:
    # 2 s, 4 s, 6 s at 15-minute checks, 8 s now: + 2 s per 15 min reaches 60 s in 6.5 h: too far
    assert lag_trend(past(2, 4, 6), NOW, [status(8)], OBJECTIVES) == []
    # every minute: +2 s/min reaches 60 s in 26 min, within the 1 h horizon
    [warning] = lag_trend(past(2, 4, 6, every=timedelta(minutes=1)), NOW, [status(8)], OBJECTIVES)
    assert warning.code == "lag-rising"
    assert warning.message == (
        "replication lag region-a → region-b rose from 2.0s to 8.0s over the last 4 checks (3m); at this "
        "rate it passes the RPO of 1m in about 26m (warns within 1h)"
    )
    # a longer horizon takes in the slower rise
    slow = Objectives(rto=timedelta(minutes=5), rpo=timedelta(seconds=60), trend_horizon=timedelta(hours=8))
    assert [w.code for w in lag_trend(past(2, 4, 6), NOW, [status(8)], slow)] == ["lag-rising"]


@pytest.mark.parametrize(
    ("lags", "now", "why"),
    [
        ((6,), 8.0, "one check before is not a trend yet: three points needed"),
        ((8, 6, 4), 2.0, "falling"),
        ((5, 5, 5), 5.0, "flat"),
        ((0, 0, 0.2), 0.5, "below the 1 s floor: jitter"),
        ((10, 20, 25), 31.0, "past warn_at (30 s): lag-near-rpo speaks, not the trend"),
        ((None, None), 8.0, "past lags unknown"),
        ((2, 4, 6), None, "the lag now is unknown"),
    ],
)
def test_no_trend_warning(lags: tuple[float | None, ...], now: float | None, why: str) -> None:
    assert lag_trend(past(*lags, every=timedelta(minutes=1)), NOW, [status(now)], OBJECTIVES) == [], why


def test_the_trend_of_each_standby_is_its_own() -> None:
    history = past(2, 4, 6, every=timedelta(minutes=1))
    assert lag_trend(history, NOW, [status(8, standby="region-c")], OBJECTIVES) == []


# ------------------------------------------------------------------------------------- Slack accounts
def test_a_deactivated_slack_account_is_no_route_and_thins_the_quorum(keys: dict[str, Key]) -> None:  # noqa: F811
    listed = [
        {"name": name, "keys": [keys[name].public_line], "slack": [f"U0{name.upper()}"],
         "revoked_keys": [keys[name].fingerprint] if name in ("carol", "dave") else []}
        for name in ("bob", "carol", "dave")
    ]  # fmt: skip
    parsed = parse_people(json.dumps({"people": listed}).encode(), "people.yaml")
    people = PeopleSnapshot(people=parsed, source="people.yaml", sha256="0" * 64)
    rules = approvals(
        unsigned="refuse", slack={"channel": "C0DRFLOW", "approvers": ["U0BOB", "U0CAROL", "U0DAVE"]}
    )
    told = SlackUsers(states={"U0BOB": "active", "U0CAROL": "deactivated", "U0DAVE": "not-found"})
    _, warnings = people_findings(rules, people, told)
    assert [(w.code, w.message.split(":")[0]) for w in warnings if w.code == "approver-slack-inactive"] == [
        ("approver-slack-inactive", "approver carol's Slack account U0CAROL is deactivated in the workspace"),
        ("approver-slack-inactive", "approver dave's Slack account U0DAVE does not exist in the workspace"),
    ]
    unknown = SlackUsers(states={}, problems=["U0BOB: Slack users.info failed: service_unavailable"])
    _, warnings = people_findings(rules, people, unknown)
    assert [w.code for w in warnings if w.code == "slack-unverified"] == ["slack-unverified"]


# ----------------------------------------------------------------------------------------- versions
@pytest.mark.parametrize(
    ("body", "path", "expected"),
    [
        ('{"version": "1.5.0"}', "version", "1.5.0"),
        ('{"build": {"git_sha": "abc123"}}', "build.git_sha", "abc123"),
        ('{"builds": [{"v": 7}]}', "builds.0.v", "7"),
        ('{"build": {}}', "build.git_sha", None),
        ('{"build": {"git_sha": {"x": 1}}}', "build.git_sha", None),
        ("not json", "version", None),
        ('{"version": "token-s3cret"}', "version", "token-[secret header value]"),
    ],
)
def test_the_version_is_read_at_the_runbooks_path(body: str, path: str, expected: str | None) -> None:
    assert reported_version(body, path, ["s3cret"]) == expected


async def test_regions_serving_different_builds_warn_and_a_missing_version_too(
    readiness: tuple[WorkflowEnvironment, str],  # noqa: F811
    world: World,  # noqa: F811
) -> None:
    service = f"versions-{uuid.uuid4().hex[:6]}"
    world.write_runbook(service, version_path="build.version")
    world.region_a.behaviour.body = {"status": "ok", "build": {"version": "1.5.0"}}
    world.region_b.behaviour.body = {"status": "ok", "build": {"version": "1.5.0"}}
    same = await run_readiness(readiness, service)
    assert same.verdict == "ready" and same.warnings == [], same.reasons
    assert {c.version for r in same.regions for c in r.checks} == {"1.5.0"}

    world.region_b.behaviour.body = {"status": "ok", "build": {"version": "1.4.2"}}
    drift = await run_readiness(readiness, service)
    assert drift.verdict == "ready"  # a rolling deploy differs for minutes: a warning, not a verdict
    [warning] = drift.warnings
    assert warning.code == "version-drift"
    assert "(app at 'build.version': region-a 1.5.0, region-b 1.4.2)" in warning.message
    assert "[version-drift]" in render_markdown(drift)

    world.region_b.behaviour.body = {"status": "ok"}
    missing = await run_readiness(readiness, service)
    assert [w.code for w in missing.warnings] == ["version-unreported"]
    assert missing.warnings[0].message.startswith(
        "region-b's app check reports no version at 'build.version'"
    )


# ------------------------------------------------------------------------------------ on the sandbox
@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlackStandIn]:
    with slack_for_worker(monkeypatch) as running:
        yield running


async def check(env: WorkflowEnvironment, sandbox: SandboxWorld) -> ReadinessReport:
    return await env.client.execute_workflow(
        ReadinessWorkflow.run,
        ReadinessRequest(service=sandbox.service),
        id=f"readiness-{sandbox.service}-{uuid.uuid4().hex[:8]}",
        task_queue=QUEUE,
    )


async def test_a_lag_creeping_up_while_replay_is_paused_warns_before_it_nears_the_rpo(
    dev_env: WorkflowEnvironment,
) -> None:
    """The sandbox's real pair: replay paused, the primary writing. The first check after the pause has one
    point of history, the next has three: the trend warns while the lag is far below warn_at."""
    with sandbox_world() as sandbox:
        # A service name of its own: the trend reads every past check of the service, and the suite's other
        # checks of the sandbox's service on the same server would be points of this series.
        shared = sandbox.runbooks / f"{sandbox.service}.yaml"
        sandbox.write_runbook(
            service=f"sandbox-trend-{uuid.uuid4().hex[:8]}", objectives__rpo="2m", objectives__warn_at=0.5
        )
        shared.unlink()
        async with build_worker(dev_env.client, sandbox.runbooks, task_queue=QUEUE):
            writer = Writer(sandbox, "region-a")
            writer.start()
            try:
                calm = await check(dev_env, sandbox)
                assert calm.verdict == "ready" and calm.warnings == [], calm.reasons
                with sandbox.connect("region-b") as standby:
                    standby.execute("SELECT pg_wal_replay_pause()")
                await asyncio.sleep(3)
                one = await check(dev_env, sandbox)
                assert "lag-rising" not in [w.code for w in one.warnings]  # two points: no trend yet
                await asyncio.sleep(3)
                rising = await check(dev_env, sandbox)
                codes = [w.code for w in rising.warnings]
                assert codes == ["lag-rising"], (codes, rising.reasons)
                assert "over the last 3 checks" in rising.warnings[0].message
                with sandbox.connect("region-b") as standby:
                    standby.execute("SELECT pg_wal_replay_resume()")
                await asyncio.sleep(1)
                resumed = await check(dev_env, sandbox)
                assert resumed.warnings == [], resumed.reasons
            finally:
                writer.stop()


async def test_an_approvers_deactivated_slack_account_is_found_before_a_gate_needs_it(
    dev_env: WorkflowEnvironment, standin: SlackStandIn
) -> None:
    with sandbox_world(people=True) as sandbox:
        standin.world.users.update({"U0SANDBOB": "Bob", "U0SANDCAROL": "Carol"})
        standin.world.deactivated.add("U0SANDCAROL")
        sandbox.write_runbook(
            approvals__slack={"channel": "C0DRFLOW", "approvers": ["U0SANDBOB", "U0SANDCAROL"]}
        )
        async with build_worker(dev_env.client, sandbox.runbooks, task_queue=QUEUE):
            report = await check(dev_env, sandbox)
    inactive = [w for w in report.warnings if w.code == "approver-slack-inactive"]
    assert [w.message.split(":")[0] for w in inactive] == [
        "approver carol's Slack account U0SANDCAROL is deactivated in the workspace"
    ]
    assert "a CLI answer still counts" in inactive[0].message  # the sandbox records unsigned answers
    assert sorted(c.args["user"] for c in standin.calls_of("users.info")) == ["U0SANDBOB", "U0SANDCAROL"]
