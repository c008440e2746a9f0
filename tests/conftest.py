"""Session-wide real servers: the Temporal dev server, the time-skipping server, a BIND primary/secondary."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from temporalio.contrib.pydantic import pydantic_data_converter
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
