"""Archive a finished run's history and audit report, so the evidence outlives Temporal's retention.

The activity needs the Temporal client (to see the run close and fetch its history), so it lives on a class
built with the worker's client, like the lock activities. Where it writes comes from the worker's
environment (``DRFLOW_ARCHIVE``, ``DRFLOW_ARCHIVE_RETENTION_DAYS``, ``DRFLOW_ARCHIVE_LOCK_MODE``; see
``workers.audit.archive``), read when the worker starts.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from runbooks.model import StrictModel
from workers.audit.archive import ArchiveConfig, ArchiveError, ArchiveResult, archive_history

RUN_STILL_OPEN = "RunStillOpen"
RUN_NOT_FOUND = "RunNotFound"
ARCHIVE_REFUSED = "ArchiveRefused"
# The parent closes a moment after it started its archive: look again soon, then less often.
FIRST_POLL = timedelta(milliseconds=100)
MAX_POLL = timedelta(seconds=2)


class ArchiveRequest(StrictModel):
    workflow_id: str
    run_id: str
    kind: str
    wait_seconds: float = 120.0


class ArchiveActivities:
    def __init__(self, client: Client, config: ArchiveConfig | None = None) -> None:
        self._client = client
        self._config = config or ArchiveConfig.from_env()

    @activity.defn(name="archive_run")
    async def archive_run(self, request: ArchiveRequest) -> ArchiveResult:
        """Wait (bounded, heartbeating) for the run to close, then archive its full history and report.

        Idempotent: an archive already written for the run is verified and returned, never overwritten.
        """
        handle = self._client.get_workflow_handle(request.workflow_id, run_id=request.run_id)
        deadline = time.monotonic() + request.wait_seconds
        poll = FIRST_POLL.total_seconds()
        while True:
            try:
                description = await handle.describe()
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    raise ApplicationError(
                        f"{request.workflow_id} (run {request.run_id}) is not known to Temporal: "
                        "nothing to archive (past the namespace's retention?)",
                        type=RUN_NOT_FOUND,
                        non_retryable=True,
                    ) from err
                raise
            if description.status != WorkflowExecutionStatus.RUNNING:
                break
            if time.monotonic() > deadline:
                raise ApplicationError(
                    f"{request.workflow_id} is still running after {request.wait_seconds:g}s; "
                    "archiving is retried until it closes",
                    type=RUN_STILL_OPEN,
                )
            activity.heartbeat(f"waiting for {request.workflow_id} to close")
            await asyncio.sleep(poll)
            poll = min(poll * 2, MAX_POLL.total_seconds())
        history = await handle.fetch_history()
        try:
            return await asyncio.to_thread(archive_history, history, request.kind, self._config)
        except ArchiveError as err:
            raise ApplicationError(str(err), type=ARCHIVE_REFUSED, non_retryable=True) from err
