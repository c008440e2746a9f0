"""kill -9 of the Temporal server itself in the middle of a failover, then a restart on the same SQLite file:
the embedded default of the quick start (``workers/dev.py`` ``DevServer``), not the suite's in-memory one.

The run is durable in the server's database: after the restart the same worker (its connection reconnects
by itself) carries the run on from where the server's history stands. An activity that finished while the
server was down could not report; the server times it out (heartbeat) and runs it again, and the retry
recognises what the first attempt did. The record changes once, the standby is promoted once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.support.failover import wait_for_gate
from tests.support.sandbox import SandboxWorld, sandbox_world
from tests.test_failover_sandbox import answers
from workers.dev import DevConfig, DevServer, register_search_attributes
from workers.sandbox.named import free_port, soa_serial
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverRequest

pytestmark = pytest.mark.faults

REGION_B = "127.0.2.1"


def timeline(world: SandboxWorld, region: str) -> int:
    with world.connect(region) as conn:
        row = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()
    assert row is not None
    return int(row[0])


async def test_a_temporal_server_killed_mid_failover_and_restarted_loses_nothing_and_repeats_nothing(
    tmp_path: Path, task_queue: str
) -> None:
    config = DevConfig(state_dir=tmp_path / "temporal", port=free_port(), ui_port=free_port(), worker=False)
    server = DevServer(config)
    server.start()
    try:
        client = await server.wait_until_serving()
        await register_search_attributes(client, config.namespace)
        with sandbox_world() as world:
            before = soa_serial(world.runbook.dns.zone, world.sandbox.ports.dns_primary)
            async with build_worker(client, world.runbooks, task_queue=task_queue):
                request = FailoverRequest(
                    service=world.service, target="region-b", reason="server crash test", requested_by="alice"
                )
                handle = await client.start_workflow(
                    FailoverWorkflow.run,
                    request,
                    id=f"failover-{uuid.uuid4().hex[:8]}",
                    task_queue=task_queue,
                )
                await wait_for_gate(client, handle.id)
                await handle.execute_update(
                    FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go")
                )
                await asyncio.sleep(1.0)  # into the fence and promotion steps

                assert server.process is not None
                os.kill(server.process.pid, signal.SIGKILL)
                server.process.wait(10)
                killed_at = time.monotonic()
                await asyncio.sleep(3)  # the worker's calls fail meanwhile; its activities go on
                server.start()  # the same database file, the same port
                await server.wait_until_serving()
                report = await asyncio.wait_for(handle.result(), 240)
                resumed_after = time.monotonic() - killed_at
            history = await handle.fetch_history()
            after = soa_serial(world.runbook.dns.zone, world.sandbox.ports.dns_primary)
            served = await answers(world)
            promoted_timeline = timeline(world, "region-b")
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.terminate()
            server.process.wait(20)

    assert report.outcome == "completed", report.messages
    assert before is not None and after == before + 1, "one DNS change"
    assert promoted_timeline == 2, "one promotion"
    assert served == [[REGION_B], [REGION_B]]
    assert report.promotion is not None and report.promotion.promoted and report.promotion.timeline == 2
    print(f"completed {resumed_after:.1f}s after the server's kill -9; {len(history.events)} events")
