"""A new operator starts a failover from the real Temporal Web UI (2.54.1) in headless Chromium.

The UI's Start Workflow form is the surface the input model is designed for: one JSON payload typed by a
person. The test types it like a person would, approves with the CLI, and reads the outcome back in the UI.
A second test points the UI at ``drflow``'s codec server and sees an encrypted run's input decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import BrowserContext, Locator, Page, async_playwright, expect
from playwright.async_api import Error as PlaywrightError
from temporalio.client import Client, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from activities.temporal_ui import runs_list_url
from tests.support.failover import wait_for_decision, wait_for_gate
from tests.support.sandbox import SandboxWorld, sandbox_world
from tests.support.temporal import start_dev_server
from tests.test_cli_check import drflow, target
from workers.sandbox.named import free_port
from workers.worker import build_worker
from workflows.common import TASK_QUEUE
from workflows.failover_models import FailoverReport, render_report

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
STEP_MS = 30_000  # one UI step: page load, a click, a field, a status change
WORKFLOW_ID = "failover-sandbox-app-ui"


def chromium_path() -> str:
    """Debian's Chromium, never a downloaded one: missing is a failure with the fix, not a skip."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: install the Debian package `chromium` (apt-get install chromium; "
            "`make test` does it through scripts/system-deps). This test never downloads a browser."
        )
    return CHROMIUM


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ui_env() -> AsyncIterator[tuple[WorkflowEnvironment, str]]:
    """A dev server of its own with the Web UI on a free port; yields the env and the UI's base URL."""
    ui_port = free_port()
    env = await start_dev_server(ui=True, ui_port=ui_port)
    try:
        yield env, f"http://127.0.0.1:{ui_port}"
    finally:
        await env.shutdown()


@pytest.fixture
def world() -> Iterator[SandboxWorld]:
    with sandbox_world(people=True) as built:  # as `make demo` runs: the demo people, signed CLI answers
        yield built


@pytest_asyncio.fixture
async def worker(ui_env: tuple[WorkflowEnvironment, str], world: SandboxWorld) -> AsyncIterator[None]:
    env, _ = ui_env
    async with build_worker(env.client, world.runbooks, task_queue=TASK_QUEUE):
        yield


@pytest_asyncio.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    executable = chromium_path()
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(STEP_MS)
        expect.set_options(timeout=STEP_MS)  # expect() has its own default of 5 s
        try:
            yield context
        finally:
            for number, page in enumerate(context.pages):  # what the browser showed last, pass or fail
                with contextlib.suppress(PlaywrightError):  # a debugging aid only: never masks the result
                    await page.screenshot(path=tmp_path / f"last-page-{number}.png", full_page=True)
            await context.close()


async def test_operator_starts_a_failover_in_the_web_ui_and_sees_it_completed(
    ui_env: tuple[WorkflowEnvironment, str],
    world: SandboxWorld,
    worker: None,
    browser: BrowserContext,
    tmp_path: Path,
) -> None:
    env, ui = ui_env
    page = browser.pages[0] if browser.pages else await browser.new_page()
    request = {"service": world.service, "target": "region-b", "reason": "rehearsal", "requested_by": "alice"}

    # The Workflows list, then its "Start Workflow" button (top right; a link in the DOM).
    await page.goto(f"{ui}/namespaces/default/workflows", wait_until="domcontentloaded")
    await page.get_by_role("link", name="Start Workflow").click()
    await expect(page.get_by_role("heading", name="Start Workflow")).to_be_visible()

    # The form: three labelled inputs and a CodeMirror editor (role textbox, aria-label "Data").
    await page.get_by_label("Workflow ID").fill(WORKFLOW_ID)
    await page.get_by_label("Task Queue").fill(TASK_QUEUE)
    await page.get_by_label("Workflow Type").fill("Failover")
    data = page.get_by_role("textbox", name="Data")
    await data.click()
    await data.fill(json.dumps(request))
    # The editor pretty-prints the JSON when it loses focus and grows, which moves the Start button out
    # from under a pointer between mousedown and mouseup: leave the editor first, as a person would notice.
    await data.blur()
    await expect(data).to_contain_text('"requested_by": "alice"')
    assert json.loads(await data.inner_text()) == request
    await page.screenshot(path=tmp_path / "1-start-form.png", full_page=True)
    start = page.get_by_role("button", name="Start Workflow", exact=True)
    await expect(start).to_be_enabled()
    await start.click()

    # The UI stays on the form and confirms with a toast that links to the run.
    await page.get_by_role("link", name="Workflow started successfully").click()
    await expect(page.get_by_role("heading", name=WORKFLOW_ID)).to_be_visible()
    await expect(page.get_by_test_id("execution-status")).to_have_text("Running")

    # The run the UI started is a real failover: it stops at the approval gate, the CLI approves it.
    gate = await wait_for_gate(env.client, WORKFLOW_ID)
    assert (gate.service, gate.target, gate.reason, gate.requested_by) == (
        world.service, "region-b", "rehearsal", "alice",
    )  # fmt: skip
    assert gate.gate_checksum is not None and f"--plan {gate.gate_checksum}" in render_report(gate)
    approved = await drflow(
        "--runbooks", str(world.runbooks), "approve", WORKFLOW_ID, "--as", "bob", "--plan", gate.gate_checksum,
        "--reason", "go", "--address", target(env),
    )  # fmt: skip
    assert approved.returncode == 0, approved.stderr
    handle = env.client.get_workflow_handle(WORKFLOW_ID, result_type=FailoverReport)
    report = await asyncio.wait_for(handle.result(), 60)
    assert report.outcome == "completed", report.messages
    assert [(a.gate, a.decision, a.by, a.channel, a.identity) for a in report.approvals] == [
        ("failover", "approved", "bob", "cli", "ssh-key")  # signed with bob's demo key
    ]
    assert report.requester is not None and report.requester.identity == "unverified", "started in the UI"

    # Back in the browser: the run's page says Completed, and User Metadata shows the current details.
    await page.reload(wait_until="domcontentloaded")
    await expect(page.get_by_test_id("execution-status")).to_have_text("Completed")
    await page.get_by_role("tab", name="User Metadata").click()
    details = page.frame_locator('iframe[title="output"]')
    await expect(
        details.get_by_role("heading", name=re.compile(rf"^Failover {world.service} .*: COMPLETED$"))
    ).to_be_visible()
    await expect(details.get_by_text("requested by alice")).to_be_visible()
    await page.screenshot(path=tmp_path / "2-completed.png", full_page=True)

    # In the documented view of the Workflows list, DrflowStep says what Completed meant.
    await open_runs_view(page, ui)
    await expect(_row(page, WORKFLOW_ID).get_by_role("cell", name="completed", exact=True)).to_be_visible()


async def test_the_web_ui_with_the_codec_server_shows_a_decoded_input(
    tmp_path: Path, browser: BrowserContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Temporal stores ciphertext; the UI, pointed at ``drflow``'s codec server, shows the person the input."""
    from activities.codec import CodecKeys, EncryptionCodec, converter_for, encrypted_key_ids
    from workers.codec_server import CodecServer, CodecServerConfig

    monkeypatch.setenv("DRFLOW_TEST_UI_CODEC_KEY", os.urandom(32).hex())
    codec = EncryptionCodec(CodecKeys.parse("ui=env:DRFLOW_TEST_UI_CODEC_KEY"))
    ui_port = free_port()
    ui = f"http://127.0.0.1:{ui_port}"
    server = CodecServer(("127.0.0.1", free_port()), codec, CodecServerConfig.of([ui]))
    server.start()
    env = await start_dev_server(
        ui=True, ui_port=ui_port, data_converter=converter_for(codec),
        dev_server_extra_args=["--ui-codec-endpoint", server.url],
    )  # fmt: skip
    workflow_id = "codec-ui-input"
    try:
        handle = await env.client.start_workflow(
            "Failover", {"service": "payments", "target": "region-b", "reason": "codec 10.9.8.7"},
            id=workflow_id, task_queue="no-worker-polls-this",
        )  # fmt: skip
        plain = await Client.connect(env.client.service_client.config.target_host)  # no codec
        raw = await plain.get_workflow_handle(workflow_id).fetch_history()
        assert encrypted_key_ids(raw) == {"ui"} and "10.9.8.7" not in raw.to_json()
        page = browser.pages[0] if browser.pages else await browser.new_page()
        await page.goto(f"{ui}/namespaces/default/workflows/{workflow_id}", wait_until="domcontentloaded")
        await expect(page.get_by_role("heading", name=workflow_id)).to_be_visible()
        await expect(page.get_by_text("codec 10.9.8.7").first).to_be_visible()
        await page.screenshot(path=tmp_path / "decoded-input.png", full_page=True)
        await handle.terminate("test done")
    finally:
        await env.shutdown()
        server.shutdown()
        server.server_close()


async def test_a_typo_in_the_start_form_fails_the_run_at_once_and_says_why(
    ui_env: tuple[WorkflowEnvironment, str], browser: BrowserContext, tmp_path: Path
) -> None:
    """``"mode": "yolo"`` typed into the form: the run page says Failed and shows pydantic's message."""
    env, ui = ui_env
    workflow_id = "failover-typo-ui"
    queue = "drflow-typo-ui"
    page = browser.pages[0] if browser.pages else await browser.new_page()
    request = {"service": "app", "target": "region-b", "reason": "rehearsal", "mode": "yolo"}
    async with build_worker(env.client, tmp_path, task_queue=queue):
        await page.goto(f"{ui}/namespaces/default/workflows", wait_until="domcontentloaded")
        await page.get_by_role("link", name="Start Workflow").click()
        await page.get_by_label("Workflow ID").fill(workflow_id)
        await page.get_by_label("Task Queue").fill(queue)
        await page.get_by_label("Workflow Type").fill("Failover")
        data = page.get_by_role("textbox", name="Data")
        await data.click()
        await data.fill(json.dumps(request))
        await data.blur()
        await expect(data).to_contain_text('"mode": "yolo"')
        start = page.get_by_role("button", name="Start Workflow", exact=True)
        await expect(start).to_be_enabled()
        await start.click()
        await page.get_by_role("link", name="Workflow started successfully").click()
        await expect(page.get_by_role("heading", name=workflow_id)).to_be_visible()
        await expect(page.get_by_test_id("execution-status")).to_have_text("Failed")
        await page.screenshot(path=tmp_path / "typo-failed.png", full_page=True)
        await expect(
            page.get_by_text("mode: Input should be 'planned', 'emergency' or 'drill'").first
        ).to_be_visible()


async def open_runs_view(page: Page, ui: str) -> None:
    """docs/operations.md's view, as a person sets it up: the link, then three columns through Configure
    Columns (Run ID and End removed to make room)."""
    await page.goto(runs_list_url("default", base=ui), wait_until="domcontentloaded")
    await expect(page.get_by_role("row").nth(1)).to_be_visible()
    await page.get_by_test_id("workflows-summary-table-configuration-button").click()
    for column in ("DrflowService", "DrflowKind", "DrflowStep"):
        await page.get_by_role("button", name=f"Add {column} column").click()
    for column in ("Run ID", "End"):
        await page.get_by_role("button", name=f"Remove {column} column").click()
    await page.get_by_role("button", name="Close Workflows Table configuration").click()
    await expect(page.get_by_text("Configure Workflows Table")).to_be_hidden()


def _row(page: Page, workflow_id: str) -> Locator:
    """The list's row of one run (each row is a link-bearing table row)."""
    return page.get_by_role("row").filter(has=page.get_by_role("link", name=workflow_id, exact=True))


async def test_the_list_tells_outcomes_apart_and_a_waiting_run_says_what_it_waits_for(
    ui_env: tuple[WorkflowEnvironment, str],
    world: SandboxWorld,
    worker: None,
    browser: BrowserContext,
    tmp_path: Path,
) -> None:
    """The saved view of docs/operations.md: drflow's runs only, with DrflowStep telling each outcome.

    Runs are started as the UI's form starts them (plain JSON, no static summary) and answered with the CLI
    as a person would. The run page of a waiting run says, on the tab it opens on, what it waits for and the
    command that answers it.
    """
    env, ui = ui_env
    page = browser.pages[0] if browser.pages else await browser.new_page()
    cli = ("--runbooks", str(world.runbooks))
    address = ("--address", target(env))

    def request(reason: str) -> dict[str, str]:
        return {"service": world.service, "target": "region-b", "reason": reason, "requested_by": "alice"}

    # Rejected, and refused while it held the lock.
    rejected_id, refused_id, aborted_id = "ui-list-rejected", "ui-list-refused", "ui-list-aborted"
    await env.client.start_workflow(
        "Failover", request("to be rejected"), id=rejected_id, task_queue=TASK_QUEUE
    )
    gate: FailoverReport = await wait_for_gate(env.client, rejected_id)
    assert gate.gate_checksum is not None
    refused = await env.client.execute_workflow(
        "Failover", request("a second run"), id=refused_id, task_queue=TASK_QUEUE, result_type=FailoverReport
    )
    assert refused.outcome == "refused", refused.messages

    # The run page at the gate: the Timeline (the tab it opens on) names the gate and the command.
    await page.goto(f"{ui}/namespaces/default/workflows/{rejected_id}", wait_until="domcontentloaded")
    await expect(page.get_by_test_id("execution-status")).to_have_text("Running")
    await expect(page.get_by_role("tab", name="Timeline")).to_have_attribute("aria-selected", "true")
    label = f"awaiting approval of gate failover: drflow approve {rejected_id} --as <you> --plan {gate.gate_checksum}"
    await expect(page.get_by_text(label).first).to_be_visible()
    await page.screenshot(path=tmp_path / "run-at-gate.png")
    await page.get_by_role("tab", name="User Metadata").click()
    details = page.frame_locator('iframe[title="output"]')
    await expect(details.get_by_text(gate.gate_checksum).first).to_be_visible()
    await page.screenshot(path=tmp_path / "run-at-gate-details.png", full_page=True)
    rejected = await drflow(
        *cli, "reject", rejected_id, "--as", "bob", "--plan", gate.gate_checksum, "--reason", "not now", *address
    )  # fmt: skip
    assert rejected.returncode == 0, rejected.stderr
    handle = env.client.get_workflow_handle(rejected_id, result_type=FailoverReport)
    assert (await asyncio.wait_for(handle.result(), 60)).outcome == "rejected"

    # Aborted: propagation cannot be proven with the secondary down; carol aborts the failed step.
    world.write_runbook(dns__propagation_budget="2s")
    world.sandbox._named_pair().stop_secondary()
    await env.client.start_workflow(
        "Failover", request("to be aborted"), id=aborted_id, task_queue=TASK_QUEUE
    )
    gate = await wait_for_gate(env.client, aborted_id)
    assert gate.gate_checksum is not None
    approved = await drflow(
        *cli, "approve", aborted_id, "--as", "bob", "--plan", gate.gate_checksum, "--reason", "go", *address
    )  # fmt: skip
    assert approved.returncode == 0, approved.stderr
    waiting = await wait_for_decision(env.client, aborted_id)
    await page.goto(f"{ui}/namespaces/default/workflows/{aborted_id}", wait_until="domcontentloaded")
    step_label = f"awaiting a decision, step {waiting.waiting_step} failed: drflow decide {aborted_id}"
    await expect(page.get_by_text(step_label).first).to_be_visible()
    aborted = await drflow(*cli, "decide", aborted_id, "abort", "--as", "carol", "--reason", "stop", *address)
    assert aborted.returncode == 0, aborted.stderr
    handle = env.client.get_workflow_handle(aborted_id, result_type=FailoverReport)
    assert (await asyncio.wait_for(handle.result(), 60)).outcome == "aborted"

    # Input that does not validate: Failed at once, and still in the view (it never tagged itself).
    typo_id = "ui-list-typo"
    typo = await env.client.start_workflow(
        "Failover", {**request("typo"), "mode": "yolo"}, id=typo_id, task_queue=TASK_QUEUE
    )
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for(typo.result(), 60)

    # The documented view: the runs only (no lock, no archive), DrflowStep added through Configure Columns.
    await open_runs_view(page, ui)
    await expect(_row(page, typo_id)).to_contain_text("Failed", ignore_case=True)
    for workflow_id, outcome in ((rejected_id, "rejected"), (refused_id, "refused"), (aborted_id, "aborted")):
        row = _row(page, workflow_id)
        await expect(row).to_contain_text("Completed", ignore_case=True)  # Temporal's status: drflow ended it
        await expect(row.get_by_role("cell", name=outcome, exact=True)).to_be_visible()
    rows = page.get_by_role("row")
    await expect(rows.filter(has_text="drflow-lock-")).to_have_count(0)
    await expect(rows.filter(has_text="archive-")).to_have_count(0)
    await page.screenshot(path=tmp_path / "runs-list.png")

    # Unfiltered ("All", the UI remembers the last query), the helpers are there: the filter hides them.
    await page.get_by_role("link", name="All", exact=True).click()
    await expect(rows.filter(has_text="drflow-lock-").first).to_be_visible()
