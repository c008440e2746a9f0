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

from activities.archive import ArchiveActivities, ArchiveWriter
from activities.database.activities import DATABASE_ACTIVITIES
from activities.dns.activities import DNS_ACTIVITIES
from activities.dns.propagation import verify_propagation
from activities.dns.reader import read_dns_record
from activities.drill_report import write_drill_report
from activities.health import probe_health, validate_health
from activities.runbook import RunbookActivities
from activities.service_lock import ServiceLockActivities
from activities.slack.activities import SLACK_ACTIVITIES
from activities.traffic.activities import TRAFFIC_ACTIVITIES
from workers.audit.archive import HistoryArchiver
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


def activities_for(client: Client, runbooks_dir: Path, archive: ArchiveWriter | None = None) -> list[Any]:
    """Every activity the workflows call; ``archive`` defaults to the audit library as configured."""
    lock = ServiceLockActivities(client)
    return [
        RunbookActivities(runbooks_dir).load_runbook,
        probe_health,
        validate_health,
        read_dns_record,
        verify_propagation,
        *DNS_ACTIVITIES,
        lock.acquire,
        lock.holder_status,
        *DATABASE_ACTIVITIES,
        *TRAFFIC_ACTIVITIES,
        write_drill_report,
        *ArchiveActivities(client, archive or HistoryArchiver()).activities(),
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
