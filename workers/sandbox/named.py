"""A BIND ``named`` primary and secondary on loopback: the sandbox's DNS and the tests' nameservers.

Real ``named`` rather than a fake, so that dynamic updates, TSIG, NOTIFY, IXFR and refusals behave exactly as
they do in front of a production zone, including the delay before a secondary serves a change.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, NamedTuple, Self

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig

from runbooks.model import Nameserver
from workers.sandbox.processes import spawn_detached, stop_process

LOOPBACK = "127.0.0.1"
NAMED_FALLBACK = Path("/usr/sbin/named")
SECRET_FILE = "tsig.secret"
_ZONE_FILE = "db.zone"
_LOG_TAIL_LINES = 25

Role = Literal["primary", "secondary"]


class NamedNotInstalledError(RuntimeError):
    """``named`` is missing; the message says which package provides it."""


class NamedStartError(RuntimeError):
    """A server did not come up; the message carries the tail of its logs."""


class ZoneRecord(NamedTuple):
    name: str
    type: str
    ttl: int
    value: str


@dataclass
class NamedPairConfig:
    """Where the pair lives and what its zone holds. Records are (name, type, ttl, value)."""

    directory: Path
    primary_port: int
    secondary_port: int
    zone: str = "drflow.test."
    records: Sequence[tuple[str, str, int, str]] = field(default_factory=list)
    tsig_name: str = "drflow-sandbox"
    tsig_algorithm: str = "hmac-sha256"
    tsig_secret: str | None = field(default=None, repr=False)
    # Short so tests and demos see propagation in about a second, but not zero: a secondary is never instant.
    notify_delay: int = 1
    startup_timeout: float = 10.0
    stop_timeout: float = 5.0
    # The sandbox CLI turns this off so the servers outlive the command that started them.
    stop_at_exit: bool = True

    def __post_init__(self) -> None:
        self.directory = Path(self.directory).absolute()
        if not self.zone.endswith("."):
            raise ValueError(f"zone {self.zone!r} must be fully qualified, ending with a dot")
        if self.primary_port == self.secondary_port:
            raise ValueError(f"primary and secondary need different ports, both are {self.primary_port}")
        if '"' in str(self.directory):
            raise ValueError(f"{self.directory} contains a double quote, which named.conf cannot express")


def find_named() -> str:
    """The ``named`` binary; root's PATH usually has /usr/sbin, other users' often do not."""
    found = shutil.which("named")
    if found is not None:
        return found
    if NAMED_FALLBACK.is_file() and os.access(NAMED_FALLBACK, os.X_OK):
        return str(NAMED_FALLBACK)
    raise NamedNotInstalledError(
        f"BIND's named was not found on PATH or at {NAMED_FALLBACK}; "
        "install it with `apt-get install bind9` (Debian/Ubuntu)"
    )


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Ports free for both UDP and TCP, all different: the sockets stay open until every port is chosen."""
    ports: list[int] = []
    with contextlib.ExitStack() as held:
        attempts = 0
        while len(ports) < count:
            attempts += 1
            if attempts > 50 * count:
                raise RuntimeError(f"could not find {count} ports free for both UDP and TCP on {host}")
            tcp = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            udp = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            try:
                udp.bind((host, port))
            except OSError:
                continue
            ports.append(port)
    return ports


def free_port(host: str = LOOPBACK) -> int:
    return free_ports(1, host)[0]


def soa_serial(zone: str, port: int, address: str = LOOPBACK, timeout: float = 0.5) -> int | None:
    """The serial the server answers authoritatively, or None while it cannot serve the zone."""
    query = dns.message.make_query(zone, dns.rdatatype.SOA)
    query.flags &= ~dns.flags.RD
    try:
        response = dns.query.udp(query, address, port=port, timeout=timeout)
    except (dns.exception.DNSException, OSError):
        return None
    if response.rcode() != dns.rcode.NOERROR or not response.flags & dns.flags.AA:
        return None
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.SOA:
            return int(rrset[0].serial)
    return None


class NamedServer:
    """One ``named`` process in its own directory; the pair writes its configuration."""

    def __init__(self, role: Role, directory: Path, port: int, zone: str, config: NamedPairConfig) -> None:
        self.role: Role = role
        self.directory = directory
        self.port = port
        self.address = LOOPBACK
        self.zone = zone
        self._config = config
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def conf_path(self) -> Path:
        return self.directory / "named.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "named.log"

    @property
    def output_path(self) -> Path:
        """stdout/stderr: where named reports configuration errors before its own logging starts."""
        return self.directory / "output.log"

    @property
    def pid_path(self) -> Path:
        return self.directory / "named.pid"

    @property
    def zone_path(self) -> Path:
        return self.directory / _ZONE_FILE

    @property
    def pid(self) -> int | None:
        if self._process is not None and self._process.poll() is None:
            return self._process.pid
        return self._pid_from_file()

    def is_running(self) -> bool:
        return self.pid is not None

    def serial(self) -> int | None:
        return soa_serial(self.zone, self.port, self.address)

    def start(self) -> None:
        """Start named and return once it answers the zone's SOA authoritatively."""
        if self.is_running():
            return
        # -L: otherwise errors before the logging statement applies (a port in use) go to syslog, unseen.
        command = [find_named(), "-f", "-c", str(self.conf_path), "-L", str(self.log_path), "-n", "1", "-4"]
        self._process = spawn_detached(command, self.output_path, cwd=self.directory)
        if self._config.stop_at_exit:
            atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if named has not exited within the stop timeout."""
        process, self._process = self._process, None
        atexit.unregister(self.stop)
        pid = process.pid if process is not None else self._pid_from_file()
        if pid is not None:
            stop_process(pid, self._config.stop_timeout)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        parts = []
        for path in (self.output_path, self.log_path):
            tail = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            if tail:
                parts.append(f"--- {path} ---\n" + "\n".join(tail))
        return "\n".join(parts) or "(no log output)"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._config.startup_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                raise NamedStartError(
                    f"{self.role} named exited with status {code} during startup\n{self.log_tail()}"
                )
            if self.serial() is not None:
                return
            time.sleep(0.05)
        raise NamedStartError(
            f"{self.role} named on {self.address}:{self.port} did not answer the SOA of {self.zone} within "
            f"{self._config.startup_timeout:g}s\n{self.log_tail()}"
        )

    def _pid_from_file(self) -> int | None:
        """A named started by another process (the sandbox CLI), if the pid file is not stale."""
        try:
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(self.conf_path).encode() in cmdline else None


def _stop_foreign(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)


class NamedPair:
    """A primary that takes TSIG-signed updates and a secondary that follows it by NOTIFY and IXFR.

    The zone file is written only when absent, so dynamic updates survive a restart of the pair; delete the
    directory for a fresh zone.
    """

    def __init__(self, config: NamedPairConfig) -> None:
        self.config = config
        self.directory = config.directory
        self.zone = config.zone
        self.tsig_secret = self._load_or_create_secret()
        self.primary = NamedServer(
            "primary", self.directory / "primary", config.primary_port, config.zone, config
        )
        self.secondary = NamedServer(
            "secondary", self.directory / "secondary", config.secondary_port, config.zone, config
        )

    @property
    def address(self) -> str:
        return LOOPBACK

    @property
    def primary_port(self) -> int:
        return self.primary.port

    @property
    def secondary_port(self) -> int:
        return self.secondary.port

    @property
    def tsig_name(self) -> str:
        return self.config.tsig_name

    @property
    def tsig_algorithm(self) -> str:
        return self.config.tsig_algorithm

    @property
    def tsig_secret_path(self) -> Path:
        return self.directory / SECRET_FILE

    @property
    def tsig_secret_ref(self) -> str:
        """The runbook's ``tsig.secret`` value for this pair."""
        return f"file:{self.tsig_secret_path}"

    def tsig_key(self) -> dns.tsig.Key:
        """For dnspython: ``dns.update.Update(zone, keyring=pair.tsig_key())``."""
        return dns.tsig.Key(self.tsig_name, self.tsig_secret, self.tsig_algorithm)

    def tsig_keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        """For dnspython calls typed to take a keyring, e.g. ``dns.query.xfr(..., keyring=...)``."""
        key = self.tsig_key()
        return {key.name: key}

    @property
    def primary_nameserver(self) -> Nameserver:
        return Nameserver(name=f"ns1.{self.zone}", address=LOOPBACK, port=self.primary.port)

    @property
    def secondary_nameserver(self) -> Nameserver:
        return Nameserver(name=f"ns2.{self.zone}", address=LOOPBACK, port=self.secondary.port)

    @property
    def nameservers(self) -> list[Nameserver]:
        return [self.primary_nameserver, self.secondary_nameserver]

    def start(self) -> None:
        """Primary first: the secondary only answers once it has transferred the zone."""
        self._write_files()
        try:
            self.primary.start()
            self.secondary.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.secondary.stop()
        self.primary.stop()

    def is_running(self) -> bool:
        return self.primary.is_running() and self.secondary.is_running()

    def stop_secondary(self) -> None:
        """Simulate an outage of one authoritative nameserver."""
        self.secondary.stop()

    def start_secondary(self) -> None:
        self.secondary.start()

    def wait_in_sync(self, timeout: float = 10.0) -> float:
        """Seconds until the secondary serves the primary's serial; raises TimeoutError after ``timeout``."""
        started = time.monotonic()
        while True:
            primary, secondary = self.primary.serial(), self.secondary.serial()
            if primary is not None and primary == secondary:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(
                    f"secondary serves serial {secondary}, primary {primary}, after {timeout:g}s\n"
                    f"{self.secondary.log_tail()}"
                )
            time.sleep(0.05)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _load_or_create_secret(self) -> str:
        """Keep an existing secret so runbooks and clients that read the file stay valid across restarts."""
        secret = self.config.tsig_secret
        if secret is None and self.tsig_secret_path.exists():
            secret = self.tsig_secret_path.read_text().strip()
        if secret is None:
            secret = base64.b64encode(secrets.token_bytes(32)).decode()
        base64.b64decode(secret, validate=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_private(self.tsig_secret_path, secret + "\n")
        return secret

    def _write_files(self) -> None:
        for server in (self.primary, self.secondary):
            server.directory.mkdir(parents=True, exist_ok=True)
        _write_private(self.primary.conf_path, self._render_conf(self.primary))
        _write_private(self.secondary.conf_path, self._render_conf(self.secondary))
        if not self.primary.zone_path.exists():
            self.primary.zone_path.write_text(self._render_zone())

    def _render_conf(self, server: NamedServer) -> str:
        key = f'key "{self.tsig_name}"'
        if server.role == "primary":
            zone_body = f"""\
    type primary;
    file "{_ZONE_FILE}";
    journal "{_ZONE_FILE}.jnl";
    ixfr-from-differences yes;
    // A sandbox zone is so small that any delta exceeds the default ratio and IXFR would never be used.
    max-ixfr-ratio unlimited;
    allow-update {{ {key}; }};
    allow-transfer {{ {key}; }};
    notify explicit;
    also-notify {{ {LOOPBACK} port {self.secondary.port} {key}; }};"""
        else:
            zone_body = f"""\
    type secondary;
    file "{_ZONE_FILE}";
    masterfile-format text;
    primaries {{ {LOOPBACK} port {self.primary.port} {key}; }};
    allow-notify {{ {key}; }};
    allow-transfer {{ none; }};
    notify no;
    min-refresh-time 10;
    min-retry-time 5;"""
        directory = server.directory
        return f"""\
// Written by drflow (workers/sandbox/named.py); rewritten on every start.
{key} {{
    algorithm {self.tsig_algorithm};
    secret "{self.tsig_secret}";
}};

options {{
    directory "{directory}";
    pid-file "{directory}/named.pid";
    session-keyfile "{directory}/session.key";
    listen-on port {server.port} {{ {LOOPBACK}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify-delay {self.config.notify_delay};
}};

controls {{ }};

logging {{
    channel drflow_file {{
        file "{server.log_path}" versions 3 size 10m;
        severity info;
        print-time yes;
        print-severity yes;
        print-category yes;
    }};
    category default {{ drflow_file; }};
}};

zone "{self.zone}" {{
{zone_body}
}};
"""

    def _render_zone(self) -> str:
        zone = self.zone
        # refresh 30 s: a secondary that missed a NOTIFY (it was down) catches up quickly.
        lines = [
            f"$ORIGIN {zone}",
            "$TTL 60",
            f"@ IN SOA ns1.{zone} hostmaster.{zone} ( 1 30 5 86400 5 )",
            f"@ IN NS ns1.{zone}",
            f"@ IN NS ns2.{zone}",
            f"ns1.{zone} IN A {LOOPBACK}",
            f"ns2.{zone} IN A {LOOPBACK}",
        ]
        lines += [f"{name} {ttl} IN {rtype} {value}" for name, rtype, ttl, value in self.config.records]
        return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Mode 0600 from the first byte: these files hold the TSIG secret."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
