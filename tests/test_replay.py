"""Replay every recorded history against the current workflow code: a change that would break running
workflows (a new activity, timer or reordering without ``workflow.patched``) fails here.

The histories come from real sandbox runs (scripts/record_histories.py).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from workers.audit.history import read_history_file
from workers.worker import WORKFLOWS
from workflows.runner import workflow_runner

with workflow.unsafe.imports_passed_through():
    from activities.health import HealthProbeRequest, probe_health
    from workflows.common import load_runbook
    from workflows.readiness_report import ReadinessReport, ReadinessRequest

HISTORIES = sorted(p for p in (Path(__file__).parent / "histories").glob("*.json") if p.name != "index.json")


def history(path: Path) -> WorkflowHistory:
    """Workflow ids come from tests/histories/index.json: a drill derives its children's ids from its own."""
    return read_history_file(path)


def test_every_workflow_type_has_recorded_histories() -> None:
    names = {path.stem for path in HISTORIES}
    assert {"failover-planned", "failover-emergency-data-loss", "failover-aborted", "readiness"} <= names
    assert "failover-planned-lock" in names
    assert {"failback-canary", "drill", "drill-failover", "drill-failback"} <= names
    assert "readiness-digest" in names


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_current_code_reproduces_recorded_history(path: Path) -> None:
    replayer = Replayer(
        workflows=list(WORKFLOWS), data_converter=pydantic_data_converter, workflow_runner=workflow_runner()
    )
    await replayer.replay_workflow(history(path))


@workflow.defn(name="Readiness", sandboxed=False)
class ReadinessProbingHealthTwice:
    """A deliberately changed Readiness: one more activity before the checks, as a careless edit would add."""

    @workflow.run
    async def run(self, request: ReadinessRequest) -> ReadinessReport:
        loaded = await load_runbook(request.service)
        await workflow.execute_activity(
            probe_health, HealthProbeRequest(probes=[]), start_to_close_timeout=timedelta(seconds=5)
        )
        await asyncio.sleep(0)
        raise AssertionError(f"replay should have stopped before this point ({loaded.runbook.service})")


async def test_a_changed_workflow_is_reported_as_nondeterministic() -> None:
    replayer = Replayer(workflows=[ReadinessProbingHealthTwice], data_converter=pydantic_data_converter)
    with pytest.raises(NondeterminismError):
        await replayer.replay_workflow(history(Path(__file__).parent / "histories" / "readiness.json"))
