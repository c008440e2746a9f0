"""Drift between regions on the sandbox's real PostgreSQL pair: a setting changed on one side is found.

The check reads each node's own `pg_settings` and extensions (`activities/database/postgres/drift.py`) in the
same activity that measures replication, so it costs no extra Temporal action.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.support.sandbox import SandboxWorld, sandbox_world
from workers.worker import build_worker
from workflows.readiness import ReadinessWorkflow
from workflows.readiness_report import ReadinessReport, ReadinessRequest


@pytest.fixture
def world() -> Iterator[SandboxWorld]:
    with sandbox_world() as built:
        yield built


async def check(env: WorkflowEnvironment, world: SandboxWorld) -> ReadinessReport:
    queue = f"drift-{uuid.uuid4()}"
    async with build_worker(env.client, world.runbooks, task_queue=queue):
        return await env.client.execute_workflow(
            ReadinessWorkflow.run, ReadinessRequest(service=world.service),
            id=f"readiness-drift-{uuid.uuid4()}", task_queue=queue,
        )  # fmt: skip


def set_on_standby(world: SandboxWorld, setting: str, value: int) -> None:
    """ALTER SYSTEM on the standby (its own postgresql.auto.conf), then a restart: what an admin does."""
    with world.connect("region-b") as standby:
        standby.execute(f"ALTER SYSTEM SET {setting} = {value}")
    server = world.postgres.server("region-b")
    server.stop()
    server.start()


def current(world: SandboxWorld, region: str, setting: str) -> str:
    with world.connect(region) as conn:
        row = conn.execute("SELECT setting FROM pg_settings WHERE name = %s", (setting,)).fetchone()
    assert row is not None
    return str(row[0])


async def test_a_setting_changed_on_the_standby_is_drift_and_degrades_the_check(
    dev_env: WorkflowEnvironment, world: SandboxWorld
) -> None:
    clean = await check(dev_env, world)
    assert clean.verdict == "ready", clean.reasons
    assert [r.drift for r in clean.replication] == [[]], "compared, and nothing differs"

    primary = current(world, "region-a", "max_connections")
    set_on_standby(world, "max_connections", int(primary) + 50)
    drifted = await check(dev_env, world)
    assert drifted.verdict == "degraded"
    [reason] = [r for r in drifted.reasons if r.startswith("drift")]
    assert reason == (
        f"drift between region-a and region-b: max_connections (region-a: {primary}, region-b: "
        f"{int(primary) + 50}): lower on region-a: after a failback it is the standby, and replay there stops"
    )
    [drift] = drifted.replication[0].drift or []
    assert (drift.setting, drift.primary, drift.standby) == (
        "max_connections",
        primary,
        str(int(primary) + 50),
    )
