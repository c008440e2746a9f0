"""A real Prometheus scraping a worker's metrics, for the tests that read drflow's metrics back.

``scraped_client`` gives a Temporal client whose Runtime serves Prometheus metrics (a worker built from it
serves them too) and a Prometheus (Debian package ``prometheus``) scraping that endpoint every second, with
``rules`` evaluated every second when given; ``until`` polls its HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from workers.sandbox.named import free_port
from workers.telemetry import metrics_runtime


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    assert path, f"{name} is missing: run scripts/system-deps promtool (Debian package prometheus)"
    return path


def query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def until(base: str, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The query's result once it is not empty, or the empty result after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = await asyncio.to_thread(query, base, expr)
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.5)


def start_prometheus(config: Path, tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    with (tmp_path / "prometheus.log").open("w") as log:
        return subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip


@asynccontextmanager
async def scraped_client(
    env: WorkflowEnvironment, tmp_path: Path, rules: Path | None = None
) -> AsyncIterator[tuple[Client, str]]:
    """(a client whose workers serve metrics, the base URL of the Prometheus scraping them)."""
    metrics_port, prom_port = free_port(), free_port()
    runtime = metrics_runtime(f"127.0.0.1:{metrics_port}")
    assert runtime is not None
    client = await Client.connect(
        env.client.service_client.config.target_host,
        namespace=env.client.namespace,
        data_converter=env.client.data_converter,
        runtime=runtime,
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        + (f"rule_files: ['{rules}']\n" if rules is not None else "")
        + "scrape_configs:\n"
        f"  - job_name: drflow-worker\n    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    prometheus = start_prometheus(config, tmp_path, prom_port)
    try:
        yield client, f"http://127.0.0.1:{prom_port}"
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(timeout=10)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait()
