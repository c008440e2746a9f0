"""Metrics, alerts, the dashboard and traces (docs/observability.md), with real promtool and Prometheus.

Prometheus is a system dependency (``scripts/system-deps``): these tests fail, never skip, without it.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import get_args

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from tests.support.dns import APP_ADDRESS, OTHER_ADDRESS
from tests.support.http import AppBehaviour, serve_app
from tests.support.prometheus import scraped_client, tool, until
from tests.test_readiness_workflow import World
from workers.sandbox.named import NamedPair, free_port
from workers.telemetry import TelemetryError, metrics_address, metrics_runtime
from workers.worker import build_worker
from workflows.metrics import step_label
from workflows.readiness import ReadinessWorkflow
from workflows.readiness_report import ReadinessRequest, WarningCode

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "infra" / "prometheus"
DASHBOARD = ROOT / "infra" / "grafana" / "drflow.json"
DOC = ROOT / "docs" / "observability.md"


@pytest.fixture
def world(tmp_path: Path, dns_world: NamedPair) -> Iterator[World]:
    """Two healthy regions and the BIND pair, as tests/test_readiness_workflow.py has them."""
    with ExitStack() as stack:
        region_a = stack.enter_context(serve_app(APP_ADDRESS, AppBehaviour()))
        region_b = stack.enter_context(serve_app(OTHER_ADDRESS, AppBehaviour()))
        runbooks = tmp_path / "runbooks"
        runbooks.mkdir()
        yield World(runbooks=runbooks, region_a=region_a, region_b=region_b, dns=dns_world)


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = subprocess.run(
        [tool("promtool"), "check", "rules", "rules.yaml"], cwd=RULES, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [tool("promtool"), "test", "rules", "tests.yaml"], cwd=RULES, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def _documented() -> set[str]:
    return set(re.findall(r"^\| `((?:drflow|temporal)_[a-z_]+)`", DOC.read_text(), re.MULTILINE))


def _metrics_in(expr: str) -> set[str]:
    names = set(re.findall(r"\b((?:drflow|temporal)_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if n.startswith("drflow_") else n for n in names}


def test_dashboard_is_importable_and_uses_only_documented_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and isinstance(dash["schemaVersion"], int) and dash["panels"]
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    assert "service" in [v["name"] for v in dash["templating"]["list"]]
    documented = _documented()
    assert "drflow_readiness_verdict" in documented
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        for target in panel["targets"]:
            unknown = _metrics_in(target["expr"]) - documented
            assert not unknown, f"panel {panel['title']!r} uses undocumented {unknown}"
    for rule in re.findall(r"expr: (.*)", (RULES / "rules.yaml").read_text()):
        assert not _metrics_in(rule) - documented, rule


def test_tracing_is_off_without_an_otlp_endpoint() -> None:
    from workers.telemetry import tracing_enabled, tracing_interceptors

    assert tracing_interceptors(env={}) == []
    assert not tracing_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": ""})
    assert tracing_enabled({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})


def test_step_labels_leave_runbook_values_out() -> None:
    assert step_label("wait out the old TTL (60s)") == "wait out the old TTL"
    assert step_label("promote") == "promote"


def test_a_taken_metrics_port_is_one_clear_error() -> None:
    port = free_port()
    first = metrics_runtime(f"127.0.0.1:{port}")
    assert first is not None
    with pytest.raises(
        TelemetryError, match=rf"cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    ):
        metrics_runtime(f"127.0.0.1:{port}")
    with pytest.raises(TelemetryError, match="not HOST:PORT"):
        metrics_address("9464")
    assert metrics_address(None, env={}) is None
    assert metrics_address(None, env={"DRFLOW_METRICS_ADDRESS": "0.0.0.0:9464"}) == "0.0.0.0:9464"


@pytest.mark.parametrize(
    "command",
    [["worker", "--address", "127.0.0.1:1"], ["gateway", "--idle-without-slack", "--address", "127.0.0.1:1"]],
)
def test_the_cli_says_so_in_one_line_when_the_metrics_port_is_taken(
    tmp_path: Path, command: list[str]
) -> None:
    port = free_port()
    held = metrics_runtime(f"127.0.0.1:{port}")
    assert held is not None
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "drflow"), "--runbooks", str(tmp_path), command[0],
         "--metrics", f"127.0.0.1:{port}", *command[1:]],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


async def test_real_prometheus_scrapes_a_real_worker_during_a_readiness_check(
    dev_env: WorkflowEnvironment, world: World, task_queue: str, tmp_path: Path
) -> None:
    world.write_runbook("web")
    async with (
        scraped_client(dev_env, tmp_path) as (client, base),
        build_worker(client, world.runbooks, task_queue=task_queue),
    ):
        report = await client.execute_workflow(
            ReadinessWorkflow.run, ReadinessRequest(service="web"),
            id=f"readiness-web-{uuid.uuid4()}", task_queue=task_queue,
        )  # fmt: skip
        assert report.verdict == "ready", report.reasons
        ready = await until(base, 'drflow_readiness_verdict{service="web",verdict="ready"} == 1')
        assert [float(r["value"][1]) for r in ready] == [1.0], (tmp_path / "prometheus.log").read_text()
        degraded = await until(base, 'drflow_readiness_verdict{service="web",verdict="degraded"}')
        assert [float(r["value"][1]) for r in degraded] == [0.0]
        warnings = await until(base, 'drflow_readiness_warning{service="web"}')
        # every code of the closed set is exported, 0 when the check did not raise it
        assert sorted((r["metric"]["warning"], float(r["value"][1])) for r in warnings) == [
            (code, 0.0) for code in sorted(get_args(WarningCode))
        ]
        rpo = await until(base, 'drflow_rpo_objective_seconds{service="web"}')
        assert [float(r["value"][1]) for r in rpo] == [5.0]
        runs = await until(base, 'drflow_runs_total{kind="readiness",outcome="ready"}')
        assert sum(float(r["value"][1]) for r in runs) >= 1
        sdk = await until(base, 'temporal_workflow_completed{workflow_type="Readiness"}')
        assert sdk and float(sdk[0]["value"][1]) >= 1
        up = await until(base, 'up{job="drflow-worker"} == 1')
        assert up


async def test_a_readiness_run_is_traced_with_its_activities(
    dev_env: WorkflowEnvironment, world: World, task_queue: str
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from temporalio.contrib.opentelemetry import TracingInterceptor

    world.write_runbook("web")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = await Client.connect(
        dev_env.client.service_client.config.target_host,
        namespace=dev_env.client.namespace,
        data_converter=dev_env.client.data_converter,
        interceptors=[TracingInterceptor(provider.get_tracer("drflow-test"))],
    )
    async with build_worker(client, world.runbooks, task_queue=task_queue):
        await client.execute_workflow(
            ReadinessWorkflow.run, ReadinessRequest(service="web"),
            id=f"readiness-web-{uuid.uuid4()}", task_queue=task_queue,
        )  # fmt: skip
    names = {span.name for span in exporter.get_finished_spans()}
    assert {"StartWorkflow:Readiness", "RunWorkflow:Readiness"} <= names, names
    assert {"RunActivity:load_runbook", "RunActivity:probe_health", "RunActivity:read_dns_record"} <= names, (
        names
    )


async def test_real_prometheus_reads_a_sandbox_failovers_rto_runs_and_steps(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    from tests.support.failover import wait_for_gate
    from tests.support.sandbox import sandbox_world
    from tests.test_cli_check import drflow, target
    from workflows.failover import FailoverWorkflow
    from workflows.failover_models import FailoverRequest

    async with scraped_client(dev_env, tmp_path) as (client, base):
        with sandbox_world() as world:
            async with build_worker(client, world.runbooks, task_queue=task_queue):
                request = FailoverRequest.model_validate(
                    {"service": world.service, "target": "region-b", "reason": "metrics test",
                     "requested_by": "alice", "mode": "planned"}
                )  # fmt: skip
                handle = await client.start_workflow(
                    FailoverWorkflow.run, request, id=f"failover-{world.service}-{uuid.uuid4().hex[:8]}",
                    task_queue=task_queue,
                )  # fmt: skip
                await wait_for_gate(client, handle.id)
                approved = await drflow(
                    "approve", handle.id, "--as", "bob", "--reason", "go", "--address", target(dev_env)
                )
                assert approved.returncode == 0, approved.stderr
                report = await handle.result()
                assert report.outcome == "completed", report.messages
                assert report.achieved_rto_seconds is not None
                service = world.service
                rto = await until(
                    base, f'drflow_failover_rto_seconds{{service="{service}",kind="failover",mode="planned"}}'
                )
                assert [round(float(r["value"][1]), 3) for r in rto] == [
                    round(report.achieved_rto_seconds, 3)
                ]
                runs = await until(base, 'drflow_runs_total{kind="failover",outcome="completed"}')
                assert sum(float(r["value"][1]) for r in runs) >= 1
                steps = await until(base, 'drflow_step_duration_seconds_count{kind="failover"}')
                assert {r["metric"]["step"] for r in steps} == {
                    step_label(step.name) for step in report.steps if step.outcome == "ok"
                }
                waits = await until(base, 'drflow_approval_wait_seconds_count{kind="failover"}')
                assert waits and float(waits[0]["value"][1]) >= 1


async def test_real_prometheus_reads_a_drills_rto_its_age_and_its_failback(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox drill (failover and failback children, real approvals): the drill's own RTO and RPO, the
    time of the last passed drill (what `DrflowDrillOverdue` reads), and the failback child's run, RTO and
    steps, as Prometheus scraped them from the worker."""
    from tests.support.sandbox import sandbox_world
    from tests.test_drill import approve_children
    from workflows.drill import DrillWorkflow
    from workflows.drill_models import DrillRequest

    monkeypatch.setenv("DRFLOW_DRILL_REPORTS", str(tmp_path / "drills"))
    async with scraped_client(dev_env, tmp_path) as (client, base):
        with sandbox_world() as world:
            world.write_runbook(failback__analysis__duration="1s", failback__analysis__requests=100)
            service = world.service
            async with build_worker(client, world.runbooks, task_queue=task_queue):
                handle = await client.start_workflow(
                    DrillWorkflow.run, DrillRequest(service=service),
                    id=f"drill-{service}-{uuid.uuid4().hex[:8]}", task_queue=task_queue,
                )  # fmt: skip
                await approve_children(client, handle.id)
                report = await handle.result()
                assert report.outcome == "passed", report.deviations
                assert report.rto_achieved_seconds is not None and report.finished_at is not None
                assert report.failback is not None and report.failback.achieved_rto_seconds is not None

                drill_labels = f'service="{service}",kind="drill",mode="drill"'
                rto = await until(base, f"drflow_failover_rto_seconds{{{drill_labels}}}")
                assert [round(float(r["value"][1]), 3) for r in rto] == [
                    round(report.rto_achieved_seconds, 3)
                ]
                rpo = await until(base, f"drflow_failover_rpo_seconds{{{drill_labels}}}")
                assert [float(r["value"][1]) for r in rpo] == [report.rpo_achieved_seconds]
                last = await until(
                    base, f'drflow_last_drill_success_timestamp_seconds{{service="{service}"}}'
                )
                assert [round(float(r["value"][1])) for r in last] == [round(report.finished_at.timestamp())]
                age = await until(
                    base, f'time() - drflow_last_drill_success_timestamp_seconds{{service="{service}"}}'
                )
                assert 0 <= float(age[0]["value"][1]) < 600, "not overdue: the alert's expression reads it"

                back = await until(
                    base, f'drflow_failover_rto_seconds{{service="{service}",kind="failback"}}'
                )
                assert [round(float(r["value"][1]), 3) for r in back] == [
                    round(report.failback.achieved_rto_seconds, 3)
                ]
                runs = await until(base, 'drflow_runs_total{kind=~"drill|failback|failover"}')
                assert {(r["metric"]["kind"], r["metric"]["outcome"]) for r in runs} >= {
                    ("drill", "passed"),
                    ("failback", "completed"),
                    ("failover", "completed"),
                }
                steps = await until(base, 'drflow_step_duration_seconds_count{kind="failback"}')
                assert {r["metric"]["step"] for r in steps} >= {
                    step_label(step.name) for step in report.failback.steps if step.outcome == "ok"
                }
