"""What the sandbox needs from the host: system packages, free ports, directories, processes, probes.

Each check fails with a ``SandboxError`` that names the fix (the command to run, the port and its purpose),
rather than leaving an operator with a server's log line after a timeout.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from activities.database.postgres.pg_ctl import PostgresNotInstalledError, find_pg_bindir
from workers.sandbox.haproxy import HaproxyNotInstalledError, find_haproxy
from workers.sandbox.named import NamedNotInstalledError, find_named
from workers.sandbox.processes import stop_process

SYSTEM_PACKAGES = {
    "named": "bind9", "postgres": "postgresql", "haproxy": "haproxy", "ssh-keygen": "openssh-client"
}  # fmt: skip
_LOG_TAIL_LINES = 20


class SandboxError(RuntimeError):
    """The sandbox cannot do what was asked; the message is what an operator needs to fix it."""


def ensure_system_packages() -> list[str]:
    """Install named, the PostgreSQL server, HAProxy and ssh-keygen if missing (root on Debian/Ubuntu).

    Otherwise a missing program is an error carrying the exact command to run.
    """
    missing = []
    try:
        find_named()
    except NamedNotInstalledError:
        missing.append(SYSTEM_PACKAGES["named"])
    try:
        find_pg_bindir()
    except PostgresNotInstalledError:
        missing.append(SYSTEM_PACKAGES["postgres"])
    try:
        find_haproxy()
    except HaproxyNotInstalledError:
        missing.append(SYSTEM_PACKAGES["haproxy"])
    if shutil.which("ssh-keygen") is None:  # the demo people's keys (workers/sandbox/people.py)
        missing.append(SYSTEM_PACKAGES["ssh-keygen"])
    if not missing:
        return []
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    apt_get = shutil.which("apt-get")
    if os.geteuid() != 0 or apt_get is None or not Path("/etc/debian_version").exists():
        raise SandboxError(
            f"the sandbox needs {' and '.join(missing)}, which are not installed: "
            f"run `sudo apt-get install -y {' '.join(missing)}` (Debian/Ubuntu; elsewhere install BIND's "
            "named, the PostgreSQL server, HAProxy and OpenSSH's ssh-keygen from your package manager)"
        )
    environment = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for step in (["apt-get", "update", "-qq"], command):
        done = subprocess.run(step, env=environment, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise SandboxError(
                f"`{' '.join(step)}` failed with status {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-500:]}\ninstall them yourself: "
                f"`apt-get install -y {' '.join(missing)}`"
            )
    return missing


def require_free(host: str, port: int, what: str, udp: bool = False) -> None:
    """Refuse early with the port and its purpose, rather than a server's log line after a timeout."""
    kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM] if udp else [socket.SOCK_STREAM]
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:
                # As servers do: a connection lingering in TIME_WAIT does not make the port unusable.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                raise SandboxError(
                    f"port {port} ({what}) is already in use on {host}: stop whatever holds it (another "
                    "sandbox? `drflow sandbox down --state-dir DIR`) or bring this one up on other ports"
                ) from None


def make_searchable_dirs(directory: Path) -> None:
    """Create the state directory so that the postgres system user can reach its own subdirectories."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    for created in missing:
        created.chmod(0o755)


def terminate(pid: int | None, timeout: float) -> None:
    """Stop the process if there is one (a pid file may name none)."""
    if pid is not None:
        stop_process(pid, timeout)


def http_ok(url: str) -> bool:
    """Whether the URL answers 200 now, bypassing any proxy from the environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def log_tail(path: Path) -> str:
    """The last lines of a server's log, to put in the error that says it did not start."""
    try:
        lines = path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
    except OSError:
        return "(no log output)"
    return f"--- {path} ---\n" + "\n".join(lines)
