"""The drflow worker: every workflow and activity on one task queue, stopped gracefully on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from activities.archive import ArchiveActivities
from activities.canary import analyse, read_weights, set_weights
from activities.database import DATABASE_ACTIVITIES
from activities.dns_providers import apply_dns_change, plan_dns_change
from activities.dns_reader import read_dns_record
from activities.dns_sync import wait_for_change
from activities.drill_report import write_drill_report
from activities.health import probe_health, validate_health
from activities.preflight import PREFLIGHT_ACTIVITIES
from activities.propagation import verify_propagation
from activities.runbook import RunbookActivities
from activities.service_lock import ServiceLockActivities
from activities.slack.activities import SLACK_ACTIVITIES
from activities.traffic import TRAFFIC_ACTIVITIES
from workflows.archive import ArchiveRunWorkflow
from workflows.common import TASK_QUEUE
from workflows.drill import DrillWorkflow
from workflows.failback import FailbackWorkflow
from workflows.failover import FailoverWorkflow
from workflows.readiness import ReadinessWorkflow
from workflows.service_lock import ServiceLockWorkflow

log = logging.getLogger("drflow.worker")

WORKFLOWS: Sequence[type] = (
    ReadinessWorkflow,
    FailoverWorkflow,
    FailbackWorkflow,
    DrillWorkflow,
    ServiceLockWorkflow,
    ArchiveRunWorkflow,
)
# In-flight activities get this long to finish after SIGTERM before they are cancelled; a promotion or a
# DNS change half-done is worse than a slow deploy.
GRACEFUL_SHUTDOWN = timedelta(seconds=30)


def activities_for(client: Client, runbooks_dir: Path) -> list[Any]:
    lock = ServiceLockActivities(client)
    return [
        RunbookActivities(runbooks_dir).load_runbook,
        probe_health,
        validate_health,
        read_dns_record,
        plan_dns_change,
        apply_dns_change,
        verify_propagation,
        lock.acquire,
        lock.holder_status,
        *DATABASE_ACTIVITIES,
        read_weights,
        set_weights,
        analyse,
        write_drill_report,
        wait_for_change,
        *PREFLIGHT_ACTIVITIES,
        *TRAFFIC_ACTIVITIES,
        *ArchiveActivities(client).activities(),
        *SLACK_ACTIVITIES,
    ]


def build_worker(
    client: Client,
    runbooks_dir: Path,
    task_queue: str = TASK_QUEUE,
    executor: ThreadPoolExecutor | None = None,
) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=activities_for(client, runbooks_dir),
        activity_executor=executor
        or ThreadPoolExecutor(max_workers=16, thread_name_prefix="drflow-activity"),
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
    )


async def run_until_signalled(worker: Worker, stop: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or ``stop``), then drain: polls stop, running activities may finish."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with worker:
            await stop.wait()
            log.info("stopping: waiting up to %ss for running activities", GRACEFUL_SHUTDOWN.total_seconds())
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
