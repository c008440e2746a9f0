"""The worker as docker-compose runs it: a read-only filesystem but its declared volumes, archiving a run.

There is no Docker engine here, so the container's filesystem view is emulated with the kernel's own tools
(tests/support/readonly_root.py): ``drflow worker`` runs in a private mount namespace in which every mount is
read-only (root ignores file modes, but not a read-only mount) except the compose service's volumes and
tmpfs, each mapped to a temporary directory. Its environment is the image's ``ENV`` overlaid with the
service's ``environment`` from docker-compose.yml (read with PyYAML), container paths mapped to those
directories and ``TEMPORAL_ADDRESS`` to the test's dev server; its working directory is an empty read-only
directory standing for ``/app``. Nothing of the test process's environment leaks in (not even the suite's
``DRFLOW_ARCHIVE=off``).

A Readiness run for a service whose runbook sits in the mounted runbooks directory ends by starting its
archive (``archive_start``); the worker archives it, and the archive must land in the state volume, where
nothing else may appear. The read-only view is probed before the worker starts (a write next to the code,
in the working directory, in /tmp must fail with EROFS), so the test cannot pass with a view that does not
bite. A missing component (root, unshare, mount, the compose keys) fails the test; it never skips.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from activities.archive import ARCHIVE_ENV, ArchiveResult, archive_workflow_id
from activities.drill_report import DEFAULT_REPORTS, REPORTS_ENV
from runbooks.loader import DEFAULT_RUNBOOKS_DIR, RUNBOOKS_ENV
from tests.support.failover import stateless_service
from tests.support.readonly_root import READY, SETUP_FAILED
from tests.test_cli_check import target
from tests.test_compose import dockerfile_env
from workers.audit.archive import DEFAULT_ARCHIVE, verify
from workers.sandbox.named import NamedPair, free_port
from workers.telemetry import METRICS_ENV
from workflows.readiness import ReadinessWorkflow
from workflows.readiness_report import ReadinessReport, ReadinessRequest

REPO = Path(__file__).resolve().parent.parent
SERVICE = "drflow-worker"
WORKDIR = PurePosixPath("/app")  # the Dockerfile's WORKDIR
SETUP = REPO / "tests" / "support" / "readonly_root.py"
DRFLOW = Path(sys.executable).parent / "drflow"
STARTED = "worker polling task queue"


@dataclass
class Container:
    """The compose service's filesystem, each container path mapped to a host directory."""

    root: Path
    mounts: dict[PurePosixPath, tuple[Path, bool]] = field(default_factory=dict)  # target -> (dir, rw)
    tmpfs: dict[PurePosixPath, Path] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    app: Path = Path()

    def host(self, container_path: str) -> Path:
        path = PurePosixPath(container_path)
        for where, folder in [*((t, d) for t, (d, _) in self.mounts.items()), *self.tmpfs.items()]:
            if path == where or where in path.parents:
                return folder / path.relative_to(where)
        raise AssertionError(f"{container_path} is on no volume or tmpfs of {SERVICE}")

    def output(self, key: str, default: str) -> Path:
        """Where the worker puts what ``key`` configures: its value, else the default relative to /app."""
        value = self.environment.get(key) or default
        return Path(value) if Path(value).is_absolute() else self.app / value


def worker_service() -> dict[str, Any]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    service: dict[str, Any] = compose["services"][SERVICE]
    assert service.get("read_only") is True, f"{SERVICE} is not read_only: this test would prove nothing"
    assert isinstance(service.get("environment"), dict), f"{SERVICE}: environment must be a mapping"
    return service


def container_view(root: Path, temporal_address: str) -> Container:
    """The worker's volumes, tmpfs, working directory and environment, on the host."""
    service = worker_service()
    view = Container(root=root)
    for number, entry in enumerate(service.get("volumes") or []):
        assert isinstance(entry, str), f"{SERVICE}: use the short volume syntax (source:target[:ro]): {entry}"
        parts = entry.split(":")
        assert len(parts) in (2, 3), entry
        target, mode = PurePosixPath(parts[1]), parts[2] if len(parts) == 3 else "rw"
        folder = root / "volumes" / f"{number}-{target.name}"
        folder.mkdir(parents=True)
        view.mounts[target] = (folder, mode != "ro")
    for number, target in enumerate(service.get("tmpfs") or []):
        folder = root / "tmpfs" / f"{number}-{PurePosixPath(target).name}"
        folder.mkdir(parents=True)
        view.tmpfs[PurePosixPath(target)] = folder
    view.app = root / "app"
    view.app.mkdir()

    environment = {**dockerfile_env(), **{k: str(v) for k, v in service["environment"].items()}}
    for key, value in environment.items():
        if value.startswith("/"):
            environment[key] = str(view.host(value))
    environment["TEMPORAL_ADDRESS"] = temporal_address
    environment["PATH"] = f"{DRFLOW.parent}:{os.defpath}"
    environment["HOME"] = str(view.app)  # /home/drflow is on the read-only root as well
    if PurePosixPath("/tmp") in view.tmpfs:
        environment["TMPDIR"] = str(view.tmpfs[PurePosixPath("/tmp")])
    view.environment = environment
    return view


def require_the_tools() -> None:
    """Fail, never skip: without these the emulation is not the container's view."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root, for `unshare --mount` and read-only bind mounts")
    for tool in ("unshare", "mount"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} (util-linux) is not installed: it emulates the container's read-only root")


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@asynccontextmanager
async def worker_in(view: Container, task_queue: str) -> AsyncIterator[list[str]]:
    """``drflow worker`` (the service's command) in the read-only view; yields its stderr lines so far."""
    require_the_tools()
    arguments = [f"--cwd={view.app}"]
    for folder, writable in view.mounts.values():
        arguments.append(f"--rw={folder}" if writable else f"--ro={folder}")
    arguments += [f"--tmpfs={folder}" for folder in view.tmpfs.values()]
    command = worker_service().get("command") or ["worker"]
    process = await asyncio.create_subprocess_exec(
        "unshare", "--mount", "--propagation", "private", "--",
        sys.executable, str(SETUP), *arguments, "--",
        str(DRFLOW), *command, "--task-queue", task_queue,
        env=view.environment, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[str] = []

    async def collect() -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            lines.append(raw.decode(errors="replace").rstrip("\n"))

    reader = asyncio.create_task(collect())
    try:
        async with asyncio.timeout(60):
            while not any(STARTED in line for line in lines):
                if process.returncode is not None or reader.done():
                    await process.wait()
                    note = " (the read-only setup failed)" if process.returncode == SETUP_FAILED else ""
                    pytest.fail(f"the worker exited {process.returncode}{note}:\n" + "\n".join(lines))
                await asyncio.sleep(0.1)
        assert READY in lines, "the worker started without the read-only view"
        yield lines
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 45)
            except TimeoutError:
                process.kill()
                await process.wait()
        await asyncio.wait_for(reader, 10)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


async def readiness_and_its_archive(client: Client, service: str, task_queue: str) -> ArchiveResult:
    handle = await client.start_workflow(
        ReadinessWorkflow.run, ReadinessRequest(service=service, archive=True),
        id=f"readiness-{service}-{uuid.uuid4().hex[:6]}", task_queue=task_queue,
    )  # fmt: skip
    report: ReadinessReport = await asyncio.wait_for(handle.result(), 120)
    assert report.verdict in ("ready", "degraded", "not-ready"), report
    assert handle.result_run_id is not None
    archive = client.get_workflow_handle(
        archive_workflow_id(handle.id, handle.result_run_id), result_type=ArchiveResult
    )
    async with asyncio.timeout(120):
        while True:  # Readiness starts its archive as its last step; the run may not exist for a moment
            try:
                return await archive.result()
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
            await asyncio.sleep(0.2)


async def test_the_compose_worker_archives_a_run_into_its_state_volume_and_writes_nowhere_else(
    dev_env: WorkflowEnvironment, dns_world: NamedPair, tmp_path: Path, task_queue: str
) -> None:
    view = container_view(tmp_path / "container", target(dev_env))
    archive_dir = view.output(ARCHIVE_ENV, DEFAULT_ARCHIVE)
    reports_dir = view.output(REPORTS_ENV, DEFAULT_REPORTS)
    runbooks = view.output(RUNBOOKS_ENV, DEFAULT_RUNBOOKS_DIR)
    volumes = [folder for folder, writable in view.mounts.values() if writable]
    state = archive_dir.parent
    assert state in volumes, f"{ARCHIVE_ENV}: archives would go to {archive_dir}, on no writable volume"
    assert reports_dir.parent == state, f"{REPORTS_ENV}: drill reports would go to {reports_dir}, not beside"

    # The compose file publishes the metrics port; here the same listener, on a port of the test's own.
    assert view.environment[METRICS_ENV].endswith(":9464"), "the compose worker serves metrics"
    metrics_port = free_port()
    view.environment[METRICS_ENV] = f"127.0.0.1:{metrics_port}"

    with stateless_service(runbooks, dns_world) as service:
        runbook_files = tree(runbooks)
        async with worker_in(view, task_queue) as log:
            started = "\n".join(log)
            # the worker said what it serves and where it writes, and that it can write there
            assert f"serving 1 runbook(s) from {runbooks}: {service.service}" in started, started
            assert f"archives go to {archive_dir}" in started, started
            assert f"drill reports go to {reports_dir}" in started, started
            assert " ERROR " not in started, started
            try:
                archived = await readiness_and_its_archive(dev_env.client, service.service, task_queue)
                metrics = await asyncio.to_thread(scrape, f"http://127.0.0.1:{metrics_port}/metrics")
            except BaseException:
                print("the worker's log:", *log, sep="\n")
                raise
            # served from the read-only tree: the SDK's metrics and drflow's, for the run it just did
            verdict = rf'drflow_readiness_verdict{{[^}}]*service="{service.service}"[^}}]*}} 1'
            assert re.search(verdict, metrics), metrics[:2000]
            assert "temporal_workflow_completed" in metrics
        workflow_id, run_id = archived.manifest.workflow_id, archived.manifest.run_id

    output = "\n".join(log)
    assert " ERROR " not in output and "Read-only file system" not in output, output

    # the archive is in the state volume, complete and verified
    folder = archive_dir / workflow_id / run_id
    assert Path(archived.location) == folder
    assert verify(str(folder)).ok
    # ... and it is the only thing written anywhere the worker could write (its tmpfs is gone with it)
    assert tree(state) == sorted(
        [
            "archive", f"archive/{workflow_id}", f"archive/{workflow_id}/{run_id}",
            *(f"archive/{workflow_id}/{run_id}/{name}"
              for name in ("history.json", "manifest.json", "report.json", "report.md")),
            # the store's chain: the archive's place, claimed before its manifest was written
            "archive/.drflow-chain", "archive/.drflow-chain/0000000001.json",
        ]
    )  # fmt: skip
    assert tree(view.app) == [], "nothing in the working directory (/app)"
    assert runbook_files == [f"{service.service}.yaml"]


async def test_a_worker_without_runbooks_or_its_volume_says_so_at_start(
    dev_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    view = container_view(tmp_path / "container", target(dev_env))
    runbooks = view.output(RUNBOOKS_ENV, DEFAULT_RUNBOOKS_DIR)
    async with worker_in(view, task_queue) as log:
        pass
    output = "\n".join(log)
    assert f"WARNING drflow.worker: no runbooks in {runbooks}" in output, output
    assert " ERROR " not in output, output

    # the image's defaults removed (the compose file before it had a volume): relative to /app, read-only
    for key in (ARCHIVE_ENV, REPORTS_ENV):
        del view.environment[key]
    async with worker_in(view, f"{task_queue}-bare") as log:
        pass
    output = "\n".join(log)
    assert f"ERROR drflow.worker: archives cannot be written to {view.app}/.drflow/archive" in output, output
    assert f"ERROR drflow.worker: drill reports cannot be written to {view.app}/.drflow/drills" in output
    assert tree(view.app) == []
