"""`drflow sandbox up|status|down` as real processes: every server starts, answers, and stops without a trace."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.postgres import searchable_tmp_dir
from workers.sandbox.named import free_ports
from workers.sandbox.processes import pid_alive
from workers.sandbox.world import REGIONS, SandboxPorts

DRFLOW = str(Path(sys.executable).parent / "drflow")
COMPONENTS = {
    "dns-primary",
    "dns-secondary",
    "postgres-region-a",
    "postgres-region-b",
    "app-region-a",
    "app-region-b",
    "haproxy",
}


def drflow(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DRFLOW_SANDBOX_DIR"}
    return subprocess.run(
        [DRFLOW, "sandbox", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def status(cwd: Path, state_dir: Path) -> dict[str, dict[str, Any]]:
    done = drflow(cwd, "status", "--state-dir", str(state_dir), "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["state_dir"] == str(state_dir)
    return {c["name"]: c for c in document["components"]}


def http(url: str) -> tuple[int, dict[str, Any]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def free_on_both_app_addresses() -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((REGIONS["region-a"], 0))
            port = int(probe.getsockname()[1])
            with socket.socket() as other:
                try:
                    other.bind((REGIONS["region-b"], port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no port free on both app addresses")


def port_flags(ports: SandboxPorts) -> list[str]:
    return [
        "--dns-port", str(ports.dns_primary),
        "--dns-secondary-port", str(ports.dns_secondary),
        "--postgres-port", str(ports.postgres_primary),
        "--postgres-standby-port", str(ports.postgres_standby),
        "--app-port", str(ports.app),
    ]  # fmt: skip


def leftovers(state_dir: Path) -> str:
    found = subprocess.run(["pgrep", "-af", str(state_dir)], capture_output=True, text=True)
    return found.stdout.strip()


@pytest.fixture
def workdir() -> Iterator[Path]:
    with searchable_tmp_dir("drflow-world-") as directory:
        yield directory
        # Whatever a failed test left running goes too.
        for state_dir in (directory / "sandbox", directory / ".drflow" / "sandbox"):
            if state_dir.exists():
                drflow(directory, "down", "--state-dir", str(state_dir))


def test_sandbox_up_is_idempotent_serves_both_regions_resets_and_down_leaves_nothing(workdir: Path) -> None:
    state_dir = workdir / "sandbox"
    dns_primary, dns_secondary, pg_a, pg_b, haproxy = free_ports(5)
    ports = SandboxPorts(dns_primary, dns_secondary, pg_a, pg_b, free_on_both_app_addresses(), haproxy)
    # `drflow sandbox up` has no --haproxy-port flag: ports it is not given come from this world's record.
    state_dir.mkdir()
    (state_dir / "sandbox.json").write_text(json.dumps(dataclasses.asdict(ports)))

    first = drflow(workdir, "up", "--state-dir", str(state_dir), *port_flags(ports))
    assert first.returncode == 0, first.stderr + first.stdout
    assert first.stdout.count("[started]") == 7, first.stdout

    components = status(workdir, state_dir)
    assert set(components) == COMPONENTS
    assert all(c["state"] == "running" and c["pid"] for c in components.values()), components
    assert components["postgres-region-a"]["role"] == "primary"
    assert components["postgres-region-b"]["role"] == "standby"
    assert components["dns-primary"]["address"] == f"127.0.0.1:{ports.dns_primary}"
    assert components["app-region-b"]["address"] == f"127.0.2.1:{ports.app}"
    assert components["haproxy"]["address"] == f"127.0.0.1:{ports.haproxy}"
    assert components["haproxy"]["detail"] == "weights region-a 100, region-b 0"
    assert (state_dir / "dns" / "tsig.secret").is_file()
    assert (state_dir / "postgres" / "password").stat().st_mode & 0o777 == 0o600

    for region, address in REGIONS.items():
        assert http(f"http://{address}:{ports.app}/healthz") == (200, {"status": "ok", "region": region})
    assert http(f"http://127.0.1.1:{ports.app}/healthz/deep") == (
        200,
        {"status": "ok", "region": "region-a", "database": "writable"},
    )
    code, body = http(f"http://127.0.2.1:{ports.app}/healthz/deep")
    assert (code, body["status"], body["region"]) == (503, "failing", "region-b")
    assert "read-only" in body["error"]
    # HAProxy sends everything to the primary region at first; region-b's page reads from its standby.
    assert http(f"http://127.0.0.1:{ports.haproxy}/") == (
        200,
        {"status": "ok", "region": "region-a", "database": "primary"},
    )
    assert http(f"http://127.0.2.1:{ports.app}/") == (
        200,
        {"status": "ok", "region": "region-b", "database": "standby"},
    )

    # Up again (ports now come from the state directory): everything is left alone.
    second = drflow(workdir, "up", "--state-dir", str(state_dir))
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("[already-running]") == 7, second.stdout
    assert {n: c["pid"] for n, c in status(workdir, state_dir).items()} == {
        n: c["pid"] for n, c in components.items()
    }

    # Change the world (promote region-b, so both are primaries), then reset it to the initial state.
    password = (state_dir / "postgres" / "password").read_text().strip()
    with psycopg.connect(
        host="127.0.0.1",
        port=ports.postgres_standby,
        dbname="app",
        user="drflow",
        password=password,
        autocommit=True,
    ) as conn:
        conn.execute("SELECT pg_promote()")
    reset = drflow(workdir, "up", "--reset", "--state-dir", str(state_dir))
    assert reset.returncode == 0, reset.stderr
    assert reset.stdout.count("[started]") == 7, reset.stdout
    after_reset = status(workdir, state_dir)
    assert after_reset["postgres-region-a"]["role"] == "primary"
    assert after_reset["postgres-region-b"]["role"] == "standby"
    assert all(not pid_alive(c["pid"]) for c in components.values())
    assert (state_dir / "postgres" / "password").read_text().strip() != password

    down = drflow(workdir, "down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert all(not pid_alive(c["pid"]) for c in after_reset.values())
    assert all(c["state"] == "stopped" and c["pid"] is None for c in status(workdir, state_dir).values())
    assert leftovers(state_dir) == ""


def test_default_layout_comes_up_on_the_runbook_ports_or_names_the_busy_one(workdir: Path) -> None:
    """The runbook's ports (runbooks/sandbox.yaml); a developer's own sandbox may hold them, and then up must
    refuse, naming the port, rather than start half a world."""
    defaults = SandboxPorts()
    busy = [p for p in (defaults.dns_primary, defaults.dns_secondary) if _in_use("127.0.0.1", p, udp=True)]
    busy += [p for p in (defaults.postgres_primary, defaults.postgres_standby) if _in_use("127.0.0.1", p)]
    busy += [defaults.app for address in REGIONS.values() if _in_use(address, defaults.app)]
    busy += [defaults.haproxy] if _in_use("127.0.0.1", defaults.haproxy) else []

    up = drflow(workdir, "up")  # the default state directory, relative to the working directory
    state_dir = workdir / ".drflow" / "sandbox"
    if busy:
        assert up.returncode == 1
        assert f"port {busy[0]}" in up.stderr and "already in use" in up.stderr
        return
    assert up.returncode == 0, up.stderr + up.stdout
    components = status(workdir, state_dir)
    assert components["dns-primary"]["address"] == "127.0.0.1:15353"
    assert components["dns-secondary"]["address"] == "127.0.0.1:15354"
    assert components["postgres-region-a"]["address"] == "127.0.0.1:15432"
    assert components["postgres-region-b"]["address"] == "127.0.0.1:15433"
    assert components["app-region-a"]["address"] == "127.0.1.1:18080"
    assert components["haproxy"]["address"] == "127.0.0.1:18090"
    assert http("http://127.0.1.1:18080/healthz/deep")[0] == 200
    # The secret references of runbooks/sandbox.yaml resolve relative to this directory.
    assert (workdir / ".drflow/sandbox/dns/tsig.secret").is_file()
    assert (workdir / ".drflow/sandbox/postgres/password").is_file()

    down = drflow(workdir, "down")
    assert down.returncode == 0, down.stderr
    assert all(not pid_alive(c["pid"]) for c in components.values())
    assert leftovers(state_dir) == ""


def _in_use(host: str, port: int, udp: bool = False) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,):
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                return True
    return False
