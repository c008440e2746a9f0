"""Traces as production ships them: two processes (the CLI and a worker), each exporting over OTLP/HTTP
from the environment alone, to a receiver that decodes the wire (tests/support/otlp.py). One trace links
the CLI's start of the run to the worker's run of it and of its activities."""

from __future__ import annotations

import asyncio
import os
import signal

from temporalio.testing import WorkflowEnvironment

from tests.support.otlp import ReceivedSpan, otlp_receiver
from tests.test_cli_check import drflow, target
from tests.test_cli_runbooks import DRFLOW
from tests.test_readiness_workflow import World, world  # noqa: F401  (fixture)


async def test_a_check_from_the_cli_and_its_run_on_a_worker_are_one_trace_over_otlp(
    dev_env: WorkflowEnvironment,
    world: World,  # noqa: F811
) -> None:
    world.write_runbook("traced")
    with otlp_receiver() as receiver:
        base = {
            **os.environ,
            "TEMPORAL_ADDRESS": target(dev_env),
            "DRFLOW_RUNBOOKS": str(world.runbooks),
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: the worker's batches leave while the test waits
        }
        worker = await asyncio.create_subprocess_exec(
            *DRFLOW, "worker", env={**base, "OTEL_SERVICE_NAME": "drflow-worker"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            checked = await drflow("check", "traced", env={**base, "OTEL_SERVICE_NAME": "drflow-cli"})
            assert checked.returncode == 0, checked.stderr
            wanted = {"RunActivity:probe_health", "RunWorkflow:Readiness"}
            async with asyncio.timeout(30):
                while True:
                    if wanted <= names(receiver.received()):
                        break
                    await asyncio.sleep(0.2)
        finally:
            worker.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(worker.communicate(), 60)
        assert worker.returncode == 0, err.decode()
        spans = receiver.received()
        assert receiver.refused == []

    [started] = [s for s in spans if s.name == "StartWorkflow:Readiness"]
    assert started.service == "drflow-cli", "the CLI exported its span before it exited"
    run = [s for s in spans if s.trace_id == started.trace_id and s.service == "drflow-worker"]
    assert {"RunWorkflow:Readiness", "RunActivity:load_runbook", "RunActivity:probe_health"} <= names(run)
    [workflow] = [s for s in run if s.name == "RunWorkflow:Readiness"]
    assert workflow.parent_span_id == started.span_id, "the worker's run continues the CLI's trace"


def names(spans: list[ReceivedSpan]) -> set[str]:
    return {span.name for span in spans}
