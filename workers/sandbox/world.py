"""The sandbox world behind ``drflow sandbox``: two "regions" on loopback, with real DNS, database and apps.

Components, all under the state directory (default ``.drflow/sandbox``, relative to where drflow runs, so
that ``runbooks/sandbox.yaml``'s ``file:.drflow/sandbox/...`` secrets resolve from the repository root):

    dns/        BIND primary and secondary (``NamedPair``), zone drflow.test., TSIG key drflow-sandbox
    postgres/   PostgreSQL primary (region-a) and streaming standby (region-b)
    apps/       one HTTP app per region (127.0.1.1, 127.0.2.1): reads and deep checks through its region's
                database, user writes (``/write``) to whichever node is the primary (libpq multi-host,
                target_session_attrs=read-write), as the runbook's ``writes.follow_primary`` declares
    haproxy/    HAProxy in front of both apps (weights region-a 100 / region-b 0 at first), runtime API socket
    sandbox.json  the ports of this world, so ``down`` and ``status`` need only the directory

Every server is a detached process that outlives the command which started it; ``down`` stops them all and
checks by pid that nothing is left. What the world needs from the host (system packages, free ports, the
state directory's permissions, HTTP probes) is ``workers.sandbox.host``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from activities.database.postgres.pg_ctl import (
    PostgresCommandError,
    PostgresNotInstalledError,
)
from activities.traffic.haproxy import HaproxyError
from runbooks.loader import parse_runbook
from runbooks.model import (
    CommandHook,
    HaproxyTraffic,
    PostgresDatabase,
    PostgresHooks,
    Rfc2136Dns,
    Runbook,
    StrictModel,
)
from workers.sandbox.haproxy import (
    HaproxyConfig,
    HaproxyNotInstalledError,
    HaproxyServer,
    HaproxyStartError,
)
from workers.sandbox.host import SandboxError as SandboxError  # raised by Sandbox too: callers import it here
from workers.sandbox.host import (
    ensure_system_packages,
    http_ok,
    log_tail,
    make_searchable_dirs,
    require_free,
    terminate,
)
from workers.sandbox.named import (
    NamedNotInstalledError,
    NamedPair,
    NamedPairConfig,
    NamedServer,
    NamedStartError,
    ZoneRecord,
)
from workers.sandbox.people import SandboxKeysError, ensure_demo_people
from workers.sandbox.postgres import PostgresPair, PostgresPairConfig, PostgresServer
from workers.sandbox.processes import pid_alive, spawn_detached

DEFAULT_STATE_DIR = Path(".drflow/sandbox")
LOOPBACK = "127.0.0.1"
ZONE = "drflow.test."
RECORD = "app.drflow.test."
RECORD_TTL = 5
TSIG_NAME = "drflow-sandbox"
# The runbook's regions and their loopback addresses; region-a starts as the primary.
REGIONS: dict[str, str] = {"region-a": "127.0.1.1", "region-b": "127.0.2.1"}
PRIMARY_REGION, STANDBY_REGION = "region-a", "region-b"
DBNAME = "app"
DB_USER = "drflow"
# At first the runbook's primary serves all the traffic; a canary failback moves these weights.
INITIAL_WEIGHTS: dict[str, int] = {PRIMARY_REGION: 100, STANDBY_REGION: 0}
APP_START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
_CONFIG_FILE = "sandbox.json"

State = Literal["running", "stopped"]
# local: drflow manages the data directories on its host; remote: TCP only, servers as another OS user,
# re-sync through the shipped hooks (docs/sandbox.md).
Topology = Literal["local", "remote"]
HOOKS_DIR = Path(__file__).resolve().parents[2] / "infra" / "postgres" / "hooks"
Change = Literal["started", "already-running", "held"]


@dataclass(frozen=True)
class SandboxPorts:
    """The runbook's ports by default; tests pass free ones."""

    dns_primary: int = 15353
    dns_secondary: int = 15354
    postgres_primary: int = 15432
    postgres_standby: int = 15433
    app: int = 18080
    haproxy: int = 18090

    def __post_init__(self) -> None:
        tcp_on_127001 = [
            self.dns_primary,
            self.dns_secondary,
            self.postgres_primary,
            self.postgres_standby,
            self.haproxy,
        ]
        if len(set(tcp_on_127001)) != len(tcp_on_127001):
            raise ValueError(f"DNS, PostgreSQL and HAProxy ports must all differ: {tcp_on_127001}")


class ComponentStatus(StrictModel):
    name: str
    kind: Literal["dns", "postgres", "app", "haproxy"]
    region: str | None = None
    address: str
    state: State
    pid: int | None = None
    role: str | None = None
    change: Change | None = None
    detail: str | None = None


class SandboxStatus(StrictModel):
    state_dir: str
    components: list[ComponentStatus]

    @property
    def running(self) -> bool:
        return all(c.state == "running" for c in self.components)

    def component(self, name: str) -> ComponentStatus:
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(name)


class Sandbox:
    """``up`` starts what is stopped (idempotent), ``down`` stops everything, ``reset`` starts afresh."""

    def __init__(
        self,
        state_dir: Path = DEFAULT_STATE_DIR,
        ports: SandboxPorts | None = None,
        topology: Topology | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.ports = ports or self._recorded_ports() or SandboxPorts()
        self.recorded_topology = self._recorded_topology()
        self.topology: Topology = topology or self.recorded_topology or "local"

    # ----------------------------------------------------------------------------------- paths
    @property
    def dns_dir(self) -> Path:
        return self.state_dir / "dns"

    @property
    def postgres_dir(self) -> Path:
        return self.state_dir / "postgres"

    @property
    def apps_dir(self) -> Path:
        return self.state_dir / "apps"

    @property
    def haproxy_dir(self) -> Path:
        return self.state_dir / "haproxy"

    @property
    def config_path(self) -> Path:
        return self.state_dir / _CONFIG_FILE

    def runbook(self) -> Runbook:
        """``runbooks/sandbox.yaml`` with this sandbox's ports and absolute paths (other state dirs)."""
        shipped_yaml = (resources.files("runbooks") / "sandbox.yaml").read_bytes()
        shipped = parse_runbook(shipped_yaml, "sandbox.yaml").runbook
        pair = self._postgres_pair()
        haproxy = self._haproxy()
        dns = shipped.dns
        assert isinstance(dns, Rfc2136Dns)
        assert isinstance(shipped.traffic, HaproxyTraffic)
        ns1, ns2 = dns.nameservers
        ports = self.ports
        return shipped.model_copy(
            update={
                "regions": {
                    name: region.model_copy(update={"vars": {**region.vars, "app_port": str(self.ports.app)}})
                    for name, region in shipped.regions.items()
                },
                "dns": dns.model_copy(
                    update={
                        "server": dns.server.model_copy(update={"port": self.ports.dns_primary}),
                        "nameservers": [
                            ns1.model_copy(update={"port": ports.dns_primary}),
                            ns2.model_copy(update={"port": ports.dns_secondary}),
                        ],
                        "tsig": dns.tsig.model_copy(
                            update={"secret": f"file:{self.dns_dir / 'tsig.secret'}"}
                        ),
                    }
                ),
                "database": self._database(pair),
                "traffic": shipped.traffic.model_copy(
                    update={"runtime_api": haproxy.runtime_api, "frontend_url": haproxy.frontend_url}
                ),
                "approvals": shipped.approvals.model_copy(
                    update={"people": str(self.state_dir.absolute() / "people.yaml")}
                ),
            }
        )

    def _database(self, pair: PostgresPair) -> PostgresDatabase:
        """Local: drflow manages the data directories. Remote: TCP only, the hooks act on the "host"."""
        regions = (PRIMARY_REGION, STANDBY_REGION)
        if self.topology == "local":
            return PostgresDatabase(provider="postgres", nodes={r: pair.node(r) for r in regions})
        ssh = str(HOOKS_DIR / "sandbox-ssh")
        host_env = str(pair.directory / "hosts" / "{region}.env")
        return PostgresDatabase(
            provider="postgres",
            nodes={r: pair.node(r, managed=False) for r in regions},
            hooks=PostgresHooks(
                resync=CommandHook(
                    command=[
                        ssh,
                        host_env,
                        "pg-resync",
                        "{source_host}",
                        "{source_port}",
                        "{slot}",
                        "{user}",
                    ],
                    timeout=timedelta(minutes=5),
                ),
                # The application's role is rejected at authentication, beside the connections cut.
                fence=CommandHook(
                    command=[ssh, host_env, "pg-fence-hba", "fence", "{app_user}"],
                    timeout=timedelta(seconds=30),
                ),
                unfence=CommandHook(
                    command=[ssh, host_env, "pg-fence-hba", "unfence", "{app_user}"],
                    timeout=timedelta(seconds=30),
                ),
            ),
            application=pair.app_role(),
        )

    def write_runbook(self, directory: Path) -> Path:
        """This world's runbook as a file a worker can serve (the remote topology has no shipped one)."""
        runbook = self.runbook()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{runbook.service}.yaml"
        header = f"# Written by `drflow sandbox up` for the {self.topology} topology of {self.state_dir}.\n"
        # JSON is YAML: the loader reads it like any runbook, and the product needs no YAML writer for it.
        path.write_text(header + json.dumps(runbook.model_dump(mode="json"), indent=2) + "\n")
        return path

    # ------------------------------------------------------------------------------ lifecycle
    def up(self, reset: bool = False) -> SandboxStatus:
        """Start every stopped component; with ``reset``, first stop everything and delete the state."""
        if reset:
            self.reset_state()
        ensure_system_packages()
        recorded = self._recorded_ports()
        if recorded is not None and recorded != self.ports and self._any_running():
            raise SandboxError(
                f"the sandbox in {self.state_dir} is running with other ports ({_describe_ports(recorded)}); "
                "run `drflow sandbox down` first, or `up --reset`"
            )
        if self.recorded_topology not in (None, self.topology) and (self.postgres_dir / ".created").exists():
            raise SandboxError(
                f"the sandbox in {self.state_dir} was built with the {self.recorded_topology} topology; "
                f"`drflow sandbox up --reset --topology {self.topology}` rebuilds it"
            )
        make_searchable_dirs(self.state_dir)
        try:
            ensure_demo_people(self.state_dir)
        except SandboxKeysError as err:
            raise SandboxError(str(err)) from err
        record = {**asdict(self.ports), "topology": self.topology}
        self.config_path.write_text(json.dumps(record, indent=2) + "\n")
        changes: dict[str, Change] = {}
        try:
            self._up_dns(changes)
            self._up_postgres(changes)
            self._up_apps(changes)
            self._up_haproxy(changes)
        except (
            NamedStartError,
            NamedNotInstalledError,
            PostgresCommandError,
            PostgresNotInstalledError,
            HaproxyStartError,
            HaproxyNotInstalledError,
        ) as err:
            raise SandboxError(
                f"{err}\n(components already started keep running: `drflow sandbox down`)"
            ) from err
        return self.status(changes)

    def reset(self) -> SandboxStatus:
        return self.up(reset=True)

    def reset_state(self) -> None:
        """Stop everything and delete the state directory: the next ``up`` builds the initial world."""
        self.down()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        if self.state_dir.exists():
            raise SandboxError(f"could not delete {self.state_dir}")

    def down(self) -> SandboxStatus:
        """HAProxy, apps, databases (standby first), then DNS; fails if any process is still alive."""
        pids = [c.pid for c in self.status().components if c.pid is not None]
        self._haproxy().stop(STOP_TIMEOUT)
        for region in REGIONS:
            terminate(self._app_pid(region), STOP_TIMEOUT)
        if self.postgres_dir.exists():
            try:
                self._postgres_pair().stop()
            except (PostgresCommandError, PostgresNotInstalledError) as err:
                raise SandboxError(f"could not stop PostgreSQL: {err}") from err
        if self.dns_dir.exists():
            pair = self._named_pair()
            for server in (pair.secondary, pair.primary):
                terminate(server.pid, STOP_TIMEOUT)
        alive = [pid for pid in pids if pid_alive(pid)]
        if alive:
            raise SandboxError(f"processes still running after stopping the sandbox: {alive}")
        return self.status()

    def status(self, changes: dict[str, Change] | None = None) -> SandboxStatus:
        changes = changes or {}
        components = [
            *self._dns_status(),
            *self._postgres_status(),
            *self._app_status(),
            self._haproxy_status(),
        ]
        components = [c.model_copy(update={"change": changes.get(c.name)}) for c in components]
        return SandboxStatus(state_dir=str(self.state_dir), components=components)

    # ------------------------------------------------------------------------------------ DNS
    def _named_pair(self) -> NamedPair:
        return NamedPair(
            NamedPairConfig(
                directory=self.dns_dir,
                primary_port=self.ports.dns_primary,
                secondary_port=self.ports.dns_secondary,
                zone=ZONE,
                records=[ZoneRecord(RECORD, "A", RECORD_TTL, REGIONS[PRIMARY_REGION])],
                tsig_name=TSIG_NAME,
                stop_at_exit=False,
            )
        )

    def _up_dns(self, changes: dict[str, Change]) -> None:
        pair = self._named_pair()
        servers = (pair.primary, pair.secondary)
        stopped = [s for s in servers if not s.is_running()]
        for server in stopped:
            require_free(LOOPBACK, server.port, f"DNS {server.role}", udp=True)
        pair.start()
        for server in servers:
            changes[f"dns-{server.role}"] = "started" if server in stopped else "already-running"

    def _dns_status(self) -> list[ComponentStatus]:
        if self.dns_dir.exists():
            servers: list[tuple[str, int, int | None]] = [
                (s.role, s.port, s.pid) for s in self._dns_servers()
            ]
        else:
            servers = [
                ("primary", self.ports.dns_primary, None),
                ("secondary", self.ports.dns_secondary, None),
            ]
        return [
            ComponentStatus(
                name=f"dns-{role}",
                kind="dns",
                address=f"{LOOPBACK}:{port}",
                state="running" if pid is not None else "stopped",
                pid=pid,
                role=role,
            )
            for role, port, pid in servers
        ]

    def _dns_servers(self) -> list[NamedServer]:
        pair = self._named_pair()
        return [pair.primary, pair.secondary]

    # ------------------------------------------------------------------------------- PostgreSQL
    def _postgres_pair(self) -> PostgresPair:
        return PostgresPair(
            PostgresPairConfig(
                directory=self.postgres_dir,
                primary_port=self.ports.postgres_primary,
                standby_port=self.ports.postgres_standby,
                host=LOOPBACK,
                dbname=DBNAME,
                user=DB_USER,
                primary_region=PRIMARY_REGION,
                standby_region=STANDBY_REGION,
                tcp_only=self.topology == "remote",
            )
        )

    def _up_postgres(self, changes: dict[str, Change]) -> None:
        pair = self._postgres_pair()
        for server in pair.servers:
            if server.pid is None and pair.held_reason(server) is None:
                require_free(LOOPBACK, server.port, f"PostgreSQL {server.region}")
        for outcome in pair.start():
            changes[f"postgres-{outcome.region}"] = outcome.outcome

    def _postgres_status(self) -> list[ComponentStatus]:
        pair = self._postgres_pair()
        return [self._postgres_component(pair, server) for server in pair.servers]

    def _postgres_component(self, pair: PostgresPair, server: PostgresServer) -> ComponentStatus:
        pid = server.pid if server.exists() else None
        role = pair.role(server.region) if pid is not None else None
        detail = None
        if pid is not None and role is None:
            detail = "running but not answering queries"
        elif pid is None and server.exists():
            with contextlib.suppress(PostgresCommandError, PostgresNotInstalledError):
                detail = pair.held_reason(server)
        return ComponentStatus(
            name=f"postgres-{server.region}",
            kind="postgres",
            region=server.region,
            address=server.address,
            state="running" if pid is not None else "stopped",
            pid=pid,
            role=role,
            detail=detail,
        )

    # ------------------------------------------------------------------------------------- apps
    def _app_pid_path(self, region: str) -> Path:
        return self.apps_dir / f"{region}.pid"

    def _app_log_path(self, region: str) -> Path:
        return self.apps_dir / f"{region}.log"

    def _app_database_port(self, region: str) -> int:
        return self.ports.postgres_primary if region == PRIMARY_REGION else self.ports.postgres_standby

    def _app_pid(self, region: str) -> int | None:
        """The app's pid if the pid file names a live app of this region and this state directory."""
        try:
            pid = int(self._app_pid_path(region).read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        ours = b"workers.sandbox.app" in cmdline and region.encode() in cmdline
        mine = str(self.postgres_dir / "password").encode() in cmdline
        return pid if ours and mine and pid_alive(pid) else None

    def _up_apps(self, changes: dict[str, Change]) -> None:
        self.apps_dir.mkdir(parents=True, exist_ok=True)
        for region, address in REGIONS.items():
            name = f"app-{region}"
            if self._app_pid(region) is not None:
                changes[name] = "already-running"
                continue
            require_free(address, self.ports.app, f"app {region}")
            self._start_app(region, address)
            changes[name] = "started"

    def restart_app(self, region: str, follow_primary: bool = True) -> None:
        """Stop the region's app and start it again; ``follow_primary=False`` writes only through its own
        region's database, as an app without a writer endpoint would (tests show what that breaks)."""
        terminate(self._app_pid(region), STOP_TIMEOUT)
        self._start_app(region, REGIONS[region], follow_primary)

    def _start_app(self, region: str, address: str, follow_primary: bool = True) -> None:
        writers = [self.ports.postgres_primary, self.ports.postgres_standby]
        command = [
            sys.executable, "-m", "workers.sandbox.app",
            "--region", region,
            "--listen", f"{address}:{self.ports.app}",
            "--dsn-host", LOOPBACK,
            "--dsn-port", str(self._app_database_port(region)),
            "--dbname", DBNAME,
            "--user", DB_USER,
            "--password-file", str(self.postgres_dir / "password"),
            *(["--writer-ports", ",".join(map(str, writers))] if follow_primary else []),
        ]  # fmt: skip
        log_path = self._app_log_path(region)
        process = spawn_detached(command, log_path)
        self._app_pid_path(region).write_text(f"{process.pid}\n")
        url = f"http://{address}:{self.ports.app}/healthz"
        deadline = time.monotonic() + APP_START_TIMEOUT
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                raise SandboxError(f"app {region} exited with status {code}\n{log_tail(log_path)}")
            if http_ok(url):
                return
            time.sleep(0.05)
        terminate(process.pid, STOP_TIMEOUT)
        raise SandboxError(
            f"app {region} did not answer {url} within {APP_START_TIMEOUT:g}s\n{log_tail(log_path)}"
        )

    def _app_status(self) -> list[ComponentStatus]:
        components = []
        for region, address in REGIONS.items():
            pid = self._app_pid(region)
            components.append(
                ComponentStatus(
                    name=f"app-{region}",
                    kind="app",
                    region=region,
                    address=f"{address}:{self.ports.app}",
                    state="running" if pid is not None else "stopped",
                    pid=pid,
                )
            )
        return components

    # ---------------------------------------------------------------------------------- HAProxy
    def _haproxy(self) -> HaproxyServer:
        return HaproxyServer(
            HaproxyConfig(
                directory=self.haproxy_dir,
                port=self.ports.haproxy,
                servers={region: (address, self.ports.app) for region, address in REGIONS.items()},
                initial_weights=INITIAL_WEIGHTS,
                host=LOOPBACK,
            )
        )

    def _up_haproxy(self, changes: dict[str, Change]) -> None:
        haproxy = self._haproxy()
        if haproxy.is_running():
            changes["haproxy"] = "already-running"
            return
        require_free(LOOPBACK, self.ports.haproxy, "HAProxy frontend")
        haproxy.start(APP_START_TIMEOUT)
        changes["haproxy"] = "started"

    def _haproxy_status(self) -> ComponentStatus:
        haproxy = self._haproxy()
        pid = haproxy.pid
        detail = None
        if pid is not None:
            try:
                weights = haproxy.weights()
                detail = "weights " + ", ".join(f"{region} {weight}" for region, weight in weights.items())
            except HaproxyError as err:
                detail = f"runtime API not answering: {err}"
        return ComponentStatus(
            name="haproxy",
            kind="haproxy",
            address=haproxy.address,
            state="running" if pid is not None else "stopped",
            pid=pid,
            detail=detail,
        )

    # ------------------------------------------------------------------------------- internals
    def _recorded(self) -> dict[str, Any]:
        try:
            recorded = json.loads(self.config_path.read_text())
        except (OSError, ValueError):
            return {}
        return recorded if isinstance(recorded, dict) else {}

    def _recorded_ports(self) -> SandboxPorts | None:
        recorded = self._recorded()
        recorded.pop("topology", None)
        try:
            return SandboxPorts(**recorded) if recorded else None
        except (ValueError, TypeError):
            return None

    def _recorded_topology(self) -> Topology | None:
        topology = self._recorded().get("topology")
        if topology == "local":
            return "local"
        if topology == "remote":
            return "remote"
        return None

    def _any_running(self) -> bool:
        return any(c.state == "running" for c in self.status().components)


def _describe_ports(ports: SandboxPorts) -> str:
    return ", ".join(f"{name} {port}" for name, port in asdict(ports).items())
