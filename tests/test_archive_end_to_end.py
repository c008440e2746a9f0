"""A failover archives itself when it ends: the archive verifies and exports with the approver in it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.support.failover import stateless_service, wait_for_archive, wait_for_gate
from tests.support.sshkeys import make_key
from tests.test_cli_check import drflow, target
from workers.sandbox.named import NamedPair
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverRequest


async def test_a_finished_failover_is_archived_and_the_archive_verifies(
    dev_env: WorkflowEnvironment, dns_world: NamedPair, tmp_path: Path, task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    archive = tmp_path / "archive"
    monkeypatch.setenv("DRFLOW_ARCHIVE", str(archive))
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    with stateless_service(runbooks, dns_world) as service:
        async with build_worker(dev_env.client, runbooks, task_queue=task_queue):
            handle = await dev_env.client.start_workflow(
                FailoverWorkflow.run,
                FailoverRequest(
                    service=service.service, target="region-b", reason="archive", requested_by="alice"
                ),
                id=f"failover-{uuid.uuid4().hex[:8]}",
                task_queue=task_queue,
            )
            await wait_for_gate(dev_env.client, handle.id)
            await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go"))
            report = await handle.result()
            assert report.outcome == "completed"
            run_dir = archive / handle.id / report.run_id
            await wait_for_archive(run_dir)
    verified = await drflow("audit", "verify", str(run_dir))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    exported = await drflow("audit", "export", str(run_dir), "--address", target(dev_env))
    assert exported.returncode == 0, exported.stderr
    assert "bob" in exported.stdout and "127.0.2.1" in exported.stdout
    replayed = await drflow("audit", "replay", str(run_dir))
    assert replayed.returncode == 0 and "reproduced" in replayed.stdout


async def test_a_worker_with_an_archive_key_signs_what_it_archives(
    dev_env: WorkflowEnvironment, dns_world: NamedPair, tmp_path: Path, task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The production shape: the key is a secret reference in the worker's environment, the trust list
    is the people file's archive_keys, and a live run's archive verifies as signed by that key."""
    key = make_key(tmp_path, "archive-worker")
    archive = tmp_path / "archive"
    monkeypatch.setenv("DRFLOW_ARCHIVE", str(archive))
    monkeypatch.setenv("DRFLOW_ARCHIVE_KEY", f"file:{key.private}")
    monkeypatch.setenv("DRFLOW_ARCHIVE_KEY_NAME", "prod-worker")
    people = tmp_path / "people.yaml"
    people.write_text(
        f"people:\n  - name: bob\n    keys: []\narchive_keys:\n  - name: prod-worker\n    key: {key.public_line}\n"
    )
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    with stateless_service(runbooks, dns_world) as service:
        async with build_worker(dev_env.client, runbooks, task_queue=task_queue):
            handle = await dev_env.client.start_workflow(
                FailoverWorkflow.run,
                FailoverRequest(service=service.service, target="region-b", reason="signed archive",
                                requested_by="alice"),
                id=f"failover-{uuid.uuid4().hex[:8]}", task_queue=task_queue,
            )  # fmt: skip
            await wait_for_gate(dev_env.client, handle.id)
            await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go"))
            report = await handle.result()
            run_dir = archive / handle.id / report.run_id
            await wait_for_archive(run_dir)
    verified = await drflow("audit", "verify", str(run_dir), "--people", str(people))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "prod-worker" in verified.stdout and key.fingerprint in verified.stdout, verified.stdout
    stranger = make_key(tmp_path, "stranger")
    other = tmp_path / "other-people.yaml"
    other.write_text(
        f"people:\n  - name: bob\n    keys: []\narchive_keys:\n  - name: prod-worker\n"
        f"    key: {stranger.public_line}\n"
    )
    refused = await drflow("audit", "verify", str(run_dir), "--people", str(other))
    assert refused.returncode == 1, refused.stdout
