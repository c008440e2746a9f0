"""What a scheduled readiness check costs: Temporal actions per check, and its time against a plain script.

Run by hand from the repository root (never from the tests):

    .venv/bin/python benchmarks/readiness_cost.py --checks 20

It brings up the real sandbox (BIND primary and secondary, PostgreSQL primary and standby, the two apps;
``tests/support/sandbox.py``), a fresh Temporal dev server in memory and an in-process drflow worker, creates
the service's readiness schedule exactly as ``drflow readiness schedule`` does and triggers it ``--checks``
times, one after the other. From each run's history it counts what Temporal Cloud bills as actions: the
schedule's start of the run, the run's start, each activity attempt, each timer, each search-attribute
upsert, each signal and Update, each child workflow. ``set_current_details`` and queries not sent are free.

Baseline: a plain Python script doing the same observations once, with no Temporal: an HTTP GET of each
region's health URLs, one DNS query to each authoritative nameserver, and the standby's replay lag in SQL.

The monthly figure is the count times the checks a month of 500 services at every 15 minutes makes
(500 x 4 x 24 x 30 = 1,440,000). Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import dns.message
import dns.query
import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory

from runbooks.model import render_url
from tests.support.sandbox import sandbox_world
from tests.support.temporal import start_dev_server
from workers.cli.readiness import readiness_schedule, schedule_id
from workers.worker import build_worker
from workflows.common import TASK_QUEUE

SERVICES, PER_HOUR, HOURS_A_MONTH = 500, 4, 24 * 30
BILLED = {
    EventType.EVENT_TYPE_TIMER_STARTED: "timers",
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES: "upserts",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: "signals",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "updates",
    EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED: "children",
}


def actions(history: WorkflowHistory) -> dict[str, int]:
    """Billable actions of one scheduled check, by kind."""
    counts = {"schedule start": 1, "workflow start": 1, "activity attempts": 0}
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            counts["activity attempts"] += 1
        elif event.event_type in BILLED:
            counts[BILLED[event.event_type]] = counts.get(BILLED[event.event_type], 0) + 1
    return counts


async def scheduled_checks(client: Client, service: str, count: int) -> tuple[list[float], dict[str, int]]:

    handle = await client.create_schedule(
        schedule_id(service), readiness_schedule(service, timedelta(hours=1))
    )
    seconds: list[float] = []
    per_check: dict[str, int] = {}
    query = f"WorkflowType = 'Readiness' AND DrflowService = '{service}' AND ExecutionStatus = 'Completed'"
    for done in range(1, count + 1):
        started = time.perf_counter()
        await handle.trigger()
        while len([w async for w in client.list_workflows(query)]) < done:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        seconds.append(time.perf_counter() - started)
    async for execution in client.list_workflows(query, limit=1):
        history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
        per_check = actions(history)
    await handle.delete()
    return seconds, per_check


def plain_check(world: object) -> float:
    """The baseline: the same observations in a plain script."""
    runbook = world.runbook  # type: ignore[attr-defined]
    started = time.perf_counter()
    with httpx.Client(timeout=5) as http:
        for name, region in runbook.regions.items():
            for check in runbook.checks_for(name, serving=name == runbook.primary):
                http.get(render_url(check, name, region))
    for server in runbook.dns.nameservers:
        query = dns.message.make_query(runbook.dns.record, runbook.dns.type)
        dns.query.udp(query, str(server.address), port=server.port, timeout=2)
    with world.connect("region-b") as standby, standby.cursor() as cursor:  # type: ignore[attr-defined]
        cursor.execute("SELECT now() - pg_last_xact_replay_timestamp()")
        cursor.fetchone()
    return time.perf_counter() - started


async def main(checks: int) -> None:
    with sandbox_world() as world:
        env = await start_dev_server()
        try:
            async with build_worker(env.client, world.runbooks, task_queue=TASK_QUEUE):
                seconds, per_check = await scheduled_checks(env.client, world.service, checks)
        finally:
            await env.shutdown()
        baseline = [plain_check(world) for _ in range(checks)]
    total = sum(per_check.values())
    month = SERVICES * PER_HOUR * HOURS_A_MONTH
    print(f"readiness checks of {world.service}, {checks} scheduled runs triggered one after the other")
    print(f"{'':32}{'drflow (schedule)':>20}{'plain script':>16}")
    p50, base50 = statistics.median(seconds) * 1000, statistics.median(baseline) * 1000
    print(f"{'check, p50 (ms)':32}{p50:>20.0f}{base50:>16.0f}")
    print(f"{'check, max (ms)':32}{max(seconds) * 1000:>20.0f}{max(baseline) * 1000:>16.0f}")
    print(f"{'actions per check':32}{total:>20}{0:>16}")
    for kind, count in per_check.items():
        print(f"  {kind:30}{count:>20}")
    print(f"500 services every 15 minutes: {month:,} checks/month = {month * total:,} actions/month")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=20, help="scheduled runs to trigger")
    args = parser.parse_args()
    asyncio.run(main(args.checks))
