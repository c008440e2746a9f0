"""PostgreSQL reached only over the network: the sandbox's remote topology, end to end.

The servers run as the postgres system user with no Unix socket; the runbook names no data directory. The
fence is proven by a write as the application's role, and the failback re-syncs the old primary through the
shipped hook (``infra/postgres/hooks``), then drflow verifies over SQL that it streams from the new primary.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.database.postgres.connection import PostgresTarget
from activities.database.postgres.fence import FenceRequest, UnfenceRequest, fence, unfence
from activities.database.postgres.rewind import PrepareStandbyRequest, prepare_standby
from activities.errors import ErrorType
from runbooks.loader import RunbookError, load_runbook_file, parse_runbook
from runbooks.model import CommandHook, PostgresDatabase
from tests.support.failover import wait_for_gate
from tests.support.sandbox import SandboxWorld, Writer, sandbox_world
from tests.test_failback_sandbox import approve, start_failback
from tests.test_failover_sandbox import answers, in_recovery
from workers.sandbox.named import free_port
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverReport, FailoverRequest, Mode

REGION_A, REGION_B = "127.0.1.1", "127.0.2.1"


@pytest.fixture
def world() -> Iterator[SandboxWorld]:
    with sandbox_world("remote") as built:
        # The canary has its own tests; here the database path is what is under test.
        built.write_runbook(traffic=None, failback=None)
        yield built


@pytest_asyncio.fixture
async def worker_on(dev_env: WorkflowEnvironment, world: SandboxWorld, task_queue: str) -> AsyncIterator[str]:
    async with build_worker(dev_env.client, world.runbooks, task_queue=task_queue):
        yield task_queue


def database(world: SandboxWorld) -> PostgresDatabase:
    db = world.runbook.database
    assert isinstance(db, PostgresDatabase)
    return db


def target(world: SandboxWorld, region: str) -> PostgresTarget:
    return PostgresTarget(region=region, node=database(world).nodes[region])


def streams_from(world: SandboxWorld, standby: str, primary: str) -> bool:
    with world.connect(standby) as conn:
        row = conn.execute("SELECT status, sender_port FROM pg_stat_wal_receiver").fetchone()
    return row is not None and row[0] == "streaming" and row[1] == database(world).nodes[primary].port


def test_the_remote_topology_is_tcp_only_with_servers_as_another_user_and_a_runbook_without_paths(
    world: SandboxWorld,
) -> None:
    db = database(world)
    assert all(node.data_directory is None for node in db.nodes.values())
    # What `drflow sandbox up --topology remote` writes for a worker to serve passes the loader's rules.
    written = world.sandbox.write_runbook(world.runbooks.parent / "served")
    assert load_runbook_file(written).runbook.database == world.sandbox.runbook().database
    assert db.hooks.resync is not None and db.application is not None
    assert db.application.user == "app"
    for server in world.postgres.servers:
        mode = server.directory.stat()
        assert mode.st_uid != os.geteuid() or os.geteuid() != 0, "the servers run as another OS user"
        assert stat.S_IMODE(mode.st_mode) == 0o700, oct(mode.st_mode)
        assert not server.socket_dir.exists(), "no Unix socket: reachable over TCP only"
        assert "local " not in (server.data_dir / "pg_hba.conf").read_text()
    # The app role can write while the node serves: the fence proof is a real test, not a formality.
    role = db.application
    password = Path(role.password.removeprefix("file:")).read_text().strip() if role.password else None
    node = db.nodes["region-a"]
    with psycopg.connect(
        host=node.host, port=node.port, dbname=node.dbname, user=role.user, password=password, autocommit=True
    ) as conn:
        conn.execute("INSERT INTO health_probe (region) VALUES ('region-a')")


def test_a_remote_runbook_without_a_resync_hook_or_an_application_role_is_refused(
    world: SandboxWorld,
) -> None:
    data = world.runbook.model_dump(mode="json")
    del data["database"]["hooks"], data["database"]["application"]
    with pytest.raises(RunbookError) as refused:
        parse_runbook(json.dumps(data).encode(), "remote-app.yaml")
    message = str(refused.value)
    assert "database.hooks.resync: required: region-a, region-b has no data_directory" in message, message
    assert "database.application: required" in message, message

    data["database"]["application"] = {"user": "app", "password": "env:APP"}
    data["database"]["hooks"] = {"resync": {"command": ["ssh", "db-{region}", "pg-resync", "{source}"]}}
    with pytest.raises(RunbookError) as unknown:
        parse_runbook(json.dumps(data).encode(), "remote-app.yaml")
    assert "database.hooks.resync.command: " in str(unknown.value), str(unknown.value)
    assert "unknown placeholder {source}" in str(unknown.value)


def test_the_fence_is_proven_by_a_refused_write_as_the_application_and_never_by_a_hook_alone(
    world: SandboxWorld,
) -> None:
    db = database(world)
    region_a = target(world, "region-a")
    proven = fence(
        FenceRequest(target=region_a, mode="planned", proof_role=db.application, timeout_seconds=10)
    )
    assert proven.fenced and proven.method == "connections-cut"
    assert proven.proof is not None and "as app" in proven.proof and "refused" in proven.proof, proven.proof
    unfence(UnfenceRequest(target=region_a))

    # A node SQL cannot reach, with a fence hook that reports success but may have done nothing: a write
    # that does not arrive is what a partition looks like too, so the fence stays unconfirmed.
    unreachable = region_a.model_copy(update={"node": region_a.node.model_copy(update={"port": free_port()})})
    claims = CommandHook(command=["true"])
    result = fence(
        FenceRequest(
            target=unreachable, mode="emergency", proof_role=db.application, hook=claims, timeout_seconds=5
        )
    )
    assert not result.fenced and result.hook is not None and result.hook.exit_status == 0
    assert result.proof is not None and "proves no fence" in result.proof, result.proof
    with pytest.raises(ApplicationError) as planned:
        fence(
            FenceRequest(
                target=unreachable, mode="planned", proof_role=db.application, hook=claims, timeout_seconds=5
            )
        )
    assert planned.value.type == ErrorType.FENCE_FAILED
    # region-a was never touched by the second and third fence: it still serves the application.
    assert not in_recovery(world, "region-a")


@pytest.mark.parametrize("mode", ["planned", "emergency"])
async def test_failover_and_failback_on_postgres_reached_only_over_the_network(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str, mode: Mode
) -> None:
    writer = Writer(world, "region-a")
    writer.start()
    handle = await dev_env.client.start_workflow(
        FailoverWorkflow.run,
        FailoverRequest(
            service=world.service, target="region-b", mode=mode, reason="remote", requested_by="alice"
        ),
        id=f"failover-{uuid.uuid4().hex[:8]}",
        task_queue=worker_on,
    )
    await wait_for_gate(dev_env.client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go"))
    report: FailoverReport = await handle.result()
    writer.stop()
    assert report.outcome == "completed", report.messages
    assert report.fence is not None and report.fence.fenced and report.fence.method == "connections-cut"
    assert (
        report.fence.proof is not None and "as app" in report.fence.proof and "refused" in report.fence.proof
    )
    assert report.fence.hook is not None and report.fence.hook.exit_status == 0, report.fence.hook
    assert not report.unfenced_promotion
    assert report.data_loss is not None and report.data_loss.zero_proven, report.data_loss
    assert not in_recovery(world, "region-b")
    assert await answers(world) == [[REGION_B], [REGION_B]]
    with world.connect("region-b") as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM acked_writes")}
    assert writer.acknowledged and set(writer.acknowledged) <= stored

    back = await start_failback(dev_env, world, worker_on)
    await approve(back, dev_env, "failback")
    home = await back.result()
    assert home.outcome == "completed", home.messages
    # prepare: region-a re-synced by the hook before the switch; after it, region-b by the hook again.
    assert (
        home.prepared is not None and home.prepared.hook is not None and home.prepared.hook.exit_status == 0
    )
    assert home.resynced is not None and home.resynced.streaming and home.resynced.hook is not None
    assert any("verified over SQL" in action for action in home.resynced.actions), home.resynced.actions
    assert not in_recovery(world, "region-a") and in_recovery(world, "region-b")
    assert streams_from(world, "region-b", "region-a")
    assert await answers(world) == [[REGION_A], [REGION_A]]
    with world.connect("region-a") as conn:
        kept = {row[0] for row in conn.execute("SELECT id FROM acked_writes")}
    assert set(writer.acknowledged) <= kept


async def test_a_remote_failover_rejected_after_the_fence_undoes_both_fences_and_the_app_writes_again(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    world.write_runbook(approvals__gates=["failover", "promote", "data-loss"])
    handle = await dev_env.client.start_workflow(
        FailoverWorkflow.run,
        FailoverRequest(service=world.service, target="region-b", reason="rehearsal", requested_by="alice"),
        id=f"failover-{uuid.uuid4().hex[:8]}",
        task_queue=worker_on,
    )
    await wait_for_gate(dev_env.client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go"))
    fenced = await wait_for_gate(dev_env.client, handle.id, gate="promote")
    assert fenced.fence is not None and fenced.fence.fenced
    with pytest.raises(psycopg.OperationalError):
        app_write(world, "region-a")
    await handle.execute_update(FailoverWorkflow.reject, ApprovalInput(approver="bob", reason="not today"))
    report = await handle.result()
    assert report.outcome == "rejected", report.messages
    assert report.compensation is not None and report.compensation.restored, report.compensation
    assert any("unfence hook" in action for action in report.compensation.actions)
    app_write(world, "region-a")
    assert "drflow fence" not in (world.postgres.server("region-a").data_dir / "pg_hba.conf").read_text()


def app_write(world: SandboxWorld, region: str) -> None:
    role = database(world).application
    assert role is not None and role.password is not None
    node = database(world).nodes[region]
    password = Path(role.password.removeprefix("file:")).read_text().strip()
    with psycopg.connect(
        host=node.host, port=node.port, dbname=node.dbname, user=role.user, password=password,
        autocommit=True, connect_timeout=3,
    ) as conn:  # fmt: skip
        conn.execute("INSERT INTO health_probe (region) VALUES (%s)", (region,))


def test_a_resync_hook_that_fails_or_claims_success_falsely_is_a_failed_step_and_nothing_is_claimed(
    world: SandboxWorld, tmp_path: Path
) -> None:
    script = tmp_path / "bad-hook"
    script.write_text(
        "#!/bin/sh\necho connecting with password=hunter2 to postgres://drflow:s3cret@db-a/app\n"
        'echo "token from env: $HOOK_TOKEN"\nexit 3\n'
    )
    script.chmod(0o755)
    os.environ["DRFLOW_TEST_HOOK_TOKEN"] = "tok-123456"
    failing = CommandHook(command=[str(script), "{region}"], env={"HOOK_TOKEN": "env:DRFLOW_TEST_HOOK_TOKEN"})
    standby, primary = target(world, "region-b"), target(world, "region-a")
    request = PrepareStandbyRequest(target=standby, source=primary, timeout_seconds=5, hook=failing)
    # Streaming from region-a already: nothing to do, the hook does not even run.
    assert prepare_standby(request).already_standby

    # region-b stops streaming (its primary_conninfo points nowhere), so the hook must run, and it fails.
    with world.connect("region-b") as conn:
        conn.execute(f"ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={free_port()}'")
        conn.execute("SELECT pg_reload_conf()")
    with pytest.raises(ApplicationError) as failed:
        prepare_standby(request)
    message = failed.value.message
    assert failed.value.type == ErrorType.STANDBY_RESYNC_FAILED and failed.value.non_retryable
    assert "exited with status 3" in message, message
    assert "hunter2" not in message and "s3cret" not in message and "tok-123456" not in message, message
    assert "password=[redacted]" in message and "[redacted]@db-a" in message, message

    # A hook that exits 0 without doing anything: drflow's own check over SQL refuses to call it done.
    liar = PrepareStandbyRequest(
        target=standby, source=primary, timeout_seconds=3, hook=CommandHook(command=["true"])
    )
    with pytest.raises(ApplicationError) as lied:
        prepare_standby(liar)
    assert "exited 0 but region-b does not stream" in lied.value.message, lied.value.message
