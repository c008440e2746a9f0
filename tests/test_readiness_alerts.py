"""Scheduled readiness alerts that do not cry wolf: one message per change, none while nothing changes.

Real: the dev server and its schedule (each check is a triggered scheduled run, so the baseline is found by
``TemporalScheduledById`` as in production), BIND, two app servers, a worker. Stand-ins: Slack (no emulator
exists; the wire-format stand-in of tests/support/slack) and a webhook receiver on loopback.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from temporalio.client import ScheduleHandle
from temporalio.testing import WorkflowEnvironment

from tests.support.sandbox import Writer, sandbox_world
from tests.support.slack.standin import SlackStandIn, slack_for_worker
from tests.test_readiness_workflow import World, world  # noqa: F401  (fixture)
from workers.cli.readiness import readiness_schedule, schedule_id
from workers.worker import build_worker
from workflows.common import TASK_QUEUE
from workflows.readiness_report import ReadinessReport

SERVICE = "alerted"
T = TypeVar("T")


@dataclass
class Receiver:
    bodies: list[dict[str, Any]] = field(default_factory=list)
    status: int = 204


@contextmanager
def webhook_receiver() -> Iterator[tuple[Receiver, str]]:
    received = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            received.bodies.append(json.loads(self.rfile.read(length)))
            self.send_response(received.status)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received, f"http://127.0.0.1:{server.server_address[1]}/hooks/drflow?token=s3cret"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlackStandIn]:
    with slack_for_worker(monkeypatch) as running:
        yield running


@pytest_asyncio.fixture
async def scheduled(
    dev_env: WorkflowEnvironment,
    world: World,  # noqa: F811
    standin: SlackStandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[ScheduleHandle, World, Receiver]]:
    with webhook_receiver() as (receiver, url):
        monkeypatch.setenv("DRFLOW_TEST_READINESS_WEBHOOK", url)
        world.write_runbook(SERVICE)
        path = world.runbooks / f"{SERVICE}.yaml"
        path.write_text(
            path.read_text()
            + "alerts: {slack_channel: C0DRFLOW, webhook: 'env:DRFLOW_TEST_READINESS_WEBHOOK'}\n"
        )
        async with build_worker(dev_env.client, world.runbooks, task_queue=TASK_QUEUE):
            handle = await dev_env.client.create_schedule(
                schedule_id(SERVICE), readiness_schedule(SERVICE, timedelta(hours=1))
            )
            try:
                yield handle, world, receiver
            finally:
                await handle.delete()


async def triggered_run(env: WorkflowEnvironment, handle: ScheduleHandle, result_type: type[T]) -> T:
    """Trigger the schedule and return the result of the run it started, once it completed."""
    query = f"TemporalScheduledById = '{handle.id}' AND ExecutionStatus = 'Completed'"
    before = {w.run_id async for w in env.client.list_workflows(query)}
    await handle.trigger()
    async with asyncio.timeout(60):
        while True:
            runs = [w async for w in env.client.list_workflows(query) if w.run_id not in before]
            if runs:
                break
            await asyncio.sleep(0.3)
    run = runs[0]
    return await env.client.get_workflow_handle(run.id, run_id=run.run_id, result_type=result_type).result()


async def scheduled_check(
    env: WorkflowEnvironment, handle: ScheduleHandle, service: str = SERVICE
) -> ReadinessReport:
    """Trigger the service's schedule and return the run's report."""
    assert handle.id == schedule_id(service)
    return await triggered_run(env, handle, ReadinessReport)


async def test_a_change_is_told_once_each_way_and_a_failing_channel_never_fails_the_check(
    dev_env: WorkflowEnvironment,
    scheduled: tuple[ScheduleHandle, World, Receiver],
    standin: SlackStandIn,
) -> None:
    handle, service_world, receiver = scheduled

    first = await scheduled_check(dev_env, handle)
    assert first.verdict == "ready" and first.alert is not None and not first.alert.changed
    assert standin.top_level() == [] and receiver.bodies == []  # a first check that is ready says nothing

    service_world.region_b.behaviour.status = 500  # the only standby fails: nowhere to fail over to
    broken = await scheduled_check(dev_env, handle)
    assert broken.verdict == "not-ready"
    assert broken.alert is not None and broken.alert.changed and broken.alert.sent == ["slack", "webhook"]
    [message] = standin.top_level()
    assert message.text.startswith(f"Readiness of {SERVICE}: READY → NOT READY\n• no standby region passes")
    assert "Run: http://localhost:8233/namespaces/default/workflows/" in message.text
    [body] = receiver.bodies
    assert (body["service"], body["verdict"], body["previous_verdict"]) == (SERVICE, "not-ready", "ready")
    assert body["reasons"] == broken.reasons

    same = await scheduled_check(dev_env, handle)
    assert same.alert is not None and not same.alert.changed  # nothing changed: nothing told
    assert len(standin.top_level()) == 1 and len(receiver.bodies) == 1

    service_world.region_b.behaviour.status = 200
    receiver.status = 500  # the webhook breaks just as the service recovers
    recovered = await scheduled_check(dev_env, handle)
    assert recovered.verdict == "ready"
    assert recovered.alert is not None and recovered.alert.sent == ["slack"]
    assert recovered.alert.failed == ["webhook: the webhook answered HTTP 500"]
    assert "s3cret" not in json.dumps(recovered.model_dump(mode="json"))  # the URL's token stays out
    assert standin.top_level()[-1].text.startswith(f"Readiness of {SERVICE}: NOT READY → READY")


async def test_lag_creeping_on_the_sandbox_is_told_once_and_its_end_once(
    dev_env: WorkflowEnvironment, standin: SlackStandIn
) -> None:
    """The sandbox's real PostgreSQL pair: replay paused on the standby while the primary takes writes, so
    the lag grows past the warning fraction of the RPO. One message when it starts, none while it stays,
    one when replay resumes."""
    with sandbox_world() as sandbox:
        sandbox.write_runbook(
            # Warn at 6 s of lag, fail at 2 min: far apart, so a check that a loaded machine slows by
            # many seconds still sees a warning, not a breach. The RTO is long enough that its cutover
            # budget stays clear of the same 5 % fraction.
            objectives__rpo="2m",
            objectives__rto="20m",
            objectives__warn_at=0.05,
            alerts={"slack_channel": "C0DRFLOW"},
        )
        async with build_worker(dev_env.client, sandbox.runbooks, task_queue=TASK_QUEUE):
            service = sandbox.service
            handle = await dev_env.client.create_schedule(
                schedule_id(service), readiness_schedule(service, timedelta(hours=1))
            )
            writer = Writer(sandbox, "region-a")
            writer.start()
            try:
                calm = await scheduled_check(dev_env, handle, service)
                assert calm.verdict == "ready" and calm.warnings == [], calm.reasons
                with sandbox.connect("region-b") as standby:
                    standby.execute("SELECT pg_wal_replay_pause()")
                await asyncio.sleep(8)  # > 0.05 x 2 min of lag, well within the RPO
                lagging = await scheduled_check(dev_env, handle, service)
                assert [w.code for w in lagging.warnings] == ["lag-near-rpo"], lagging.reasons
                assert lagging.alert is not None and lagging.alert.sent == ["slack"]
                still = await scheduled_check(dev_env, handle, service)
                assert [w.code for w in still.warnings] == ["lag-near-rpo"]
                assert still.alert is not None and not still.alert.changed
                with sandbox.connect("region-b") as standby:
                    standby.execute("SELECT pg_wal_replay_resume()")
                await asyncio.sleep(1)
                resolved = await scheduled_check(dev_env, handle, service)
                assert resolved.verdict == "ready" and resolved.warnings == [], resolved.reasons
            finally:
                writer.stop()
                await handle.delete()
    messages = [m.text.splitlines()[0] for m in standin.top_level()]
    assert messages == [
        f"Readiness of {service}: READY → DEGRADED",  # replay paused is a reason, the lag an early warning
        f"Readiness of {service}: DEGRADED → READY",
    ]
    assert "early warning: replication lag region-a → region-b is" in standin.top_level()[0].text
    assert "resolved: lag-near-rpo" in standin.top_level()[1].text
