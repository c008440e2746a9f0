"""Session-wide real servers: the Temporal dev server, the time-skipping server, a BIND primary/secondary."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.search_attributes import SEARCH_ATTRIBUTES
from tests.support.dns import dns_world  # noqa: F401  (session fixture)
from tests.support.postgres import pg_pair  # noqa: F401
from tests.support.temporal import add_search_attributes, start_dev_server, venv_binary

# Runs archive themselves when they end (workflows/archive.py). Tests that are not about the archive keep
# it off: it would write into the checkout, and on the time-skipping server a run still archiving when its
# test ends stops time skipping. The audit tests and the failover archive test set their own archive.
os.environ.setdefault("DRFLOW_ARCHIVE", "off")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_dev_server()
    try:
        yield env
    finally:
        await env.shutdown()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=venv_binary("temporal-test-server"),
        data_converter=pydantic_data_converter,
    )
    await add_search_attributes(env.client, [key.name for key in SEARCH_ATTRIBUTES])
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def task_queue() -> str:
    return f"drflow-test-{uuid.uuid4()}"


@pytest_asyncio.fixture(autouse=True, loop_scope="session")
async def no_run_outlives_its_test(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """End the runs a test started on the shared dev server when it ends, passed or failed.

    A run left waiting at a gate keeps its service's lock, and every later test of the sandbox's service is
    then refused or times out: one drill that timed out once failed 26 tests after it. Set up before the
    test's other fixtures, so this runs after their teardown (the sandbox is already down).
    """
    if "dev_env" not in request.fixturenames:
        yield
        return
    env: WorkflowEnvironment = request.getfixturevalue("dev_env")
    since = datetime.now(UTC) - timedelta(seconds=1)
    yield
    query = f"ExecutionStatus = 'Running' AND StartTime >= '{since.isoformat()}'"
    async for execution in env.client.list_workflows(query):
        handle = env.client.get_workflow_handle(execution.id, run_id=execution.run_id)
        with contextlib.suppress(RPCError):  # it ended meanwhile
            await handle.terminate(reason=f"{request.node.nodeid} has ended")
