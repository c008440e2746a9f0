"""Plan mode (``--dry-run``) proven to change nothing, per provider family, end to end through the CLI.

Each test snapshots what the providers would show a change by (zone transfers, SOA serials and BIND's own log;
PostgreSQL roles, timelines, datallowconn and a live writer session; HAProxy weights; every request that
reached the AWS emulators or the Cloud DNS stand-in), runs the dry run, and compares. The sandbox test also
shows the plan is the one a real run puts before its approval gate: the same checksum.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import dns.query
import dns.zone
import pytest
import pytest_asyncio
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.dns import registry as dns_registry
from activities.dns.clouddns import CloudDnsProvider
from activities.traffic.activities import ReadWeightsRequest, read_weights
from runbooks.model import CloudDns, DnsConfig
from tests.support.aws import (
    ministack_server,  # noqa: F401  (session fixture ministack_endpoint)
    moto_server,  # noqa: F401  (session fixture moto_endpoint)
    point_aws_at,
    throttling_proxy,
)
from tests.support.clouddns_standin import library_client, serve_clouddns
from tests.support.dns import signed_update
from tests.support.failover import wait_for_gate
from tests.support.http import serve_app
from tests.support.sandbox import SandboxWorld, Writer, sandbox_world
from tests.test_cli_check import drflow, target
from tests.test_failover_aws import AwsService, aws_service  # noqa: F401  (fixture)
from tests.test_failover_dns_weighted import WeightedService, weighted_service  # noqa: F401  (fixture)
from tests.test_failover_dns_weighted import fail_over as weighted_fail_over
from workers.sandbox.named import LOOPBACK, soa_serial
from workers.worker import build_worker
from workflows.common import TASK_QUEUE
from workflows.failback import FailbackWorkflow
from workflows.failback_models import FailbackReport, FailbackRequest
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverReport, FailoverRequest


@pytest.fixture
def world() -> Iterator[SandboxWorld]:
    with sandbox_world() as built:
        yield built


@pytest_asyncio.fixture
async def cli_worker(dev_env: WorkflowEnvironment, world: SandboxWorld) -> AsyncIterator[SandboxWorld]:
    """The CLI starts runs on the product's task queue: a worker there, reading the world's runbooks."""
    async with build_worker(dev_env.client, world.runbooks, task_queue=TASK_QUEUE):
        yield world


# ------------------------------------------------------------------------------------------ snapshots
def zone_transfer(world: SandboxWorld) -> str:
    """The primary's whole zone (AXFR, TSIG-signed: the sandbox allows transfers to its key only)."""
    pair = world.sandbox._named_pair()
    key = pair.tsig_key()
    transfer = dns.query.xfr(
        LOOPBACK, world.runbook.dns.zone, port=pair.primary_port, timeout=5,
        keyring=pair.tsig_keyring(), keyname=key.name, keyalgorithm=key.algorithm,
    )  # fmt: skip
    return str(dns.zone.from_xfr(transfer).to_text())


def dns_state(world: SandboxWorld) -> dict[str, Any]:
    """Both servers' SOA serials (the secondary follows every change by NOTIFY) and the primary's zone."""
    pair = world.sandbox._named_pair()
    zone = world.runbook.dns.zone
    return {
        "serials": [soa_serial(zone, pair.primary_port), soa_serial(zone, pair.secondary_port)],
        "zone": zone_transfer(world),
    }


def update_log_lines(world: SandboxWorld, offset: int) -> list[str]:
    """What BIND's primary logged about dynamic updates since ``offset`` (category update/update-security)."""
    log = world.sandbox._named_pair().primary.log_path.read_text(errors="replace")[offset:]
    return [line for line in log.splitlines() if " update" in line or "updating zone" in line]


def log_size(world: SandboxWorld) -> int:
    return len(world.sandbox._named_pair().primary.log_path.read_text(errors="replace"))


def database_state(world: SandboxWorld) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for region in ("region-a", "region-b"):
        with world.connect(region) as conn:
            state[region] = {
                "in_recovery": conn.execute("SELECT pg_is_in_recovery()").fetchone(),
                "timeline": conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone(),
                "databases": conn.execute(
                    "SELECT datname, datallowconn, datconnlimit FROM pg_database ORDER BY datname"
                ).fetchall(),
            }
    return state


async def haproxy_weights(world: SandboxWorld) -> dict[str, int]:
    traffic = world.runbook.traffic
    assert traffic is not None
    state = await ActivityEnvironment().run(read_weights, ReadWeightsRequest(traffic=traffic))
    return dict(state.weights)


# ------------------------------------------------------------------------------------------ the tests
async def test_failover_dry_run_on_the_sandbox_changes_nothing_and_plans_what_the_gate_shows(
    dev_env: WorkflowEnvironment, cli_worker: SandboxWorld
) -> None:
    world = cli_worker
    dns_before, db_before = dns_state(world), database_state(world)
    weights_before = await haproxy_weights(world)
    log_offset = log_size(world)
    writer = Writer(world, "region-a")
    writer.start()
    session = world.connect("region-a")  # a writer's session: the fence would cut it
    pid = session.execute("SELECT pg_backend_pid()").fetchone()

    planned = await drflow(
        "--runbooks", str(world.runbooks), "failover", world.service, "--to", "region-b",
        "--reason", "rehearsal", "--as", "alice", "--dry-run", "--json", "--address", target(dev_env),
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    report = FailoverReport.model_validate_json(planned.stdout)
    assert report.outcome == "dry-run" and report.plan is not None
    assert report.plan.source == "region-a" and report.plan.target == "region-b"
    assert report.plan.database is not None and report.plan.database.replication.standby_in_recovery
    assert report.lock_holder is None and not report.approvals and report.fence is None
    markdown = await drflow(
        "--runbooks", str(world.runbooks), "failover", world.service, "--to", "region-b",
        "--reason", "rehearsal", "--as", "alice", "--dry-run", "--address", target(dev_env),
    )  # fmt: skip
    assert markdown.returncode == 0, markdown.stderr
    assert "## Plan: fail over" in markdown.stdout and report.plan.checksum[:16] in markdown.stdout

    # Nothing changed: DNS (serials, whole zones, no UPDATE in BIND's log), databases, sessions, weights.
    assert dns_state(world) == dns_before
    assert update_log_lines(world, log_offset) == []
    assert database_state(world) == db_before
    assert session.execute("SELECT pg_backend_pid()").fetchone() == pid  # the fence would have cut it
    acknowledged = len(writer.acknowledged)
    writer.stop()
    assert writer.stopped_by is None and acknowledged > 0
    session.close()
    assert await haproxy_weights(world) == weights_before

    # The same plan a real run shows at its gate: same checksum (then rejected, so nothing moves).
    handle = await dev_env.client.start_workflow(
        FailoverWorkflow.run,
        FailoverRequest(service=world.service, target="region-b", reason="rehearsal", requested_by="alice"),
        id=f"failover-{world.service}-{uuid.uuid4().hex[:8]}",
        task_queue=TASK_QUEUE,
    )
    gate = await wait_for_gate(dev_env.client, handle.id)
    assert gate.plan is not None and gate.plan.checksum == report.plan.checksum
    await handle.execute_update(FailoverWorkflow.reject, ApprovalInput(approver="bob", reason="only a test"))
    assert (await handle.result()).outcome == "rejected"

    # The log check sees updates when there are some: a signed update of a scratch record shows up.
    pair = world.sandbox._named_pair()
    scratch = f"scratch.{world.runbook.dns.zone}"
    signed_update(pair, lambda update: update.replace(scratch, 5, "A", "127.0.9.9"))
    assert update_log_lines(world, log_offset) != []


async def test_failback_and_drill_dry_runs_on_the_sandbox_change_nothing(
    dev_env: WorkflowEnvironment, cli_worker: SandboxWorld
) -> None:
    world = cli_worker
    dns_before, db_before = dns_state(world), database_state(world)
    weights_before = await haproxy_weights(world)
    log_offset = log_size(world)

    # region-b streams from region-a, so a failback "home" to region-b can be planned without a failover.
    failback = await drflow(
        "--runbooks", str(world.runbooks), "failback", world.service, "--home", "region-b", "--prepare",
        "--reason", "rehearsal", "--as", "alice", "--dry-run", "--json", "--address", target(dev_env),
    )  # fmt: skip
    assert failback.returncode == 0, failback.stderr
    planned = json.loads(failback.stdout)
    assert planned["outcome"] == "dry-run" and planned["plan"]["target"] == "region-b"
    assert planned["prepared"] is None and planned["fence"] is None

    drill = await drflow(
        "--runbooks", str(world.runbooks), "drill", "run", world.service, "--dry-run", "--json",
        "--address", target(dev_env),
    )  # fmt: skip
    assert drill.returncode == 0, drill.stderr
    report = FailoverReport.model_validate_json(drill.stdout)
    assert report.outcome == "dry-run" and report.mode == "drill" and report.plan is not None
    assert report.plan.mode == "drill" and report.plan.target == "region-b"

    assert dns_state(world) == dns_before
    assert update_log_lines(world, log_offset) == []
    assert database_state(world) == db_before
    assert await haproxy_weights(world) == weights_before


async def test_a_dry_run_that_finds_a_blocker_exits_non_zero_with_the_reason(
    dev_env: WorkflowEnvironment, cli_worker: SandboxWorld
) -> None:
    world = cli_worker
    # region-b's health check points at a port nothing listens on: preflight refuses the target.
    world.write_runbook(**{"regions__region-b__vars__app_port": "1"})
    blocked = await drflow(
        "--runbooks", str(world.runbooks), "failover", world.service, "--to", "region-b",
        "--reason", "rehearsal", "--dry-run", "--address", target(dev_env),
    )  # fmt: skip
    assert blocked.returncode == 4, (blocked.stdout, blocked.stderr)
    assert "drflow: not-ready: target region-b fails its health checks" in blocked.stderr


# ------------------------------------------------------------------------------------------ AWS
@pytest.mark.parametrize("aws_service", [True], indirect=True, ids=["aurora"])
async def test_a_route53_and_aurora_dry_run_sends_only_reads_to_the_emulators(
    dev_env: WorkflowEnvironment,
    aws_service: AwsService,  # noqa: F811  (the fixture imported above)
    moto_endpoint: str,
    ministack_endpoint: str,
    task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every request to moto (Route53, STS) and ministack (RDS, CloudWatch) passes a recording proxy."""
    assert aws_service.aurora is not None
    with throttling_proxy(moto_endpoint) as moto, throttling_proxy(ministack_endpoint) as ministack:
        point_aws_at(
            monkeypatch, route53=moto.endpoint, sts=moto.endpoint, rds=ministack.endpoint,
            cloudwatch=ministack.endpoint,
        )  # fmt: skip
        writer_before, served_before = aws_service.aurora.writer(), aws_service.served()
        async with build_worker(dev_env.client, aws_service.runbooks, task_queue=task_queue):
            report = await dev_env.client.execute_workflow(
                FailoverWorkflow.run,
                FailoverRequest(
                    service=aws_service.service, target="us-west-2", reason="dry run", dry_run=True
                ),
                id=f"plan-failover-{aws_service.service}",
                task_queue=task_queue,
            )
    assert report.outcome == "dry-run", report.messages
    assert report.plan is not None and report.plan.database is not None
    assert moto.forwarded and ministack.forwarded  # the providers were reached through the proxies
    assert [r for r in moto.forwarded if r[0] != "GET" and "/rrset" in r[1]] == []  # ChangeResourceRecordSets
    actions = [
        part.removeprefix("Action=")
        for _, _, body in ministack.forwarded
        for part in body.split("&")
        if part.startswith("Action=")
    ]
    assert actions and all(a.startswith(("Describe", "List", "Get")) for a in actions), actions
    assert aws_service.aurora.writer() == writer_before == "us-east-1"
    assert aws_service.served() == served_before


# ------------------------------------------------------------------------------------------ Cloud DNS
CLOUDDNS_RUNBOOK = """\
service: {service}
objectives: {{rto: 2m, rpo: 30s}}
primary: europe-west1
regions:
  europe-west1: {{address: 127.0.1.1, vars: {{port: "{a_port}"}}}}
  europe-west4: {{address: 127.0.2.1, vars: {{port: "{b_port}"}}}}
dns:
  provider: clouddns
  project: {project}
  managed_zone: example-com
  zone: example.com.
  record: search.example.com.
  ttl: 60
  propagation_budget: 15s
  nameservers: [{{name: ns-cloud-a1.googledomains.com., address: 127.0.0.1, port: 1}}]
health:
  - name: app
    http: {{url: "http://{{address}}:{{port}}/healthz", expect_json: {{status: ok}}}}
    timeout: 500ms
    interval: 500ms
    consecutive_successes: 2
approvals:
  approvers: [bob]
  timeout: 30m
"""


async def test_a_cloud_dns_dry_run_posts_no_change_to_the_standin(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_clouddns() as standin, serve_app("127.0.1.1") as a, serve_app("127.0.2.1") as b:
        standin.add_zone(
            "example-com", "example.com.",
            [{"name": "search.example.com.", "type": "A", "ttl": 60, "rrdatas": ["127.0.1.1"]}],
        )  # fmt: skip

        def provider(config: DnsConfig) -> CloudDnsProvider:
            assert isinstance(config, CloudDns)
            return CloudDnsProvider(config, client=library_client(standin))

        monkeypatch.setattr(dns_registry, "dns_provider_for", provider)
        service = f"search-{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{service}.yaml").write_text(
            CLOUDDNS_RUNBOOK.format(service=service, project=standin.project, a_port=a.port, b_port=b.port)
        )
        before = standin.rrset("example-com", "search.example.com.", "A")
        async with build_worker(dev_env.client, tmp_path, task_queue=task_queue):
            report = await dev_env.client.execute_workflow(
                FailoverWorkflow.run,
                FailoverRequest(service=service, target="europe-west4", reason="dry run", dry_run=True),
                id=f"plan-failover-{service}",
                task_queue=task_queue,
            )
        assert report.outcome == "dry-run", report.messages
        assert report.plan is not None and report.plan.dns.current.values == ["127.0.1.1"]
        assert "GET rrsets" in standin.requests  # the plan was read from the stand-in
        assert "POST changes" not in standin.requests and standin.landed_changes == 0
        assert standin.rrset("example-com", "search.example.com.", "A") == before


# ------------------------------------------------------------------------------ dns-weighted (Route53)
async def test_dns_weighted_failover_and_failback_dry_runs_send_no_change_to_route53(
    dev_env: WorkflowEnvironment,
    weighted_service: WeightedService,  # noqa: F811  (the fixture imported above)
    moto_endpoint: str,
    task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The weights are the DNS change here: a dry run reads them (and the zone) and writes nothing."""

    async def dry(kind: str) -> str:
        with throttling_proxy(moto_endpoint) as moto:
            point_aws_at(monkeypatch, route53=moto.endpoint, sts=moto.endpoint)
            before = weighted_service.weights()
            async with build_worker(dev_env.client, weighted_service.runbooks, task_queue=task_queue):
                if kind == "failover":
                    report: FailoverReport | FailbackReport = await dev_env.client.execute_workflow(
                        FailoverWorkflow.run,
                        FailoverRequest(
                            service=weighted_service.service, target="region-b", reason="plan", dry_run=True
                        ),
                        id=f"plan-failover-{uuid.uuid4().hex[:8]}",
                        task_queue=task_queue,
                    )
                else:
                    report = await dev_env.client.execute_workflow(
                        FailbackWorkflow.run,
                        FailbackRequest(service=weighted_service.service, reason="plan", dry_run=True),
                        id=f"plan-failback-{uuid.uuid4().hex[:8]}",
                        task_queue=task_queue,
                    )
        assert report.outcome == "dry-run", report.messages
        assert moto.forwarded, "the plan was read from Route53 through the recording proxy"
        changes = [r for r in moto.forwarded if r[0] != "GET" and "/rrset" in r[1]]
        assert changes == [], changes  # ChangeResourceRecordSets is a POST on .../rrset
        assert weighted_service.weights() == before
        assert report.plan is not None
        return report.plan.checksum

    assert len(await dry("failover")) == 64
    point_aws_at(monkeypatch, route53=moto_endpoint, sts=moto_endpoint)
    async with build_worker(dev_env.client, weighted_service.runbooks, task_queue=task_queue):
        await weighted_fail_over(dev_env, weighted_service, task_queue)
    assert weighted_service.weights() == {"region-a": 0, "region-b": 100}
    assert len(await dry("failback")) == 64
    assert weighted_service.weights() == {"region-a": 0, "region-b": 100}
