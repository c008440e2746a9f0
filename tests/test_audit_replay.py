"""`drflow audit replay`: every recorded history reproduces on today's code, and a deliberately changed
workflow is reported at the right event, in plain words that name the step."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow

from tests.test_replay import ReadinessProbingHealthTwice
from workers.audit.history import read_history_file
from workers.audit.replay import replay_history

with workflow.unsafe.imports_passed_through():
    from activities.database import activities as database
    from activities.service_lock import LockHolder
    from workflows.failover import FailoverWorkflow
    from workflows.failover_models import FailoverPlan, FailoverReport, FailoverRequest

ROOT = Path(__file__).resolve().parent.parent
HISTORIES = sorted(p for p in (ROOT / "tests" / "histories").glob("*.json") if p.name != "index.json")
DRFLOW = str(Path(sys.executable).parent / "drflow")


def drflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DRFLOW, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


@workflow.defn(name="Failover", sandboxed=False)
class FailoverWithoutLock(FailoverWorkflow):
    """A careless edit: the failover no longer takes the service lock."""

    @workflow.run
    async def run(self, request: FailoverRequest) -> FailoverReport:
        return await super().run(request)

    async def _acquire_lock(self, service: str) -> LockHolder | None:
        return None


@workflow.defn(name="Failover", sandboxed=False)
class FailoverMeasuringBeforeFencing(FailoverWorkflow):
    """Another one: an extra replication measurement right before the fence."""

    @workflow.run
    async def run(self, request: FailoverRequest) -> FailoverReport:
        return await super().run(request)

    async def _fence(self, plan: FailoverPlan) -> None:
        db = self._require_runbook().database
        assert db is not None
        await workflow.execute_activity(
            database.measure_replication,
            database.ReplicationRequest(database=db, primary=plan.source, standby=plan.target),
            start_to_close_timeout=timedelta(seconds=30),
            summary="measure once more",
        )
        await super()._fence(plan)


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_every_recorded_history_is_reproduced(path: Path) -> None:
    verdict = await replay_history(read_history_file(path))
    assert verdict.reproduced, "\n".join(verdict.lines())
    assert verdict.lines()[0].startswith("reproduced: ")


async def test_a_failover_that_skips_the_lock_diverges_where_the_history_takes_it() -> None:
    verdict = await replay_history(
        read_history_file(ROOT / "tests/histories/failover-planned.json"), [FailoverWithoutLock]
    )
    assert not verdict.reproduced
    assert (verdict.event_id, verdict.event_type) == (12, "ACTIVITY_TASK_SCHEDULED")
    assert verdict.step == "activity acquire_service_lock (take the lock of sandbox-app)"
    assert (
        verdict.history_says
        == "the run schedules activity acquire_service_lock (take the lock of sandbox-app)"
    )
    assert verdict.code_does == (
        "schedules activity dns_plan_change (plan DNS app.drflow.test. → 127.0.2.1) instead of acquire_service_lock"
    )
    text = "\n".join(verdict.lines())
    assert "first divergence at event 12" in text and "workflow.patched()" in text


async def test_a_failover_with_an_extra_activity_diverges_at_the_fence() -> None:
    verdict = await replay_history(
        read_history_file(ROOT / "tests/histories/failover-emergency-data-loss.json"),
        [FailoverMeasuringBeforeFencing],
    )
    assert not verdict.reproduced
    assert verdict.event_id == 45
    assert verdict.step == "activity db_fence (fence region-a (emergency))"
    assert verdict.code_does is not None
    assert verdict.code_does.startswith(
        "schedules activity db_measure_replication (measure once more) instead of db_fence"
    )


async def test_a_readiness_that_adds_an_activity_first_is_reported_where_the_history_sets_attributes() -> (
    None
):
    verdict = await replay_history(
        read_history_file(ROOT / "tests/histories/readiness.json"), [ReadinessProbingHealthTwice]
    )
    assert (verdict.event_id, verdict.event_type) == (5, "UPSERT_WORKFLOW_SEARCH_ATTRIBUTES")
    assert verdict.history_says is not None and verdict.history_says.startswith(
        "the run sets search attributes"
    )
    assert verdict.code_does == (
        "schedules activity load_runbook (load runbook sandbox-app) where the history has no activity"
    )


def test_cli_replay_of_the_readiness_history_prints_reproduced() -> None:
    result = drflow("audit", "replay", "tests/histories/readiness.json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("reproduced: today's code makes the recorded decisions of Readiness")
    assert "Failing workflow task" not in result.stderr  # the core's own warning stays off the terminal


def test_cli_replay_of_a_history_the_code_no_longer_makes_exits_1_naming_the_event(tmp_path: Path) -> None:
    """A history as another version of the code would have written it: the lock activity under another name."""
    data = json.loads((ROOT / "tests/histories/failover-planned.json").read_text())
    (event,) = [e for e in data["events"] if e["eventId"] == "12"]
    event["activityTaskScheduledEventAttributes"]["activityType"]["name"] = "take_service_lock"
    summary = event["userMetadata"]["summary"]
    summary["data"] = base64.b64encode(json.dumps("take the lock (old code)").encode()).decode()
    path = tmp_path / "history.json"
    path.write_text(json.dumps(data))
    result = drflow("audit", "replay", str(path))
    assert result.returncode == 1
    assert result.stdout.startswith("diverged: ")
    assert (
        "first divergence at event 12 (ACTIVITY_TASK_SCHEDULED), step: activity take_service_lock"
        in result.stdout
    )
    assert "the code now:     schedules activity acquire_service_lock" in result.stdout
