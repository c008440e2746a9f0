"""A PostgreSQL primary and streaming standby from the system binaries: the sandbox's two-region database.

Real servers rather than a fake, so that fencing by shutdown, replay lag, ``pg_promote()`` and ``pg_rewind``
behave as they do in production. Layout under the directory (``<state>/postgres``)::

    password             the drflow superuser's password (mode 0600, for the worker and the apps)
    pgpass               the same for the servers' own replication connections (owned by the data owner)
    <region>/data        the data directory
    <region>/postgres.log
    <region>/run         the Unix socket directory

``initdb`` and ``pg_ctl`` refuse to run as root, so when root every server-side command runs as the
``postgres`` system user (``runuser``) and the region directories belong to it. Port and socket directory go
on the ``pg_ctl -o`` command line, never only in postgresql.conf: base backups and rewinds copy the
configuration files from one node to the other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import psycopg
from psycopg import sql

from activities.database.postgres.pg_ctl import (
    PACKAGE,
    PostgresCommandError,
    PostgresNotInstalledError,
    pg_binary,
    pg_controldata,
    pg_ctl_start,
    pg_ctl_status,
    pg_ctl_stop,
    run_as_owner,
    slot_name,
)
from runbooks.model import PostgresNode, PostgresRole
from workers.sandbox.processes import pid_alive

log = logging.getLogger("drflow.sandbox.postgres")

LOOPBACK = "127.0.0.1"
SERVICE_USER = "postgres"
PASSWORD_FILE = "password"
PGPASS_FILE = "pgpass"
APP_PASSWORD_FILE = "app-password"
APP_USER = "app"
_CREATED_MARKER = ".created"
_LOG_TAIL_LINES = 25
PROBE_TABLE = "health_probe"

Role = Literal["primary", "standby"]
StartOutcome = Literal["started", "already-running", "held"]


def _service_account() -> tuple[int, int] | None:
    """(uid, gid) the servers run as when we are root; None when they run as the current user."""
    if os.geteuid() != 0:
        return None
    try:
        account = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise PostgresNotInstalledError(
            f"running as root, the servers must run as the {SERVICE_USER!r} system user, which does not "
            f"exist; install `{PACKAGE}` (it creates the user) or run the sandbox as an ordinary user"
        ) from None
    return account.pw_uid, account.pw_gid


def postmaster_pid(data_dir: Path | str) -> int | None:
    """The running postmaster of ``data_dir``, from postmaster.pid, checked against /proc (no stale pids)."""
    data_dir = Path(data_dir).absolute()
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if str(data_dir).encode() in cmdline and pid_alive(pid) else None


# ------------------------------------------------------------------------------------------- the pair
@dataclass
class PostgresPairConfig:
    """Where the pair lives and how it is reached; the regions are the runbook's."""

    directory: Path
    primary_port: int = 15432
    standby_port: int = 15433
    host: str = LOOPBACK
    dbname: str = "app"
    user: str = "drflow"
    primary_region: str = "region-a"
    standby_region: str = "region-b"
    startup_timeout: float = 30.0
    stop_timeout: float = 30.0
    tcp_only: bool = False

    def __post_init__(self) -> None:
        self.directory = Path(self.directory).absolute()
        if self.primary_port == self.standby_port:
            raise ValueError(f"primary and standby need different ports, both are {self.primary_port}")
        if self.primary_region == self.standby_region:
            raise ValueError("primary and standby need different regions")


@dataclass(frozen=True)
class NodeStart:
    region: str
    outcome: StartOutcome
    reason: str | None = None


class PostgresServer:
    """One node: a region directory holding the data directory, its log and its socket directory."""

    def __init__(self, region: str, port: int, directory: Path, host: str, tcp_only: bool = False) -> None:
        self.region = region
        self.port = port
        self.directory = directory
        self.host = host
        self.tcp_only = tcp_only

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.directory / "run"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def exists(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    @property
    def pid(self) -> int | None:
        return postmaster_pid(self.data_dir)

    def is_running(self) -> bool:
        return self.exists() and pg_ctl_status(self.data_dir) == "running"

    def is_standby_on_disk(self) -> bool:
        """Whether it would start in recovery: standby.signal is what makes a node a standby."""
        return (self.data_dir / "standby.signal").exists()

    def timeline(self) -> int:
        """The timeline of the last checkpoint: a promoted node is on a higher one than its old primary."""
        return int(pg_controldata(self.data_dir).get("Latest checkpoint's TimeLineID", "0"))

    def start(self, timeout: float = 30.0) -> None:
        if not self.tcp_only:
            self.socket_dir.mkdir(exist_ok=True)
            _chown_to_service(self.socket_dir)
        try:
            pg_ctl_start(
                self.data_dir,
                self.port,
                timeout=timeout,
                log_path=self.log_path,
                socket_dir=self.socket_dir,
                tcp_only=self.tcp_only,
            )
        except PostgresCommandError as err:
            raise PostgresCommandError(
                f"PostgreSQL {self.region} on {self.address} did not start: {err}\n{self.log_tail()}"
            ) from None

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (a clean checkpoint); immediate only if that does not finish in time."""
        pid = self.pid
        if pid is None:
            return
        try:
            pg_ctl_stop(self.data_dir, "fast", timeout)
        except PostgresCommandError:
            log.warning("fast shutdown of %s timed out; stopping it immediately", self.region)
            pg_ctl_stop(self.data_dir, "immediate", timeout)
        _wait_gone(pid, timeout)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log output)"
        return f"--- {self.log_path} ---\n" + "\n".join(tail)


class PostgresPair:
    """A primary and a streaming standby (slot and application_name ``region_b``) with database ``app``.

    Created on the first start; later starts only start what is stopped, and never a second primary: a
    former primary that a promotion left behind stays stopped until it is rewound (failback) or reset.
    """

    def __init__(self, config: PostgresPairConfig) -> None:
        self.config = config
        self.directory = config.directory
        self.primary = PostgresServer(
            config.primary_region, config.primary_port, self.directory / config.primary_region, config.host,
            config.tcp_only,
        )  # fmt: skip
        self.standby = PostgresServer(
            config.standby_region, config.standby_port, self.directory / config.standby_region, config.host,
            config.tcp_only,
        )  # fmt: skip

    # ---- what the runbook and the apps need
    @property
    def servers(self) -> list[PostgresServer]:
        return [self.primary, self.standby]

    def server(self, region: str) -> PostgresServer:
        for server in self.servers:
            if server.region == region:
                return server
        raise KeyError(region)

    @property
    def password_path(self) -> Path:
        return self.directory / PASSWORD_FILE

    @property
    def password_ref(self) -> str:
        """The runbook's ``password`` value for these nodes."""
        return f"file:{self.password_path}"

    @property
    def pgpass_path(self) -> Path:
        return self.directory / PGPASS_FILE

    @property
    def app_password_path(self) -> Path:
        return self.directory / APP_PASSWORD_FILE

    def app_role(self) -> PostgresRole:
        """The apps' own role (no superuser): what the remote topology's fence proof writes as."""
        return PostgresRole(user=APP_USER, password=f"file:{self.app_password_path}")

    def host_env_path(self, region: str) -> Path:
        return self.directory / "hosts" / f"{region}.env"

    def write_host_envs(self) -> None:
        """Each node's "host" settings for the remote topology's hooks (``infra/postgres/hooks``).

        What a real database host knows about its own server (data directory, port, binaries, the server's
        own passfile for replication), kept beside drflow's state rather than in the runbook: the runbook
        of a remote topology names no path on the database's host.
        """
        hosts = self.directory / "hosts"
        hosts.mkdir(exist_ok=True)
        hosts.chmod(0o755)
        for server in self.servers:
            settings = {
                "PGDATA": server.data_dir,
                "PGPORT": server.port,
                "PGHOST": server.host,
                "PGBIN": Path(pg_binary("pg_ctl")).parent,
                "PGLOG": server.log_path,
                "PGPASSFILE": self.pgpass_path,
                "PGOPTS": "-k ''" if self.config.tcp_only else f"-k {server.socket_dir}",
            }
            path = self.host_env_path(server.region)
            path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
            path.chmod(0o644)

    def password(self) -> str:
        return self.password_path.read_text().strip()

    def node(self, region: str, *, managed: bool = True) -> PostgresNode:
        """The runbook node; ``managed=False`` leaves out data_directory, as for a remote server."""
        server = self.server(region)
        return PostgresNode(
            host=server.host,
            port=server.port,
            dbname=self.config.dbname,
            user=self.config.user,
            password=self.password_ref,
            data_directory=str(server.data_dir) if managed else None,
        )

    def connect(self, region: str, dbname: str | None = None) -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit superuser connection, for setup and tests."""
        server = self.server(region)
        return psycopg.connect(
            host=server.host,
            port=server.port,
            dbname=dbname or self.config.dbname,
            user=self.config.user,
            password=self.password(),
            connect_timeout=5,
            autocommit=True,
        )

    def role(self, region: str) -> Role | None:
        """primary or standby, by asking the running server (pg_is_in_recovery); None when unreachable."""
        try:
            with self.connect(region, dbname="postgres") as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        except psycopg.Error:
            return None
        return "standby" if row is not None and row[0] else "primary"

    # ---- lifecycle
    def is_created(self) -> bool:
        return (self.directory / _CREATED_MARKER).exists()

    def is_running(self) -> bool:
        return all(server.is_running() for server in self.servers)

    def start(self) -> list[NodeStart]:
        """Create the pair if needed, then start what is stopped; returns what happened to each node."""
        if self.config.tcp_only and _service_account() is None:
            raise PostgresCommandError(
                "the remote topology runs the servers as another OS user (the postgres system user), which "
                "needs root: run it as root, or use the local topology"
            )
        if not self.is_created():
            self._create()
            return [NodeStart(s.region, "started") for s in self.servers]
        outcomes: dict[str, NodeStart] = {}
        running = {s.region: s.is_running() for s in self.servers}
        for server in self.servers:
            if running[server.region]:
                outcomes[server.region] = NodeStart(server.region, "already-running")
        # Would-be primaries first (their standbys connect to them), then standbys, which are always safe.
        for server in sorted(self.servers, key=lambda s: s.is_standby_on_disk()):
            if server.region in outcomes:
                continue
            if not server.exists():
                raise PostgresCommandError(
                    f"{server.data_dir} is missing: run `drflow sandbox up --reset` for a fresh pair"
                )
            reason = None if server.is_standby_on_disk() else self._split_brain_risk(server)
            if reason is not None:
                outcomes[server.region] = NodeStart(server.region, "held", reason)
                continue
            server.start(self.config.startup_timeout)
            outcomes[server.region] = NodeStart(server.region, "started")
        return [outcomes[s.region] for s in self.servers]

    def stop(self) -> None:
        """Standbys first, so a primary's fast shutdown has no walsender to wait for."""
        for server in sorted(self.servers, key=lambda s: not s.exists() or not s.is_standby_on_disk()):
            if server.exists():
                server.stop(self.config.stop_timeout)

    def held_reason(self, server: PostgresServer) -> str | None:
        """Why a stopped node would not be started by ``start``, if it would not."""
        if not server.exists() or server.is_standby_on_disk() or server.is_running():
            return None
        return self._split_brain_risk(server)

    def wait_streaming(self, region: str, timeout: float = 15.0) -> None:
        """Until the standby's WAL receiver streams from its primary."""
        deadline = time.monotonic() + timeout
        status: object = None
        while time.monotonic() < deadline:
            with contextlib.suppress(psycopg.Error), self.connect(region, dbname="postgres") as conn:
                row = conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
                status = row[0] if row else None
                if status == "streaming":
                    return
            time.sleep(0.05)
        raise PostgresCommandError(
            f"standby {region} is not streaming after {timeout:g}s (WAL receiver: {status})\n"
            f"{self.server(region).log_tail()}"
        )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- internals
    def _split_brain_risk(self, server: PostgresServer) -> str | None:
        """Why ``server`` must not start as a primary: another node is one, or has the better claim.

        A running node without standby.signal is a primary (promotion removes the file). Between two stopped
        would-be primaries the newer timeline wins (it was promoted later), on a tie the configured primary.
        """
        mine = server.timeline()
        for other in self.servers:
            if other is server or not other.exists() or other.is_standby_on_disk():
                continue
            if other.is_running():
                claim = "is running as the primary"
            else:
                # A running node's pg_control shows its timeline only after its next checkpoint.
                theirs = other.timeline()
                if theirs < mine or (theirs == mine and other is not self.primary):
                    continue
                claim = f"has the better claim to be the primary (timeline {theirs}, this one {mine})"
            return (
                f"former primary: {other.region} {claim}; {server.region} stays stopped to avoid a split "
                "brain until it is rewound as a standby (failback) or the sandbox is reset "
                "(`drflow sandbox up --reset`)"
            )
        return None

    def _create(self) -> None:
        log.info("creating the PostgreSQL pair under %s", self.directory)
        self.stop()
        for server in self.servers:
            shutil.rmtree(server.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        password = self._load_or_create_password()
        _write_private(self.pgpass_path, f"{self.config.host}:*:*:{self.config.user}:{password}\n")
        _chown_to_service(self.pgpass_path)
        for server in self.servers:
            server.directory.mkdir(mode=0o700)
            _chown_to_service(server.directory)
            _check_service_can_use(server.directory)
        self._init_primary(password)
        self.primary.start(self.config.startup_timeout)
        self._prepare_primary()
        self._clone_standby()
        self.standby.start(self.config.startup_timeout)
        self.wait_streaming(self.standby.region)
        (self.directory / _CREATED_MARKER).write_text("")
        self.write_host_envs()

    def _load_or_create_password(self) -> str:
        if self.password_path.exists():
            return self.password()
        password = secrets.token_urlsafe(24)
        _write_private(self.password_path, password + "\n")
        return password

    def _init_primary(self, password: str) -> None:
        server = self.primary
        pwfile = server.directory / ".pwfile"
        _write_private(pwfile, password + "\n")
        _chown_to_service(pwfile)
        try:
            run_as_owner(
                server.data_dir,
                [
                    pg_binary("initdb"), "-D", str(server.data_dir), "-U", self.config.user,
                    f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
                    "--no-instructions",
                ],
                timeout=120,
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        standby_slot = slot_name(self.standby.region)
        with (server.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                f"""
# ---- drflow sandbox (workers/sandbox/postgres.py); copied to the standby by pg_basebackup.
# port and unix_socket_directories are given per node on the pg_ctl command line.
listen_addresses = '{self.config.host}'
max_connections = 50
shared_buffers = 32MB
wal_level = replica
wal_log_hints = on
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 128MB
max_slot_wal_keep_size = 1GB
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
# A standby whose primary restarted (an unfence, a failback) reconnects within a second, not five.
wal_retrieve_retry_interval = 1s
log_line_prefix = '%m [%p] %q%a '
log_connections = off
# Written for {standby_slot}; the standby's primary_conninfo carries application_name={standby_slot}.
"""
            )
        local = "" if self.config.tcp_only else "local   all          all                  scram-sha-256\n"
        (server.data_dir / "pg_hba.conf").write_text(
            "# drflow sandbox: password (SCRAM) for every connection, loopback only.\n"
            + local
            + "host    all          all   127.0.0.0/8    scram-sha-256\n"
            "host    replication  all   127.0.0.0/8    scram-sha-256\n"
        )

    def _prepare_primary(self) -> None:
        with self.connect(self.primary.region, dbname="postgres") as conn:
            conn.execute("SELECT pg_create_physical_replication_slot(%s)", (slot_name(self.standby.region),))
            conn.execute(f'CREATE DATABASE "{self.config.dbname}" OWNER "{self.config.user}"')
        app_password = secrets.token_urlsafe(24)
        _write_private(self.app_password_path, app_password + "\n")
        with self.connect(self.primary.region) as conn:
            conn.execute(
                f"CREATE TABLE {PROBE_TABLE} ("
                "id bigserial PRIMARY KEY, region text NOT NULL, at timestamptz NOT NULL DEFAULT now())"
            )
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(APP_USER), sql.Literal(app_password)
                )
            )
            conn.execute(
                sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(
                    sql.Identifier(PROBE_TABLE), sql.Identifier(APP_USER)
                )
            )
            conn.execute(
                sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
                    sql.Identifier(f"{PROBE_TABLE}_id_seq"), sql.Identifier(APP_USER)
                )
            )

    def _clone_standby(self) -> None:
        region = slot_name(self.standby.region)
        conninfo = (
            f"host={self.config.host} port={self.primary.port} user={self.config.user} "
            f"passfile={self.pgpass_path} application_name={region}"
        )
        run_as_owner(
            self.standby.data_dir,
            [
                pg_binary("pg_basebackup"), "-D", str(self.standby.data_dir), "-d", conninfo, "-R",
                "-S", region, "-X", "stream", "-c", "fast", "--no-sync",
            ],
            timeout=120,
        )  # fmt: skip


def _chown_to_service(path: Path) -> None:
    account = _service_account()
    if account is not None:
        os.chown(path, *account)


def _check_service_can_use(directory: Path) -> None:
    """As root, prove the service user can reach the directory: a 0700 ancestor (pytest's tmp) forbids it."""
    if _service_account() is None:
        return
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    probe = subprocess.run(
        [runuser, "-u", SERVICE_USER, "--", "test", "-w", str(directory), "-a", "-x", str(directory)],
        cwd="/",
        capture_output=True,
    )
    if probe.returncode != 0:
        raise PostgresCommandError(
            f"the {SERVICE_USER} system user cannot enter {directory}: a parent directory is not searchable "
            "by others (mode 0700?); choose a state directory under a world-searchable path"
        )


def _write_private(path: Path, text: str) -> None:
    """Mode 0600 from the first byte: these files hold the password."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
