"""`drflow dev`: the embedded stack comes up, serves, survives a restart and leaves nothing behind."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from tests.test_cli_runbooks import DRFLOW
from tests.test_readiness_workflow import World, world  # noqa: F401  (fixture)
from workers.dev import port_in_use
from workers.sandbox.named import free_ports
from workflows.readiness_report import ReadinessReport, ReadinessRequest


async def start_dev(
    state_dir: Path, runbooks: Path, port: int, ui_port: int, *extra: str, banner: list[str] | None = None
) -> asyncio.subprocess.Process:
    """``banner``, when given, receives the lines ``drflow dev`` printed before it serves."""
    process = await asyncio.create_subprocess_exec(
        *DRFLOW,
        "--runbooks",
        str(runbooks),
        "dev",
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        "--state-dir",
        str(state_dir),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    lines: list[str] = [] if banner is None else banner
    while not lines or "Ctrl-C stops everything" not in lines[-1]:
        line = await asyncio.wait_for(process.stdout.readline(), 90)
        assert line, (
            f"drflow dev exited early: {lines} {(await process.stderr.read()).decode() if process.stderr else ''}"
        )
        lines.append(line.decode().rstrip())
    return process


async def stop_dev(process: asyncio.subprocess.Process) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as page:
        return int(page.status)


def leftover_processes(state_dir: Path) -> str:
    found = subprocess.run(["pgrep", "-af", str(state_dir)], capture_output=True, text=True)
    return found.stdout.strip()


async def test_dev_stack_serves_ui_and_worker_and_ctrl_c_stops_everything(
    tmp_path: Path,
    world: World,  # noqa: F811
) -> None:
    world.write_runbook("web")
    port, ui_port = free_ports(2)
    state_dir = tmp_path / "state"
    process = await start_dev(state_dir, world.runbooks, port, ui_port)
    try:
        client = await Client.connect(f"127.0.0.1:{port}", data_converter=pydantic_data_converter)
        attributes = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="default")
        )
        assert {"DrflowService", "DrflowKind", "DrflowStep"} <= set(attributes.custom_attributes)
        report = await client.execute_workflow(
            "Readiness",
            ReadinessRequest(service="web"),
            id="readiness-web-dev",
            task_queue="drflow",
            result_type=ReadinessReport,
        )
        assert report.verdict == "ready", report.reasons
        assert await asyncio.to_thread(http_status, f"http://127.0.0.1:{ui_port}/") == 200
        assert (state_dir / "temporal.db").is_file()
    finally:
        code, out = await stop_dev(process)
    assert code == 0
    assert out.rstrip().endswith("drflow dev: stopped")
    assert not port_in_use("127.0.0.1", port) and not port_in_use("127.0.0.1", ui_port)
    assert leftover_processes(state_dir) == ""

    # The SQLite file keeps histories across a restart.
    process = await start_dev(state_dir, world.runbooks, port, ui_port)
    try:
        client = await Client.connect(f"127.0.0.1:{port}", data_converter=pydantic_data_converter)
        described = await client.get_workflow_handle("readiness-web-dev").describe()
        assert described.status is not None and described.status.name == "COMPLETED"
    finally:
        code, _ = await stop_dev(process)
    assert code == 0
    assert leftover_processes(state_dir) == ""


async def test_dev_stack_refuses_a_taken_port_in_one_line(tmp_path: Path) -> None:
    port, ui_port = free_ports(2)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        process = await asyncio.create_subprocess_exec(
            *DRFLOW,
            "dev",
            "--port",
            str(port),
            "--ui-port",
            str(ui_port),
            "--state-dir",
            str(tmp_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert out == b""
    assert err.decode().splitlines() == [
        f"drflow: port {port} (Temporal gRPC) is already in use on 127.0.0.1: stop whatever holds it "
        "(another `drflow dev` or `temporal server start-dev`?) or choose another with --port/--ui-port"
    ]
    assert not (tmp_path / "temporal.db").exists()


async def test_dev_stack_without_its_worker_leaves_runs_to_a_separate_drflow_worker_that_may_crash(
    tmp_path: Path,
    world: World,  # noqa: F811
) -> None:
    world.write_runbook("web")
    port, ui_port = free_ports(2)
    state_dir = tmp_path / "state"
    banner: list[str] = []
    process = await start_dev(state_dir, world.runbooks, port, ui_port, "--no-worker", banner=banner)
    workers: list[asyncio.subprocess.Process] = []

    async def start_worker() -> asyncio.subprocess.Process:
        started = await asyncio.create_subprocess_exec(
            *DRFLOW, "--runbooks", str(world.runbooks), "worker", "--address", f"127.0.0.1:{port}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        workers.append(started)
        return started

    try:
        assert any(f"--no-worker): run `drflow worker --address 127.0.0.1:{port}`" in line for line in banner)
        client = await Client.connect(f"127.0.0.1:{port}", data_converter=pydantic_data_converter)
        handle = await client.start_workflow(
            "Readiness", ReadinessRequest(service="web"), id="readiness-web-no-worker", task_queue="drflow",
            result_type=ReadinessReport,
        )  # fmt: skip
        await asyncio.sleep(2)
        described = await handle.describe()
        assert described.status is not None and described.status.name == "RUNNING", "no worker ran it"
        worker = await start_worker()
        report = await asyncio.wait_for(handle.result(), 90)
        assert report.verdict == "ready", report.reasons
        # A worker crash (SIGKILL, no drain) leaves the stack serving: the next worker carries on.
        worker.kill()
        await worker.wait()
        described = await handle.describe()
        assert described.status is not None and described.status.name == "COMPLETED"
    finally:
        for started in workers:
            if started.returncode is None:
                started.send_signal(signal.SIGINT)
                await asyncio.wait_for(started.wait(), 60)
        code, out = await stop_dev(process)
    assert code == 0 and out.rstrip().endswith("drflow dev: stopped")
    assert leftover_processes(state_dir) == ""
