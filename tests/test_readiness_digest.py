"""The daily readiness digest: one message about the whole fleet, read back from Temporal.

Real: the dev server with its schedules and visibility, BIND, two app servers, a worker; the digest's own
schedule is triggered as production's would fire. Stand-ins: Slack (tests/support/slack) and a webhook
receiver on loopback.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.readiness_digest import DIGEST_SCHEDULE, DigestOutcome
from tests.support.dns import OTHER_RECORD
from tests.support.slack.standin import SlackStandIn, slack_for_worker
from tests.test_cli_check import drflow, target
from tests.test_readiness_alerts import scheduled_check, triggered_run, webhook_receiver
from tests.test_readiness_workflow import World, world  # noqa: F401  (fixture)
from workers.cli.readiness import digest_schedule, readiness_schedule, schedule_id
from workers.sandbox.named import free_port
from workers.worker import build_worker
from workflows.common import TASK_QUEUE
from workflows.readiness_digest import DigestInput


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlackStandIn]:
    with slack_for_worker(monkeypatch) as running:
        yield running


async def test_the_digest_tells_every_service_its_schedule_and_the_day_even_when_nothing_changed(
    dev_env: WorkflowEnvironment,
    world: World,  # noqa: F811
    standin: SlackStandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tag = uuid.uuid4().hex[:6]  # other tests check services on the same server
    ok, down, drifting, new = (f"dg-{name}-{tag}" for name in ("ok", "down", "drifting", "new"))
    world.write_runbook(ok)
    world.write_runbook(down)
    path = world.runbooks / f"{down}.yaml"  # its standby's port has nothing behind it: nowhere to go
    path.write_text(path.read_text().replace(f'port: "{world.region_b.port}"', f'port: "{free_port()}"'))
    world.write_runbook(drifting, record=OTHER_RECORD)  # serves another address than the primary's
    world.write_runbook(new)  # never scheduled, never checked
    (world.runbooks / "broken.yaml").write_text("service: [unclosed\n")
    with webhook_receiver() as (receiver, url):
        monkeypatch.setenv("DRFLOW_TEST_DIGEST_WEBHOOK", url)
        wanted = digest_schedule(
            DigestInput(slack_channel="C0DRFLOW", webhook="env:DRFLOW_TEST_DIGEST_WEBHOOK"), (9, 0), "UTC"
        )
        async with build_worker(dev_env.client, world.runbooks, task_queue=TASK_QUEUE):
            handles = [
                await dev_env.client.create_schedule(
                    schedule_id(service), readiness_schedule(service, timedelta(hours=1))
                )
                for service in (ok, down, drifting)
            ]
            digest = await dev_env.client.create_schedule(DIGEST_SCHEDULE, wanted)
            try:
                verdicts = [
                    (await scheduled_check(dev_env, h, s)).verdict
                    for h, s in zip(handles, (ok, down, drifting), strict=True)
                ]
                assert verdicts == ["ready", "not-ready", "degraded"]
                await handles[2].pause(note="drifting: paused by the owner")
                outcome = await triggered_run(dev_env, digest, DigestOutcome)
            finally:
                await digest.delete()
                for handle in handles:
                    await handle.delete()

    by_name = {s.service: s for s in outcome.services}
    assert [s.service for s in outcome.services] == [down, drifting, new, ok]  # worst first
    assert (by_name[ok].schedule, by_name[ok].verdict, by_name[ok].checks) == ("active", "ready", 1)
    assert (by_name[down].verdict, by_name[down].not_ready) == ("not-ready", 1)
    assert by_name[drifting].schedule == "paused" and by_name[drifting].verdict == "degraded"
    assert (by_name[new].schedule, by_name[new].verdict, by_name[new].checks) == ("none", None, 0)
    assert len(outcome.broken_runbooks) == 1 and "broken.yaml" in outcome.broken_runbooks[0]
    assert outcome.sent == ["slack", "webhook"] and outcome.failed == []

    [message] = standin.top_level()
    lines = message.text.splitlines()
    assert lines[0].endswith("UTC: 4 services · 1 not ready · 1 degraded · 1 ready"), lines[0]
    assert lines[1].startswith(f"• {down}: NOT READY (last check ")
    assert lines[2] == "    - no standby region passes its health checks: a failover would have nowhere to go"
    assert any(line.startswith(f"• {drifting}: DEGRADED") for line in lines)
    assert f"Not ready in the last 24h: {down} (1 of 1)" in lines
    assert f"Schedule paused: {drifting}" in lines
    assert f"Not scheduled: {new} (drflow readiness schedule --all)" in lines
    assert f"Never checked: {new}" in lines
    assert "Runbooks that do not load, never checked: 1" in lines
    assert lines[-1].startswith("Run: ") and DIGEST_SCHEDULE in lines[-1]

    [body] = receiver.bodies
    assert body["counts"] == {"not-ready": 1, "degraded": 1, "ready": 1}
    assert [s["service"] for s in body["services"]] == [down, drifting, new, ok]
    assert "token=s3cret" not in message.text and "s3cret" not in str(outcome.model_dump())


async def test_a_channel_that_fails_is_reported_and_the_other_still_gets_the_digest(
    dev_env: WorkflowEnvironment,
    world: World,  # noqa: F811
    standin: SlackStandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world.write_runbook(f"dg-alone-{uuid.uuid4().hex[:6]}")
    with webhook_receiver() as (receiver, url):
        receiver.status = 500
        monkeypatch.setenv("DRFLOW_TEST_DIGEST_WEBHOOK", url)
        async with build_worker(dev_env.client, world.runbooks, task_queue=TASK_QUEUE):
            done = await drflow(
                "readiness", "digest", "now", "--channel", "C0DRFLOW",
                "--webhook", "env:DRFLOW_TEST_DIGEST_WEBHOOK", "--address", target(dev_env),
            )  # fmt: skip
            unknown = await drflow(
                "readiness", "digest", "now", "--channel", "C0GONE", "--address", target(dev_env)
            )
    assert unknown.returncode == 1 and "channel_not_found: check the digest's channel (--channel)" in (
        unknown.stderr
    ), unknown.stderr
    assert done.returncode == 1, done.stderr
    assert "drflow: not posted through webhook: the webhook answered HTTP 500" in done.stderr
    assert done.stdout.startswith("Readiness digest, ") and "1 service · no verdicts yet" in done.stdout
    assert len(standin.top_level()) == 1 and len(receiver.bodies) == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["schedule"], "give --channel, --webhook or both"),
        (["schedule", "--channel", "C0", "--at", "25:00"], "'25:00' is not a time of day HH:MM"),
        (["schedule", "--channel", "C0", "--timezone", "Mars/Olympus"], "not an IANA time zone"),
        (["schedule", "--webhook", "https://hooks.example/x?token=1"], "give a reference, env:NAME or file:"),
        (["now", "--window", "0s"], "the window must be longer than 0"),
    ],
)
async def test_bad_digest_input_is_refused_with_one_line_and_schedules_nothing(
    dev_env: WorkflowEnvironment, args: list[str], says: str
) -> None:
    done = await drflow("readiness", "digest", *args, "--address", target(dev_env))
    assert done.returncode == 2 and says in done.stderr, done.stderr
    schedules: list[Any] = [s async for s in await dev_env.client.list_schedules() if s.id == DIGEST_SCHEDULE]
    assert schedules == []
