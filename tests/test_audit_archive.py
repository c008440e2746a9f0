"""The tamper-evident archive: a local directory and S3 with Object Lock (a real moto server), verify that
names the changed file, and the Archive step end to end on the dev server with a real worker."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.archive import ArchiveRequest, ArchiveResult, Manifest, archive_workflow_id
from tests.support.failover import stateless_service
from tests.test_audit_timeline import SECRETS, history_with_secrets
from workers.audit.archive import ArchiveConfig, ArchiveError, archive_history, read_archived_history, verify
from workers.audit.history import read_history_file
from workers.audit.replay import replay_history
from workers.audit.timeline import build_timeline
from workers.sandbox.named import NamedPair, free_port
from workers.worker import WORKFLOWS, activities_for, build_worker
from workflows.archive import ArchiveRunWorkflow, start_archive
from workflows.readiness import ReadinessWorkflow
from workflows.readiness_report import ReadinessReport, ReadinessRequest

ROOT = Path(__file__).resolve().parent.parent
PLANNED = ROOT / "tests" / "histories" / "failover-planned.json"
DRFLOW = str(Path(sys.executable).parent / "drflow")
BUCKET = "drflow-audit"


def planned() -> WorkflowHistory:
    return read_history_file(PLANNED)


def drflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DRFLOW, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def flip_a_byte(path: Path) -> None:
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------------- local
def test_archive_to_a_directory_writes_history_reports_and_manifest_that_verify(tmp_path: Path) -> None:
    result = archive_history(planned(), "failover", ArchiveConfig(location=str(tmp_path)))
    folder = tmp_path / "failover-sandbox-app-eac4f6fb" / "01a215e3-1688-7ccc-9ed5-c425e577a370"
    assert Path(result.location) == folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "history.json",
        "manifest.json",
        "report.json",
        "report.md",
    ]
    manifest = Manifest.model_validate_json((folder / "manifest.json").read_text())
    assert [f.name for f in manifest.files] == ["history.json", "report.md", "report.json"]
    assert (manifest.workflow_type, manifest.kind, manifest.run_status) == (
        "Failover",
        "failover",
        "completed",
    )
    assert stat.S_IMODE((folder / "report.md").stat().st_mode) == 0o444

    report = verify(str(folder))
    assert report.ok and [c.status for c in report.checks] == ["ok", "ok", "ok"]
    # the archived (redacted) history still replays, and archiving again only checks what is there
    assert read_archived_history(str(folder)).events == planned().events
    again = archive_history(planned(), "failover", ArchiveConfig(location=str(tmp_path)))
    assert again.already_archived and again.manifest_sha256 == result.manifest_sha256


async def test_an_archived_history_reproduces_on_replay(tmp_path: Path) -> None:
    result = archive_history(planned(), "failover", ArchiveConfig(location=str(tmp_path)))
    verdict = await replay_history(read_archived_history(result.location))
    assert verdict.reproduced


def test_verify_names_the_file_in_which_one_byte_changed(tmp_path: Path) -> None:
    result = archive_history(planned(), "failover", ArchiveConfig(location=str(tmp_path)))
    folder = Path(result.location)
    flip_a_byte(folder / "report.md")
    report = verify(str(folder))
    assert not report.ok
    assert [(c.name, c.status) for c in report.checks] == [
        ("history.json", "ok"), ("report.md", "changed"), ("report.json", "ok"),
    ]  # fmt: skip
    cli = drflow("audit", "verify", str(folder / "manifest.json"))
    assert cli.returncode == 1
    assert "CHANGED report.md" in cli.stdout and "FAILED" in cli.stdout
    # a changed archive is never overwritten, and never replayed as evidence
    with pytest.raises(ArchiveError, match="fails verification"):
        archive_history(planned(), "failover", ArchiveConfig(location=str(tmp_path)))
    with pytest.raises(ArchiveError, match=r"CHANGED report\.md"):
        read_archived_history(str(folder))


def test_verify_names_a_missing_file_and_the_cli_says_ok_for_an_intact_archive(tmp_path: Path) -> None:
    result = archive_history(planned(), "failover", ArchiveConfig(location=str(tmp_path)))
    ok = drflow("audit", "verify", result.location)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"OK: {result.location}")
    (Path(result.location) / "history.json").unlink()
    report = verify(result.location)
    assert [(c.name, c.status) for c in report.checks if c.status != "ok"] == [("history.json", "missing")]


def test_a_run_that_is_still_open_is_not_archived(tmp_path: Path) -> None:
    """An archive is written once; a partial one would stand in for the full record forever."""
    history = planned()
    waiting_at_the_gate = WorkflowHistory(history.workflow_id, list(history.events)[:37])
    with pytest.raises(ArchiveError, match="still running"):
        archive_history(waiting_at_the_gate, "failover", ArchiveConfig(location=str(tmp_path)))
    assert not any(tmp_path.iterdir())


def test_no_secret_reaches_any_archived_file(tmp_path: Path) -> None:
    result = archive_history(history_with_secrets(), "failover", ArchiveConfig(location=str(tmp_path)))
    for path in Path(result.location).iterdir():
        text = path.read_text()
        for secret in SECRETS:
            assert secret not in text, f"{secret} leaked into {path.name}"
    assert verify(result.location).ok


# ---------------------------------------------------------------------------------------------- S3
@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    """A real moto S3 server on a free port, with an Object Lock bucket."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
        yield client, endpoint
    finally:
        server.stop()


def test_archive_to_s3_applies_object_lock_and_checksums_and_verifies(s3: tuple[Any, str]) -> None:
    client, endpoint = s3
    config = ArchiveConfig(location=f"s3://{BUCKET}/audit", retention_days=7, lock_mode="GOVERNANCE")
    result = archive_history(planned(), "failover", config, client)
    prefix = "audit/failover-sandbox-app-eac4f6fb/01a215e3-1688-7ccc-9ed5-c425e577a370"
    assert result.location == f"s3://{BUCKET}/{prefix}"
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
    assert sorted(o["Key"].rsplit("/", 1)[1] for o in listed["Contents"]) == [
        "history.json", "manifest.json", "report.json", "report.md",
    ]  # fmt: skip
    expected_until = datetime.now(UTC) + timedelta(days=7)
    for name in ("history.json", "report.md", "report.json", "manifest.json"):
        head = client.head_object(Bucket=BUCKET, Key=f"{prefix}/{name}", ChecksumMode="ENABLED")
        assert head["ObjectLockMode"] == "GOVERNANCE"
        assert abs(head["ObjectLockRetainUntilDate"] - expected_until) < timedelta(minutes=5)
        assert head["ChecksumSHA256"]
    assert result.manifest.object_lock is not None and result.manifest.object_lock.mode == "GOVERNANCE"

    report = verify(result.location, client)
    assert report.ok, report.lines()
    assert all("Object Lock GOVERNANCE until" in c.detail for c in report.checks)
    cli = drflow("audit", "verify", result.location, env={"AWS_ENDPOINT_URL_S3": endpoint})
    assert cli.returncode == 0, cli.stdout + cli.stderr

    # someone writes a new version over the report: verify names it; the locked original is still there
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/report.md", Body=b"# nothing happened here\n")
    report = verify(result.location, client)
    (changed,) = [c for c in report.checks if c.status != "ok"]
    assert changed.name == "report.md" and changed.status == "changed"
    assert "the archived version" in changed.detail and "is intact" in changed.detail
    cli = drflow("audit", "verify", result.location, env={"AWS_ENDPOINT_URL_S3": endpoint})
    assert cli.returncode == 1 and "CHANGED report.md" in cli.stdout
    original = next(f for f in result.manifest.files if f.name == "report.md")
    with pytest.raises(ClientError, match="AccessDenied"):
        client.delete_object(Bucket=BUCKET, Key=f"{prefix}/report.md", VersionId=original.version_id)


def test_archive_settings_come_from_the_environment() -> None:
    config = ArchiveConfig.from_env(
        {
            "DRFLOW_ARCHIVE": "s3://bucket/p",
            "DRFLOW_ARCHIVE_RETENTION_DAYS": "2555",
            "DRFLOW_ARCHIVE_LOCK_MODE": "compliance",
        }
    )
    assert (config.location, config.retention_days, config.lock_mode) == ("s3://bucket/p", 2555, "COMPLIANCE")
    assert ArchiveConfig.from_env({}).location == ".drflow/archive"
    with pytest.raises(ArchiveError, match="DRFLOW_ARCHIVE_RETENTION_DAYS"):
        ArchiveConfig.from_env({"DRFLOW_ARCHIVE_RETENTION_DAYS": "seven"})


# ------------------------------------------------------------------------------- end to end, dev server
@workflow.defn(name="ArchivedProbe", sandboxed=False)
class ArchivedProbe:
    """The smallest drflow-like workflow that ends the way Failover and Readiness do: ``start_archive``."""

    @workflow.run
    async def run(self, wait: timedelta) -> str:
        await workflow.sleep(wait)
        await start_archive("probe")
        return "done"


@workflow.defn(name="Sleeper", sandboxed=False)
class Sleeper:
    @workflow.run
    async def run(self, wait: timedelta) -> str:
        await workflow.sleep(wait)
        return "slept"


def probe_worker(client: Any, task_queue: str, executor: ThreadPoolExecutor, runbooks: Path) -> Worker:
    return Worker(
        client, task_queue=task_queue, workflows=[*WORKFLOWS, ArchivedProbe, Sleeper],
        activities=activities_for(client, runbooks), activity_executor=executor,
    )  # fmt: skip


async def test_a_readiness_run_ends_and_its_archive_appears(
    dev_env: WorkflowEnvironment,
    dns_world: NamedPair,
    tmp_path: Path,
    task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    archive = tmp_path / "archive"
    monkeypatch.setenv("DRFLOW_ARCHIVE", str(archive))
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    client = dev_env.client
    with stateless_service(runbooks, dns_world) as svc:
        async with build_worker(client, runbooks, task_queue=task_queue):
            handle = await client.start_workflow(
                ReadinessWorkflow.run, ReadinessRequest(service=svc.service),
                id=f"readiness-{svc.service}", task_queue=task_queue,
            )  # fmt: skip
            report: ReadinessReport = await handle.result()
            run_id = handle.result_run_id
            assert run_id is not None
            # Once Readiness starts its own archive (start_archive at its end), this attaches to that child.
            archived = await client.execute_workflow(
                ArchiveRunWorkflow.run,
                ArchiveRequest(workflow_id=handle.id, run_id=run_id, kind="readiness"),
                id=archive_workflow_id(handle.id, run_id),
                task_queue=task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                result_type=ArchiveResult,
            )
    folder = archive / handle.id / run_id
    assert Path(archived.location) == folder
    assert verify(str(folder)).ok
    assert f"Verdict: **{report.verdict}**" in (folder / "report.md").read_text()
    archived_report = json.loads((folder / "report.json").read_text())
    assert archived_report["timeline"]["run_id"] == run_id
    assert (await replay_history(read_archived_history(str(folder)))).reproduced
    # the same run, straight from Temporal by workflow id
    address = ["--address", dev_env.client.service_client.config.target_host]
    exported = drflow("audit", "export", handle.id, "--run-id", run_id, *address)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith(f"# Audit record: Readiness `{handle.id}`")
    replayed = drflow("audit", "replay", handle.id, *address)
    assert replayed.returncode == 0 and replayed.stdout.startswith("reproduced: "), replayed.stdout
    missing = drflow("audit", "export", "no-such-workflow", *address)
    assert missing.returncode == 1 and "no-such-workflow" in missing.stderr


async def test_start_archive_at_the_end_of_a_run_archives_it_after_it_closed(
    dev_env: WorkflowEnvironment, tmp_path: Path, task_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRFLOW_ARCHIVE", str(tmp_path))
    client = dev_env.client
    workflow_id = f"probe-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(max_workers=4) as executor:
        async with probe_worker(client, task_queue, executor, tmp_path):
            handle = await client.start_workflow(
                ArchivedProbe.run, timedelta(milliseconds=10), id=workflow_id, task_queue=task_queue
            )
            assert await handle.result() == "done"
            run_id = handle.result_run_id
            assert run_id is not None
            archive = client.get_workflow_handle(
                archive_workflow_id(workflow_id, run_id), result_type=ArchiveResult
            )
            archived = await archive.result()
    assert archived.manifest.workflow_type == "ArchivedProbe" and archived.manifest.kind == "probe"
    assert archived.manifest.run_status == "completed"
    assert verify(archived.location).ok
    history = await handle.fetch_history()
    timeline = build_timeline(history)
    assert [m.detail for m in timeline.markers] == ["workflow.patched('archive-at-end')"]
    (start,) = [a for a in timeline.activities if a.name == "archive_start"]
    assert start.highlights == [f"archiving in {archive_workflow_id(workflow_id, run_id)}"]
    assert (await replay_history(history, [ArchivedProbe])).reproduced
    # the archive's own run carries the service's search attributes, not a parent
    described = await archive.describe()
    assert described.parent_id is None and described.workflow_type == "ArchiveRun"


async def test_archiving_at_the_end_keeps_the_time_skipping_server_skipping(
    ts_env: WorkflowEnvironment, tmp_path: Path, task_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child still running when its parent closes stops the time-skipping server from ever skipping again
    (so the Archive step is not a child); an archive that completes leaves later timer tests unaffected,
    and a worker with DRFLOW_ARCHIVE=off starts none."""
    client = ts_env.client
    monkeypatch.setenv("DRFLOW_ARCHIVE", str(tmp_path))
    with ThreadPoolExecutor(max_workers=4) as executor:
        async with probe_worker(client, task_queue, executor, tmp_path):
            handle = await client.start_workflow(
                ArchivedProbe.run,
                timedelta(minutes=5),
                id=f"probe-{uuid.uuid4().hex[:8]}",
                task_queue=task_queue,
            )
            assert await handle.result() == "done"
            assert handle.result_run_id is not None
            archive = client.get_workflow_handle(archive_workflow_id(handle.id, handle.result_run_id))
            await archive.result()
            slept = await client.start_workflow(
                Sleeper.run, timedelta(hours=1), id=f"sleeper-{uuid.uuid4().hex[:8]}", task_queue=task_queue
            )
            assert await asyncio.wait_for(slept.result(), 20) == "slept"

    monkeypatch.setenv("DRFLOW_ARCHIVE", "off")
    off_queue = f"{task_queue}-off"
    with ThreadPoolExecutor(max_workers=4) as executor:
        async with probe_worker(client, off_queue, executor, tmp_path):
            handle = await client.start_workflow(
                ArchivedProbe.run,
                timedelta(minutes=5),
                id=f"probe-{uuid.uuid4().hex[:8]}",
                task_queue=off_queue,
            )
            assert await asyncio.wait_for(handle.result(), 20) == "done"
    (start,) = [
        a for a in build_timeline(await handle.fetch_history()).activities if a.name == "archive_start"
    ]
    assert start.highlights == ["archiving is off on this worker (DRFLOW_ARCHIVE)"]
