"""The canary guards the database switch (issue "Production paths", item 6), on a real sandbox.

Found on the sandbox: the database switched before the 5 % stage, the analysis read ``/`` (a standby answers
it), and region-b's app, still weighted in HAProxy, refused every INSERT while every analysis passed; a failed
analysis sent all traffic back to region-b, whose database was then a standby; and nothing stopped a run
from ending completed with DNS on a region whose database takes no writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest
import pytest_asyncio
from temporalio.client import WorkflowHandle
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.traffic.activities import ReadWeightsRequest, SetWeightsRequest, read_weights, set_weights
from activities.traffic.analysis import CanaryRequest, CanaryResult, analyse, expected_share
from runbooks.model import CanaryAnalysis, HaproxyTraffic
from tests.support.sandbox import SandboxWorld, sandbox_world
from tests.test_failback_sandbox import approve, fail_over, start_failback
from tests.test_failover_sandbox import answers, in_recovery
from workers.sandbox.processes import stop_process
from workers.worker import build_worker
from workflows.failback import FailbackWorkflow
from workflows.failback_models import FailbackReport
from workflows.failover_models import DecisionInput

REGION_A = "127.0.1.1"
READS = CanaryAnalysis(
    path="/", requests=100, duration=timedelta(seconds=1), max_p95_latency=timedelta(seconds=1)
)
READS_AND_WRITES = READS.model_copy(
    update={"write_path": "/write", "write_method": "POST", "write_share": 0.5}
)
Handle = WorkflowHandle[FailbackWorkflow, FailbackReport]


@pytest.fixture
def world() -> Iterator[SandboxWorld]:
    with sandbox_world() as built:
        built.write_runbook(failback__analysis__duration="1s", failback__analysis__requests=100)
        yield built


@pytest_asyncio.fixture
async def worker_on(dev_env: WorkflowEnvironment, world: SandboxWorld, task_queue: str) -> AsyncIterator[str]:
    async with build_worker(dev_env.client, world.runbooks, task_queue=task_queue):
        yield task_queue


def haproxy(world: SandboxWorld) -> HaproxyTraffic:
    traffic = world.runbook.traffic
    assert isinstance(traffic, HaproxyTraffic)
    return traffic


async def weights(world: SandboxWorld) -> dict[str, int]:
    return (await read_weights(ReadWeightsRequest(traffic=haproxy(world)))).weights


async def canary(world: SandboxWorld, analysis: CanaryAnalysis, split: dict[str, int]) -> CanaryResult:
    request = CanaryRequest(
        url=haproxy(world).frontend_url, analysis=analysis, expected_share=expected_share(split)
    )
    result: CanaryResult = await ActivityEnvironment().run(analyse, request)
    return result


async def until(handle: Handle, done: object, seconds: float = 180) -> FailbackReport:
    """Query the run until ``done(report)``; a run that ends first fails the test with its messages."""
    assert callable(done)
    async with asyncio.timeout(seconds):
        while True:
            report: FailbackReport = await handle.query(FailbackWorkflow.status)
            if done(report):
                return report
            assert report.outcome == "running", (report.outcome, report.messages)
            await asyncio.sleep(0.1)


def stop_app(world: SandboxWorld, region: str) -> None:
    pid = world.sandbox._app_pid(region)
    assert pid is not None
    stop_process(pid, 5)


# ------------------------------------------------------------------------------------------ the analysis
async def test_reads_pass_while_a_region_refuses_every_write_and_the_write_path_fails_the_stage(
    world: SandboxWorld,
) -> None:
    # region-b's database is the standby; its app writes only through it, as an app without a writer
    # endpoint does. Half the traffic goes there.
    world.sandbox.restart_app("region-b", follow_primary=False)
    split = {"region-a": 50, "region-b": 50}
    await ActivityEnvironment().run(set_weights, SetWeightsRequest(traffic=haproxy(world), weights=split))

    reads = await canary(world, READS, split)
    assert reads.passed, reads.reasons  # the defect: a canary of reads proves nothing about writes
    assert reads.write_requests == 0

    both = await canary(world, READS_AND_WRITES, split)
    assert not both.passed
    assert both.write_requests == 50 and both.write_errors >= 15, both
    assert set(both.write_error_kinds) == {"HTTP 503 from region-b"}, both.write_error_kinds
    assert any(r.startswith("writes failed:") and "read-only transaction" in r for r in both.reasons), (
        both.reasons
    )

    # The same app following the primary (libpq multi-host, target_session_attrs=read-write) writes.
    world.sandbox.restart_app("region-b", follow_primary=True)
    fixed = await canary(world, READS_AND_WRITES, split)
    assert fixed.passed and fixed.write_requests == 50 and fixed.write_errors == 0, fixed.reasons


# ------------------------------------------------------------------------------ database first (default)
async def test_a_source_region_that_cannot_write_after_the_switch_fails_the_canary_and_a_person_decides(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    await fail_over(dev_env, world, worker_on)
    # The runbook says region-b's app follows the primary; this one does not: the canary must find out.
    world.sandbox.restart_app("region-b", follow_primary=False)
    handle = await start_failback(dev_env, world, worker_on)
    await approve(handle, dev_env, "failback")
    report = await until(handle, lambda r: r.waiting_step is not None)

    assert report.waiting_step == "analysis at 5%", report.steps
    stage = report.stages[-1]
    assert stage.percent == 5 and stage.outcome == "failed" and stage.analysis is not None
    assert stage.analysis.write_errors > 0 and "HTTP 503 from region-b" in stage.analysis.write_error_kinds
    assert any(r.startswith("writes failed:") for r in stage.analysis.reasons), stage.analysis.reasons
    # Not rolled back: region-b's database is a standby now, sending it all traffic would refuse every write.
    assert not in_recovery(world, "region-a") and in_recovery(world, "region-b")
    assert await weights(world) == {"region-a": 5, "region-b": 95}

    await handle.execute_update(
        FailbackWorkflow.decide,
        DecisionInput(decision="abort", operator="carol", reason="move region-b's writes by hand"),
    )
    final = await handle.result()
    assert final.outcome == "aborted"
    assert not any(s.name.startswith("roll back") for s in final.steps), final.steps
    assert any("traffic stays region-a 5%, region-b 95%" in m for m in final.messages), final.messages
    assert await weights(world) == {"region-a": 5, "region-b": 95}


async def test_a_failed_analysis_after_the_switch_waits_for_a_person_and_a_retry_finishes_home(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    await fail_over(dev_env, world, worker_on)
    handle = await start_failback(dev_env, world, worker_on)
    await approve(handle, dev_env, "failback")
    await until(handle, lambda r: any(s.percent == 5 and s.outcome == "passed" for s in r.stages))
    stop_app(world, "region-a")
    report = await until(handle, lambda r: r.waiting_step is not None)

    assert report.waiting_step == "analysis at 25%", report.steps
    assert report.promotion is not None and report.stages[-1].outcome == "failed"
    assert await weights(world) == {"region-a": 25, "region-b": 75}, "no automatic rollback after the switch"

    world.sandbox.restart_app("region-a")
    await handle.execute_update(
        FailbackWorkflow.decide, DecisionInput(decision="retry", operator="carol", reason="app restarted")
    )
    await approve(handle, dev_env, "failback-100")
    final = await handle.result()
    assert final.outcome == "completed", final.messages
    assert [(s.percent, s.outcome) for s in final.stages] == [(5, "passed"), (25, "passed"), (50, "passed"),
                                                              (100, "passed")]  # fmt: skip
    analysis_step = next(s for s in final.steps if s.name == "analysis at 25%")
    assert analysis_step.outcome == "ok", analysis_step
    assert [(d.step, d.decision) for d in final.decisions] == [("analysis at 25%", "retry")]
    writable = next(s for s in final.steps if s.name == "confirm region-a reaches a writable database")
    assert writable.outcome == "ok" and "region-a: write verified" in writable.detail, writable
    assert await weights(world) == {"region-a": 100, "region-b": 0}


# ------------------------------------------------------------------------------------------ database last
async def test_database_last_rolls_a_failed_canary_back_by_itself_onto_the_unmoved_primary(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    world.write_runbook(failback__database="last")
    await fail_over(dev_env, world, worker_on)
    handle = await start_failback(dev_env, world, worker_on)
    await approve(handle, dev_env, "failback")
    await until(handle, lambda r: any(s.percent == 5 and s.outcome == "passed" for s in r.stages))
    assert in_recovery(world, "region-a") and not in_recovery(world, "region-b"), "nothing switched yet"
    stop_app(world, "region-a")
    final = await handle.result()

    assert final.outcome == "aborted", final.messages
    assert [(s.percent, s.outcome) for s in final.stages] == [(5, "passed"), (25, "rolled-back")]
    assert final.fence is None and final.promotion is None and final.decisions == []
    assert await weights(world) == {"region-a": 0, "region-b": 100}
    assert in_recovery(world, "region-a") and not in_recovery(world, "region-b")
    assert any("the database stays on region-b (primary): it was not switched" in m for m in final.messages)


async def test_database_last_switches_after_the_100_percent_stage_and_before_dns(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    world.write_runbook(failback__database="last")
    await fail_over(dev_env, world, worker_on)
    handle = await start_failback(dev_env, world, worker_on)
    await approve(handle, dev_env, "failback")
    at_100 = await until(handle, lambda r: r.open_gate == "failback-100")
    assert at_100.fence is None and at_100.promotion is None
    assert at_100.plan is not None and at_100.plan.database_last
    await approve(handle, dev_env, "failback-100")
    final = await handle.result()

    assert final.outcome == "completed", final.messages
    names = [s.name for s in final.steps]
    assert names.index("canary 100%") < names.index("fence region-b") < names.index("promote region-a")
    assert names.index("promote region-a") < names.index(f"cut DNS over to {REGION_A}")
    for stage in final.stages:
        assert stage.outcome == "passed" and stage.analysis is not None and stage.analysis.write_errors == 0
        assert stage.analysis.write_requests == 50, stage.analysis
    assert final.data_loss is not None and final.data_loss.zero_proven
    assert not in_recovery(world, "region-a") and in_recovery(world, "region-b")
    assert await answers(world) == [[REGION_A], [REGION_A]]


# -------------------------------------------------------------------------------------------- the end
async def test_a_run_whose_dns_region_cannot_write_at_the_end_never_ends_completed(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    await fail_over(dev_env, world, worker_on)
    world.write_runbook(traffic=None, failback=None)
    handle = await start_failback(dev_env, world, worker_on)
    await approve(handle, dev_env, "failback")
    await until(handle, lambda r: r.dns_change is not None)
    # DNS now points at region-a; its database goes away (a crash after the promotion).
    world.postgres.server("region-a").stop()
    report = await until(handle, lambda r: r.waiting_step is not None)
    assert report.waiting_step == "validate health", report.steps
    await handle.execute_update(
        FailbackWorkflow.decide, DecisionInput(decision="skip", operator="carol", reason="checks are flaky")
    )
    report = await until(handle, lambda r: r.waiting_step not in (None, "validate health"))

    assert report.waiting_step == "confirm region-a reaches a writable database", report.steps
    failed = next(s for s in report.steps if s.name == report.waiting_step)
    assert failed.outcome == "failed" and failed.error is not None
    assert (
        "DNS points at region-a" in failed.error
        and "region-a:" in failed.error
        and "region-b:" in failed.error
    )
    await handle.execute_update(
        FailbackWorkflow.decide, DecisionInput(decision="abort", operator="carol", reason="DBA paged")
    )
    final = await handle.result()
    assert final.outcome == "aborted", final.messages
    assert any("the run does not end as completed" in m for m in final.messages), final.messages
