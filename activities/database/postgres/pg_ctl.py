"""PostgreSQL's server programs (pg_ctl, pg_controldata, pg_rewind) run the way PostgreSQL insists on.

The fence by shutdown, the unfence and the rewind of a node drflow manages on the worker's host use these,
and so does the sandbox. ``initdb`` and ``pg_ctl`` refuse to run as root, so as root every server-side
command runs as the owner of the data directory (``runuser``); port and socket directory go on the
``pg_ctl -o`` command line, never only in postgresql.conf, because base backups and rewinds copy the
configuration files from one node to the other.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

PACKAGE = "postgresql"
_BINDIR_GLOB = "/usr/lib/postgresql/*/bin"
_UNIX_SOCKET_PATH_MAX = 107

ServerState = Literal["running", "stopped"]


class PostgresNotInstalledError(RuntimeError):
    """The server binaries are missing; the message names the Debian package."""


class PostgresCommandError(RuntimeError):
    """A server-side command failed; the message carries its output, never a password."""


def find_pg_bindir(version: str | None = None) -> Path:
    """The directory holding initdb, pg_ctl, pg_basebackup, ...: all from one installation.

    ``version`` (a data directory's PG_VERSION) picks that major's binaries when installed. Otherwise PATH
    wins (resolving Debian's symlinks to find the siblings that are not on PATH), then the newest
    ``/usr/lib/postgresql/*/bin``.
    """
    if version is not None:
        versioned = Path(f"/usr/lib/postgresql/{version}/bin")
        if (versioned / "pg_ctl").is_file():
            return versioned
    on_path = shutil.which("initdb")
    if on_path is not None:
        bindir = Path(on_path).resolve().parent
        if (bindir / "pg_ctl").is_file():
            return bindir
    candidates = [Path(p).parent for p in glob.glob(_BINDIR_GLOB + "/initdb")]
    if candidates:
        return max(candidates, key=lambda p: _version_key(p.parent.name))
    raise PostgresNotInstalledError(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH or in /usr/lib/postgresql/*/bin; "
        f"install them with `apt-get install {PACKAGE}` (Debian/Ubuntu)"
    )


def pg_binary(name: str, data_dir: Path | str | None = None) -> str:
    """One server program, matching the data directory's major version when it can be read."""
    version = None
    if data_dir is not None:
        with contextlib.suppress(OSError):
            version = (Path(data_dir) / "PG_VERSION").read_text().strip()
    path = find_pg_bindir(version) / name
    if not path.is_file():
        raise PostgresNotInstalledError(
            f"{path} is missing; reinstall the server binaries with `apt-get install {PACKAGE}`"
        )
    return str(path)


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


def _owner_of(path: Path) -> int:
    """The uid owning ``path``, or its nearest existing ancestor (a data directory not created yet)."""
    for candidate in (path, *path.parents):
        with contextlib.suppress(FileNotFoundError):
            return candidate.stat().st_uid
    return os.geteuid()


def run_as_owner(
    data_dir: Path | str,
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a server-side command as the owner of ``data_dir``: PostgreSQL refuses root and foreign data dirs.

    As root for another owner the command goes through ``runuser -u OWNER --``; as that owner it runs
    directly; anyone else gets a clear error. Output is captured (LC_ALL=C so it can be parsed).
    """
    data_dir = Path(data_dir).absolute()
    owner = _owner_of(data_dir)
    command = list(argv)
    if owner != os.geteuid():
        if os.geteuid() != 0:
            raise PostgresCommandError(
                f"{data_dir} belongs to {_user_name(owner)} but this process runs as "
                f"{_user_name(os.geteuid())}: run drflow as that user or as root"
            )
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        command = [runuser, "-u", _user_name(owner), "--", *command]
    environment = dict(os.environ if env is None else env)
    environment.update(LC_ALL="C", LANG="C")
    try:
        # cwd=/: the service user may not be allowed into the caller's working directory.
        completed = subprocess.run(
            command,
            cwd="/",
            env=environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        raise PostgresCommandError(f"{Path(argv[0]).name} did not finish within {timeout:g}s") from err
    if check and completed.returncode != 0:
        raise PostgresCommandError(
            f"{Path(argv[0]).name} {' '.join(argv[1:2])} failed with status {completed.returncode}: "
            f"{_tail(completed.stderr or completed.stdout)}"
        )
    return completed


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _tail(text: str, lines: int = 8) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "(no output)"


def pg_ctl_status(data_dir: Path | str) -> ServerState:
    """``pg_ctl status``: 0 running, 3 not running; anything else means there is no usable data directory."""
    data_dir = Path(data_dir).absolute()
    result = run_as_owner(
        data_dir, [pg_binary("pg_ctl", data_dir), "status", "-D", str(data_dir)], check=False
    )
    if result.returncode == 0:
        return "running"
    if result.returncode == 3:
        return "stopped"
    raise PostgresCommandError(f"{data_dir} is not a PostgreSQL data directory: {_tail(result.stderr)}")


def pg_ctl_start(
    data_dir: Path | str,
    port: int,
    *,
    timeout: float = 30.0,
    log_path: Path | str | None = None,
    socket_dir: Path | str | None = None,
    tcp_only: bool = False,
) -> None:
    """``pg_ctl start -w`` with the port and socket directory on the command line.

    Defaults follow the sandbox layout: ``postgres.log`` and ``run/`` beside the data directory.
    ``tcp_only`` opens no Unix socket at all (the remote topology: reachable over the network only).
    """
    data_dir = Path(data_dir).absolute()
    log_path = Path(log_path) if log_path is not None else data_dir.parent / "postgres.log"
    socket_dir = Path(socket_dir) if socket_dir is not None else data_dir.parent / "run"
    sockets = str(socket_dir)
    if tcp_only or not socket_dir.is_dir() or len(f"{socket_dir}/.s.PGSQL.{port}") > _UNIX_SOCKET_PATH_MAX:
        # Everything connects over TCP; a missing or too long path would make the server refuse to start.
        sockets = ""
    options = f"-p {port} -k {shlex.quote(sockets)}"
    wait = str(max(1, round(timeout)))
    run_as_owner(
        data_dir,
        [
            pg_binary("pg_ctl", data_dir), "start", "-D", str(data_dir), "-w", "-t", wait,
            "-l", str(log_path), "-o", options,
        ],
        timeout=timeout + 10,
    )  # fmt: skip


def pg_ctl_stop(
    data_dir: Path | str, mode: Literal["smart", "fast", "immediate"] = "fast", timeout: float = 30
) -> None:
    data_dir = Path(data_dir).absolute()
    wait = str(max(1, round(timeout)))
    run_as_owner(
        data_dir,
        [pg_binary("pg_ctl", data_dir), "stop", "-D", str(data_dir), "-m", mode, "-w", "-t", wait],
        timeout=timeout + 10,
    )


def pg_controldata(data_dir: Path | str) -> dict[str, str]:
    """``pg_controldata`` as a mapping, e.g. ``["Latest checkpoint location"] == "0/3000060"``."""
    data_dir = Path(data_dir).absolute()
    result = run_as_owner(data_dir, [pg_binary("pg_controldata", data_dir), "-D", str(data_dir)], timeout=30)
    values: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    return values


def slot_name(region: str) -> str:
    """A region's physical replication slot and application_name: ``region-b`` -> ``region_b``."""
    return re.sub(r"[^a-z0-9_]", "_", region.lower())
