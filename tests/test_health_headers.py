"""Health-check headers are secret references: the value reaches the application and nothing else.

A real failover on the dev server runs the target's checks (preflight ``probe_health``, then
``validate_health`` after the cutover) against apps that answer 401 unless both headers carry the right
values; the run passing proves the headers were sent. Then the tokens are looked for, and must be absent, in
the workflow history (raw and with every payload decoded), the run's report, the audit timeline and its
Markdown, HTML and JSON renderings, and every log record the worker and the activities wrote.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.client import WorkflowHistory
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.health import (
    SCRUBBED,
    HealthProbe,
    HealthProbeRequest,
    HealthValidationRequest,
    ValidatedProbe,
    probe_health,
    validate_health,
)
from runbooks.model import HttpCheck
from tests.support.failover import HealthSettings, StatelessService, stateless_service, wait_for_gate
from tests.support.http import AppBehaviour, serve_app
from workers.audit.render import render_html, render_json, render_markdown
from workers.audit.timeline import build_timeline
from workers.sandbox.named import NamedPair
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverRequest

TOKEN_VARIABLE = "DRFLOW_TEST_HEALTH_TOKEN"


@dataclass
class Secrets:
    bearer: str  # the Authorization header's value, from the worker's environment
    api_key: str  # the X-Api-Key header's value, from a file

    @property
    def values(self) -> list[str]:
        """The values, and their distinctive parts (a redactor that cut "Bearer " would still leave these)."""
        return [self.bearer, self.bearer.removeprefix("Bearer "), self.api_key]

    def references(self, key_file: Path) -> dict[str, str]:
        return {"Authorization": f"env:{TOKEN_VARIABLE}", "X-Api-Key": f"file:{key_file}"}

    @property
    def required(self) -> dict[str, str]:
        return {"Authorization": self.bearer, "X-Api-Key": self.api_key}


@pytest.fixture
def secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Secrets:
    # plain letters and digits: nothing a secret-shaped-text redactor would recognise on its own
    found = Secrets(bearer=f"Bearer tok{uuid.uuid4().hex}", api_key=f"key{uuid.uuid4().hex}")
    monkeypatch.setenv(TOKEN_VARIABLE, found.bearer)
    (tmp_path / "api-key").write_text(found.api_key + "\n")
    return found


@pytest_asyncio.fixture
async def guarded(
    dev_env: WorkflowEnvironment, tmp_path: Path, dns_world: NamedPair, task_queue: str, secrets: Secrets
) -> AsyncIterator[tuple[WorkflowEnvironment, StatelessService, str]]:
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    health = HealthSettings(headers=secrets.references(tmp_path / "api-key"))
    behaviour = AppBehaviour(required_headers=secrets.required)
    with stateless_service(runbooks, dns_world, health=health, behaviour=behaviour) as service:
        async with build_worker(dev_env.client, runbooks, task_queue=task_queue):
            yield dev_env, service, task_queue


def decoded_payloads(history: WorkflowHistory) -> list[str]:
    """Every payload of the history as text: inputs, results, heartbeat details, failures' details."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and "metadata" in node:
                found.append(base64.b64decode(node["data"]).decode("utf-8", "replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(history.to_json_dict())
    return found


async def test_header_secrets_reach_the_app_and_no_history_report_or_log(
    guarded: tuple[WorkflowEnvironment, StatelessService, str],
    secrets: Secrets,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env, service, task_queue = guarded
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient(trust_env=False) as http:
        assert (await http.get(f"{service.region_b.url}/healthz")).status_code == 401, "no header, no pass"

    handle = await env.client.start_workflow(
        FailoverWorkflow.run,
        FailoverRequest(service=service.service, target="region-b", reason="drill", requested_by="alice"),
        id=f"failover-{uuid.uuid4()}",
        task_queue=task_queue,
    )
    await wait_for_gate(env.client, handle.id)
    await handle.execute_update(
        FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go", channel="cli")
    )
    report = await handle.result()
    assert report.outcome == "completed", report.messages
    assert report.health is not None and report.health.passed
    target = service.region_b.behaviour
    # preflight probed once, validation twice: every request but the test's own carried both headers
    assert target.authorized >= 3 and target.authorized == target.requests - 1

    history = await handle.fetch_history()
    payloads = decoded_payloads(history)
    assert any(f"env:{TOKEN_VARIABLE}" in p for p in payloads), "the history holds the references"
    timeline = build_timeline(history)
    places = {
        "raw history": history.to_json(),
        "history payloads": "\n".join(payloads),
        "run report": report.model_dump_json(),
        "audit timeline (unredacted)": timeline.model_dump_json(),
        "audit Markdown": render_markdown(timeline),
        "audit HTML": render_html(timeline),
        "audit JSON": render_json(timeline),
        "logs": caplog.text + "\n".join(str(r.__dict__) for r in caplog.records),
    }
    assert "validate_health" in places["audit Markdown"] and caplog.records, "the places were really read"
    leaks = [(place, value) for place, text in places.items() for value in secrets.values if value in text]
    assert leaks == []


async def test_an_app_echoing_the_headers_back_does_not_carry_them_into_the_result(secrets: Secrets) -> None:
    """A failing check's body excerpt goes into the history: a secret quoted in it is scrubbed first."""
    behaviour = AppBehaviour(status=500, echo_headers=True)
    with serve_app(behaviour=behaviour) as app:
        url = f"{app.url}/healthz"
        probe = HealthProbe(
            region="region-b",
            check="app",
            url=url,
            http=HttpCheck(url=url, headers={"Authorization": f"env:{TOKEN_VARIABLE}"}),
            timeout=timedelta(seconds=2),
        )
        [result] = (await ActivityEnvironment().run(probe_health, HealthProbeRequest(probes=[probe]))).results
    assert not result.ok and result.status == 500
    # scrubbed before the 200-character excerpt is cut, so no truncated part of the token survives either
    assert result.error is not None and f'"Authorization": "{SCRUBBED[:8]}' in result.error
    assert "Bearer tok" not in result.model_dump_json()


async def test_a_header_secret_the_worker_cannot_read_fails_the_activity_naming_the_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DRFLOW_TEST_UNSET_TOKEN", raising=False)
    with serve_app() as app:
        url = f"{app.url}/healthz"
        probes = [
            ValidatedProbe(
                probe=HealthProbe(
                    region="region-b", check=name, url=url, http=http, timeout=timedelta(seconds=1)
                ),
                consecutive_successes=3,
                interval=timedelta(seconds=1),
            )
            for name, http in [
                ("open", HttpCheck(url=url)),
                ("guarded", HttpCheck(url=url, headers={"Authorization": "env:DRFLOW_TEST_UNSET_TOKEN"})),
            ]
        ]
        with pytest.raises(ApplicationError) as caught:
            await ActivityEnvironment().run(
                validate_health, HealthValidationRequest(probes=probes, timeout=timedelta(seconds=30))
            )
        running = [t for t in asyncio.all_tasks() if "_validate" in repr(t.get_coro())]
        assert running == [], "the other check stopped probing with the activity"
    assert caught.value.type == "SecretUnavailable" and not caught.value.non_retryable
    assert caught.value.message == "secret env:DRFLOW_TEST_UNSET_TOKEN is not set in the worker's environment"
