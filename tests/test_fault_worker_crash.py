"""A worker killed with -9 in the middle of a blocking call costs about a heartbeat timeout.

The sandbox's real pair, with the fault proxy (activities/faults/proxy.py) in front of the standby: the
proxy forwards ``pg_promote`` and drops its answer, so the worker sits in the call exactly as a worker does
whose promotion takes long, the server promotes, and then the worker is killed. Before the heartbeats
beside blocking calls (activities/heartbeat.py) the retry waited for ``db_promote``'s 120 s start-to-close
timeout; now the server notices the silence after the 10 s heartbeat timeout, and the history says so.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.testing import WorkflowEnvironment

from activities.faults.proxy import ProxyFaultSpec, TcpFaultProxy
from tests.support.failover import wait_for_gate
from tests.support.postgres import eventually
from tests.support.sandbox import sandbox_world
from tests.test_cli_check import target
from tests.test_cli_runbooks import DRFLOW
from tests.test_failover_sandbox import REGION_B, answers, in_recovery, start
from workers.sandbox.named import soa_serial
from workflows.common import HEARTBEAT
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput

pytestmark = pytest.mark.faults


async def test_a_worker_killed_mid_promotion_is_replaced_after_a_heartbeat_timeout_and_promotes_once(
    dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    with sandbox_world() as world:
        standby = world.runbook.database.nodes["region-b"]  # type: ignore[union-attr]
        with TcpFaultProxy(standby.host, standby.port) as proxy:
            world.write_runbook(**{"database__nodes__region-b__port": proxy.port})
            env = {**os.environ, "TEMPORAL_ADDRESS": target(dev_env), "DRFLOW_RUNBOOKS": str(world.runbooks)}

            async def spawn_worker() -> asyncio.subprocess.Process:
                return await asyncio.create_subprocess_exec(
                    *DRFLOW, "worker", "--task-queue", task_queue, env=env,
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                )  # fmt: skip

            names = world.sandbox._named_pair()
            serial_before = soa_serial(world.runbook.dns.zone, names.primary_port) or 0
            first = await spawn_worker()
            second: asyncio.subprocess.Process | None = None
            try:
                handle = await start(dev_env, world, task_queue)
                await wait_for_gate(dev_env.client, handle.id)
                proxy.set_fault(ProxyFaultSpec(mode="blackhole", after=b"pg_promote"))
                await handle.execute_update(
                    FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go")
                )
                assert await asyncio.to_thread(proxy.triggered.wait, 90), (
                    "the promotion never reached the proxy"
                )
                # The server acts on the call; its answer is what the proxy holds back.
                await asyncio.to_thread(
                    eventually, lambda: not in_recovery(world, "region-b"), what="region-b promoted"
                )
                first.send_signal(signal.SIGKILL)
                await first.wait()
                killed = time.monotonic()
                second = await spawn_worker()
                report = await asyncio.wait_for(handle.result(), 120)
                recovered = time.monotonic() - killed
            finally:
                for worker in (first, second):
                    if worker is not None and worker.returncode is None:
                        worker.send_signal(signal.SIGTERM)
                        await worker.wait()

        assert report.outcome == "completed", report.messages
        # One promotion: the first attempt's, which the retry recognised from the heartbeat sent before
        # pg_promote and reports as this run's promotion (not as a primary found in place).
        promotion = report.promotion
        assert promotion is not None and promotion.timeline == 2 and promotion.writable
        assert promotion.promoted and not promotion.already_primary
        assert "region-b promoted by attempt 1, whose answer was lost" in " ".join(promotion.actions)
        assert soa_serial(world.runbook.dns.zone, names.primary_port) == serial_before + 1
        assert await answers(world) == [[REGION_B], [REGION_B]]

        # The retry came from the heartbeat timeout, not the 120 s start-to-close timeout.
        history = await handle.fetch_history()
        scheduled = {
            e.event_id: e.activity_task_scheduled_event_attributes
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        }
        promotes = [
            e.activity_task_started_event_attributes
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
            and scheduled[e.activity_task_started_event_attributes.scheduled_event_id].activity_type.name
            == "db_promote"
        ]
        [started] = promotes
        assert started.attempt == 2
        timeout = started.last_failure.timeout_failure_info.timeout_type
        assert timeout == TimeoutType.TIMEOUT_TYPE_HEARTBEAT, started.last_failure
        [attributes] = [s for s in scheduled.values() if s.activity_type.name == "db_promote"]
        assert attributes.heartbeat_timeout.ToTimedelta() == HEARTBEAT
        print(f"kill -9 mid-promotion: the run completed {recovered:.1f}s after the kill")
