"""Archive a finished run's history and audit report, so the evidence outlives Temporal's retention.

Two activities, both needing the Temporal client, so they live on a class built with the worker's client
like the lock activities: ``archive_start`` (a run's last step) starts the ``ArchiveRun`` workflow for the
run, and ``archive_run`` (ArchiveRun's only step) waits for the run to close and archives it. Where the
archive goes comes from the worker's environment (``DRFLOW_ARCHIVE``, ``DRFLOW_ARCHIVE_RETENTION_DAYS``,
``DRFLOW_ARCHIVE_LOCK_MODE``; see ``workers.audit.archive``), read when the worker starts and handed
in as an ``ArchiveWriter``; with ``DRFLOW_ARCHIVE=off`` ``archive_start`` starts nothing.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import Field
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHistory
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.codec import CodecError, decode_history
from activities.errors import ArchiveRefused, ErrorType
from activities.heartbeat import beating_async
from activities.search_attributes import KIND_ATTR, SERVICE_ATTR
from activities.start_input import StartInput
from runbooks.model import StrictModel

ARCHIVE_ENV = "DRFLOW_ARCHIVE"
MANIFEST_FORMAT = "drflow-audit-archive/1"
# The run closes a moment after it started its archive: look again soon, then less often.
FIRST_POLL = timedelta(milliseconds=100)
MAX_POLL = timedelta(seconds=2)
HEARTBEAT_EVERY = timedelta(seconds=10)


def archive_workflow_id(workflow_id: str, run_id: str) -> str:
    return f"archive-{workflow_id}-{run_id}"


class ArchiveRequest(StartInput):
    workflow_id: str
    run_id: str
    kind: str
    wait_seconds: float = 120.0


class StartArchiveRequest(StrictModel):
    archive: ArchiveRequest
    task_queue: str
    service: str | None = None


class ArchiveStart(StrictModel):
    started: bool
    archive_workflow_id: str | None
    note: str


LockMode = Literal["GOVERNANCE", "COMPLIANCE"]


class ArchivedFile(StrictModel):
    name: str
    sha256: str
    bytes: int
    media_type: str
    version_id: str | None = Field(default=None, description="the S3 object version written")


class ObjectLock(StrictModel):
    mode: LockMode
    retain_until: datetime


class ChainPosition(StrictModel):
    """An archive's place in its store's chain: the manifest before it, by SHA-256 (none for the first)."""

    sequence: int = Field(ge=1)
    previous_manifest_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    previous: str | None = Field(default=None, description="the previous archive, <workflow>/<run>")


class SignedBy(StrictModel):
    """The key the worker signed this manifest with (``manifest.sig``), as the worker named it."""

    name: str
    fingerprint: str


class Manifest(StrictModel):
    """What an archive holds. ``chain`` and ``signed_by`` are absent from archives written before them."""

    format: str = MANIFEST_FORMAT
    workflow_id: str
    run_id: str
    workflow_type: str
    kind: str
    run_status: str
    run_closed_at: datetime | None
    history_events: int
    archived_at: datetime
    files: list[ArchivedFile]
    object_lock: ObjectLock | None = None
    chain: ChainPosition | None = None
    signed_by: SignedBy | None = None


class ArchiveResult(StrictModel):
    location: str = Field(description="the run's folder: a path or s3://bucket/prefix/<workflow>/<run>")
    manifest_sha256: str
    manifest: Manifest
    already_archived: bool = False


class ArchiveWriter(Protocol):
    """Where archives go: the audit library (``workers.audit.archive.HistoryArchiver``), from the worker.

    A Protocol so that activities never import the worker layer, and tests can hand in a writer of their own.
    """

    @property
    def enabled(self) -> bool:
        """False when archiving is off on this worker (``DRFLOW_ARCHIVE=off``)."""
        ...

    def write(self, history: WorkflowHistory, kind: str) -> ArchiveResult:
        """Archive the closed run's history and report; blocking. Raises ``errors.ArchiveRefused``.

        Idempotent: an archive already written for the run is verified and returned, never overwritten.
        """
        ...


class ArchiveActivities:
    def __init__(self, client: Client, writer: ArchiveWriter) -> None:
        self._client = client
        self._writer = writer

    def activities(self) -> list[Any]:
        return [self.start_archive_run, self.archive_run]

    @activity.defn(name="archive_start")
    async def start_archive_run(self, request: StartArchiveRequest) -> ArchiveStart:
        """Start ArchiveRun for a run (its own workflow, id ``archive-<workflow>-<run>``); idempotent."""
        async with beating_async():
            if not self._writer.enabled:
                return ArchiveStart(
                    started=False,
                    archive_workflow_id=None,
                    note=f"archiving is off on this worker ({ARCHIVE_ENV})",
                )
            target = request.archive
            archive_id = archive_workflow_id(target.workflow_id, target.run_id)
            attributes: list[SearchAttributePair[str]] = [SearchAttributePair(KIND_ATTR, "archive")]
            if request.service:
                attributes.append(SearchAttributePair(SERVICE_ATTR, request.service))
            try:
                await self._client.start_workflow(
                    "ArchiveRun",
                    target,
                    id=archive_id,
                    task_queue=request.task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    search_attributes=TypedSearchAttributes(attributes),
                    static_summary=f"Archive the audit record of {target.workflow_id}",
                )
            except WorkflowAlreadyStartedError:
                return ArchiveStart(started=True, archive_workflow_id=archive_id, note="already archived")
            note = f"archiving in {archive_id}"
            return ArchiveStart(started=True, archive_workflow_id=archive_id, note=note)

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
                        type=ErrorType.RUN_NOT_FOUND,
                        non_retryable=True,
                    ) from err
                raise
            if description.status != WorkflowExecutionStatus.RUNNING:
                break
            if time.monotonic() > deadline:
                raise ApplicationError(
                    f"{request.workflow_id} is still running after {request.wait_seconds:g}s; "
                    "archiving is retried until it closes",
                    type=ErrorType.RUN_STILL_OPEN,
                )
            activity.heartbeat(f"waiting for {request.workflow_id} to close")
            await asyncio.sleep(poll)
            poll = min(poll * 2, MAX_POLL.total_seconds())
        try:  # archives keep decoded payloads (docs/codec.md): evidence must outlive the codec's keys
            codec = self._client.data_converter.payload_codec
            history = await decode_history(await handle.fetch_history(), codec)
        except CodecError as err:
            raise ApplicationError(str(err), type=ErrorType.ARCHIVE_REFUSED) from err
        writing = asyncio.create_task(asyncio.to_thread(self._writer.write, history, request.kind))
        while not writing.done():  # a long history to a slow bucket: keep telling Temporal we are alive
            activity.heartbeat(f"writing the archive of {request.workflow_id}")
            await asyncio.wait({writing}, timeout=HEARTBEAT_EVERY.total_seconds())
        try:
            return writing.result()
        except ArchiveRefused as err:
            raise ApplicationError(str(err), type=ErrorType.ARCHIVE_REFUSED, non_retryable=True) from err
