"""The drflow worker: every workflow and activity on one task queue, stopped gracefully on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.worker import Interceptor, Worker

from activities.archive import ArchiveActivities, ArchiveWriter
from activities.database.activities import DATABASE_ACTIVITIES
from activities.dns.activities import DNS_ACTIVITIES
from activities.dns.propagation import verify_propagation
from activities.dns.reader import read_dns_record
from activities.drill_report import REPORTS_ENV, reports_dir, write_drill_report
from activities.faults.crash_point import CRASH_ENV, CrashAt, CrashPointInterceptor
from activities.health import probe_health, validate_health
from activities.readiness_alerts import ReadinessAlertActivities
from activities.readiness_digest import ReadinessDigestActivities
from activities.readiness_history import ReadinessHistoryActivities
from activities.runbook import RunbookActivities
from activities.service_lock import ServiceLockActivities
from activities.slack.activities import SLACK_ACTIVITIES
from activities.traffic.activities import TRAFFIC_ACTIVITIES
from runbooks.loader import RUNBOOKS_ENV, LoadedRunbook, load_directory
from runbooks.people import PeopleFileError, people_for
from workers.audit.archive import ArchiveConfig, ArchiveError, HistoryArchiver
from workflows.archive import ArchiveRunWorkflow
from workflows.common import TASK_QUEUE
from workflows.drill import DrillWorkflow
from workflows.failback import FailbackWorkflow
from workflows.failover import FailoverWorkflow
from workflows.metrics import RunMetricsInterceptor
from workflows.readiness import ReadinessWorkflow
from workflows.readiness_digest import ReadinessDigestWorkflow
from workflows.runner import workflow_runner
from workflows.service_lock import ServiceLockWorkflow

log = logging.getLogger("drflow.worker")

WORKFLOWS: Sequence[type] = (
    ReadinessWorkflow,
    ReadinessDigestWorkflow,
    FailoverWorkflow,
    FailbackWorkflow,
    DrillWorkflow,
    ServiceLockWorkflow,
    ArchiveRunWorkflow,
)
# In-flight activities get this long to finish after SIGTERM before they are cancelled; a promotion or a
# DNS change half-done is worse than a slow deploy.
GRACEFUL_SHUTDOWN = timedelta(seconds=30)


def check_runbooks(directory: Path) -> None:
    """Say at start what the worker serves. An empty or missing directory is logged, not fatal.

    Runbooks are read on every run (``load_runbook``), so runbooks mounted later are served without a
    restart, and the same worker also finishes the archives and service locks of runs already in flight; a
    worker that refused to start would stop those too and, under ``restart: unless-stopped``, bury the reason
    in a restart loop. A run for a service the directory lacks fails at once with ``UnknownService``, naming
    the directory.
    """
    where = directory.absolute()
    if not directory.is_dir():
        log.warning(
            "runbooks directory %s does not exist: no service can be failed over, drilled or checked until "
            "runbooks are mounted there (or %s / --runbooks names another directory)",
            where,
            RUNBOOKS_ENV,
        )
        return
    loaded, problems = load_directory(directory)
    for problem in problems:
        log.warning("runbook not served: %s", problem)
    if not loaded:
        log.warning(
            "no runbooks in %s: no service can be failed over, drilled or checked until *.yaml runbooks "
            "are put there (or %s / --runbooks names another directory)",
            where,
            RUNBOOKS_ENV,
        )
        return
    log.info("serving %d runbook(s) from %s: %s", len(loaded), where,
             ", ".join(sorted(item.runbook.service for item in loaded)))  # fmt: skip
    _log_people(loaded, directory)


def _log_people(loaded: list[LoadedRunbook], directory: Path) -> None:
    """Say at start what a run would only find at its first step: approvals the people file cannot back."""
    unverified: list[str] = []
    for item in loaded:
        service = item.runbook.service
        try:
            snapshot = people_for(service, item.runbook.approvals, directory)
        except PeopleFileError as err:
            log.warning(
                "runs of %s will be refused until its approvals match the people file: %s", service, err
            )
            continue
        if snapshot is None:
            unverified.append(service)
    if unverified:
        log.warning(
            "no people file for %s: approvers are unverified strings (docs/approvals.md)",
            ", ".join(unverified),
        )


def _unwritable(folder: Path) -> str | None:
    """Why files could not be created in ``folder`` (or the directories leading to it), or None.

    Asks the kernel (``access(2)``, which also reports a read-only filesystem to root) about the nearest
    directory that exists, and writes nothing: the check must not leave directories behind where it runs.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this process (read-only filesystem or permissions)"
    return None


def check_outputs() -> None:
    """Log where archives and drill reports go; an ERROR at start if that place is not writable.

    A read-only root filesystem (docker-compose.yml) and a relative default would otherwise surface only at
    the end of a run: an archive retried for a day, a drill failing after it has failed over and back.
    """
    try:
        archive = ArchiveConfig.from_env()
    except ArchiveError as err:
        log.error("%s", err)
    else:
        if not archive.enabled:
            log.info("archiving is off (DRFLOW_ARCHIVE=%s)", archive.location)
        elif archive.location.startswith("s3://"):
            log.info("archives go to %s", archive.location)
        else:
            folder = Path(archive.location).absolute()
            problem = _unwritable(folder)
            if problem:
                log.error(
                    "archives cannot be written to %s: %s; every run's archive will fail until "
                    "DRFLOW_ARCHIVE names a writable directory (a volume) or s3://bucket/prefix",
                    folder, problem,
                )  # fmt: skip
            else:
                log.info("archives go to %s", folder)
    reports = reports_dir().absolute()
    problem = _unwritable(reports)
    if problem:
        log.error(
            "drill reports cannot be written to %s: %s; every drill will fail at its last step until %s "
            "names a writable directory (a volume)", reports, problem, REPORTS_ENV
        )  # fmt: skip
    else:
        log.info("drill reports go to %s", reports)


def activities_for(client: Client, runbooks_dir: Path, archive: ArchiveWriter | None = None) -> list[Any]:
    """Every activity the workflows call; ``archive`` defaults to the audit library as configured."""
    lock = ServiceLockActivities(client)
    return [
        RunbookActivities(runbooks_dir).load_runbook,
        RunbookActivities(runbooks_dir).load_people,
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
        ReadinessAlertActivities(client).readiness_alert,
        ReadinessHistoryActivities(client).past_checks,
        ReadinessDigestActivities(client, runbooks_dir).readiness_digest,
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
        workflow_runner=workflow_runner(),
        interceptors=[RunMetricsInterceptor(), *crash_points()],  # metrics: docs/observability.md
    )


def crash_points() -> list[Interceptor]:
    """The fault sweep's self-kill (docs/reliability.md), only while DRFLOW_FAULT_CRASH_AT is set."""
    at = CrashAt.from_env()
    if at is None:
        return []
    log.warning("%s=%s: this worker kills itself with -9 at that activity boundary", CRASH_ENV, at)
    return [CrashPointInterceptor(at)]


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
