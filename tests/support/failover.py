"""A stateless service for failover tests: real BIND record, real HTTP apps, no database.

Each test gets its own service name and its own record in the shared zone, so tests never see each other's
changes and the lock of one service never blocks another test.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from temporalio.client import Client, WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError

from tests.support.dns import ZONE, signed_update
from tests.support.http import AppBehaviour, RunningApp, serve_app
from workers.sandbox.named import NamedPair
from workflows.failover_models import FailoverReport, RunReport

RUNBOOK = """\
service: {service}
objectives: {{rto: {rto}, rpo: 5s}}
primary: region-a
regions:
  region-a: {{address: {a_address}, vars: {{port: "{a_port}"}}}}
  region-b: {{address: {b_address}, vars: {{port: "{b_port}"}}}}
dns:
  provider: rfc2136
  zone: {zone}
  record: {record}
  ttl: {ttl}
  propagation_budget: {propagation}
  server: {{name: ns1.drflow.test., address: 127.0.0.1, port: {primary_port}}}
  nameservers:
    - {{name: ns1.drflow.test., address: 127.0.0.1, port: {primary_port}}}
    - {{name: ns2.drflow.test., address: 127.0.0.1, port: {secondary_port}}}
  tsig: {{name: drflow-test, secret: "{tsig}"}}
health:
  - name: app
    http: {{url: "http://{{address}}:{{port}}/healthz", expect_json: {{status: ok}}{headers}}}
    timeout: {health_timeout}
    interval: {health_interval}
    consecutive_successes: {health_successes}
approvals:
  approvers: [bob, carol]
  separation_of_duties: true
  timeout: 30m
"""


@dataclass(frozen=True)
class HealthSettings:
    """The runbook's one health check; ``headers`` are written as given (secret references)."""

    timeout: str = "500ms"
    interval: str = "500ms"
    consecutive_successes: int = 2
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StatelessService:
    service: str
    record: str
    runbooks: Path
    region_a: RunningApp
    region_b: RunningApp
    dns: NamedPair


@contextmanager
def stateless_service(
    runbooks: Path,
    dns: NamedPair,
    ttl: int = 5,
    rto: str = "2m",
    propagation: str = "10s",
    health: HealthSettings | None = None,
    behaviour: AppBehaviour | None = None,
) -> Iterator[StatelessService]:
    """Both regions' apps start from ``behaviour`` (each with its own copy, so counts stay per region)."""
    checks = health or HealthSettings()
    headers = f", headers: {json.dumps(checks.headers)}" if checks.headers else ""
    service = f"svc-{uuid.uuid4().hex[:8]}"
    record = f"{service}.{ZONE}"
    with ExitStack() as stack:
        region_a = stack.enter_context(serve_app("127.0.1.1", replace(behaviour or AppBehaviour())))
        region_b = stack.enter_context(serve_app("127.0.2.1", replace(behaviour or AppBehaviour())))
        signed_update(dns, lambda update: update.replace(record, ttl, "A", region_a.host))
        stack.callback(signed_update, dns, lambda update: update.delete(record))
        (runbooks / f"{service}.yaml").write_text(
            RUNBOOK.format(
                service=service, rto=rto, ttl=ttl, propagation=propagation, zone=ZONE, record=record,
                a_address=region_a.host, a_port=region_a.port, b_address=region_b.host, b_port=region_b.port,
                primary_port=dns.primary_port, secondary_port=dns.secondary_port, tsig=dns.tsig_secret_ref,
                headers=headers, health_timeout=checks.timeout, health_interval=checks.interval,
                health_successes=checks.consecutive_successes,
            )
        )  # fmt: skip
        yield StatelessService(service, record, runbooks, region_a, region_b, dns)


R = TypeVar("R", bound=RunReport)


async def wait_for_gate(
    client: Client,
    workflow_id: str,
    gate: str = "failover",
    timeout: float = 60,
    report_type: type[R] = FailoverReport,  # type: ignore[assignment]
) -> R:
    """Poll the status query (queries never advance time-skipping clocks) until the gate is open."""
    handle: WorkflowHandle[object, object] = client.get_workflow_handle(workflow_id)
    async with asyncio.timeout(timeout):
        while True:
            report: R | None
            try:
                report = await handle.query("status", result_type=report_type)
            except (WorkflowQueryFailedError, RPCError):  # before the first workflow task: no answer yet
                report = None
            if report is not None and report.open_gate == gate:
                return report
            if report is not None and report.outcome != "running":
                raise AssertionError(
                    f"the run ended as {report.outcome} before the {gate} gate: {report.messages}"
                )
            await asyncio.sleep(0.1)


async def wait_for_decision(client: Client, workflow_id: str, timeout: float = 60) -> FailoverReport:
    handle: WorkflowHandle[object, object] = client.get_workflow_handle(workflow_id)
    async with asyncio.timeout(timeout):
        while True:
            report: FailoverReport = await handle.query("status", result_type=FailoverReport)
            if report.waiting_step is not None:
                return report
            if report.outcome != "running":
                raise AssertionError(f"the run ended as {report.outcome} without waiting for a decision")
            await asyncio.sleep(0.1)


async def wait_for_archive(run_dir: Path, timeout: float = 60) -> Path:
    """The archive waits for the run to close, then writes its manifest last: wait for that."""
    async with asyncio.timeout(timeout):
        while True:
            if (run_dir / "manifest.json").exists():
                return run_dir
            await asyncio.sleep(0.2)
