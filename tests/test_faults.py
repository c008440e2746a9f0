"""The fault library against real components: a TCP server, real PostgreSQL pairs, real processes.

Each fault is injected, observed from outside (a client's round trip, the standby's replay, the process
table), removed, and observed again; a process killed with -9 after injecting leaves records that
``drflow faults cleanup`` undoes.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import psycopg
import pytest

from activities.faults.base import FaultError, UnsafeTarget
from activities.faults.postgres import ReplayPaused, replay_paused
from activities.faults.process import KilledProcess, alive
from activities.faults.proxy import ProxyFault, ProxyFaultSpec, TcpFaultProxy
from activities.faults.state import FaultRegistry, cleanup_leftovers
from activities.faults.udp import UdpFaultProxy, UdpFaultSpec, UdpProxyFault
from runbooks.model import PostgresNode
from tests.support.dns import APP_ADDRESS, APP_RECORD
from tests.support.postgres import eventually
from tests.test_cli_runbooks import DRFLOW
from workers.sandbox.named import NamedPair
from workers.sandbox.postgres import PostgresPair


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> float:
    started = time.monotonic()
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        received += chunk
    assert received == payload
    return time.monotonic() - started


def test_the_proxy_passes_delays_blackholes_and_resets_and_passes_again_once_cleared(
    echo: tuple[str, int], tmp_path: Path
) -> None:
    registry = FaultRegistry(tmp_path)
    with TcpFaultProxy(*echo) as proxy, socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        assert round_trip(sock) < 0.2

        with registry.injected(ProxyFault(proxy, ProxyFaultSpec(mode="delay", delay=0.3))) as record:
            assert [r.id for r in registry.records()] == [record.id]
            delayed = round_trip(sock)
        assert 0.6 <= delayed < 1.5, delayed  # 0.3 s each way
        assert round_trip(sock) < 0.2
        assert registry.records() == []

        with registry.injected(ProxyFault(proxy, ProxyFaultSpec(mode="blackhole"))):
            sock.settimeout(1.0)
            sock.sendall(b"lost")
            with pytest.raises(TimeoutError):
                sock.recv(10)
        # The connection stayed open through the partition; what was sent during it was dropped.
        sock.settimeout(5)
        assert round_trip(sock) < 0.2

        with registry.injected(ProxyFault(proxy, ProxyFaultSpec(mode="reset"))):
            with pytest.raises(ConnectionError):
                sock.sendall(b"x")
                sock.recv(10)
            with (
                pytest.raises(ConnectionError),
                socket.create_connection((proxy.host, proxy.port), timeout=5) as fresh,
            ):
                round_trip(fresh)
        with socket.create_connection((proxy.host, proxy.port), timeout=5) as again:
            assert round_trip(again) < 0.2


def test_a_fault_after_a_statement_lets_the_server_act_and_loses_its_answer(pg_pair: PostgresPair) -> None:
    server = pg_pair.server("region-a")
    with pg_pair.connect("region-a") as conn:
        conn.execute("CREATE TABLE faulted (note text)")
    with TcpFaultProxy(server.host, server.port) as proxy:
        proxy.set_fault(ProxyFaultSpec(mode="blackhole", after=b"drflow-marker"))
        failures: list[str] = []

        def client() -> None:
            try:
                with psycopg.connect(
                    host=proxy.host, port=proxy.port, dbname=pg_pair.config.dbname, user=pg_pair.config.user,
                    password=pg_pair.password(), autocommit=True, connect_timeout=5,
                ) as through:  # fmt: skip
                    through.execute("SELECT 1")  # before the pattern: passes
                    through.execute("INSERT INTO faulted VALUES ('drflow-marker')")
            except psycopg.Error as err:
                failures.append(type(err).__name__)

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        assert proxy.triggered.wait(10)

        def inserted() -> bool:
            with pg_pair.connect("region-a") as direct:
                return direct.execute("SELECT count(*) FROM faulted").fetchone() == (1,)

        eventually(inserted, what="the server ran the statement")
        time.sleep(0.5)
        assert thread.is_alive(), "the client got an answer through a blackhole"
        # Once: a new connection through the proxy passes.
        with psycopg.connect(
            host=proxy.host, port=proxy.port, dbname=pg_pair.config.dbname, user=pg_pair.config.user,
            password=pg_pair.password(), autocommit=True, connect_timeout=5,
        ) as fresh:  # fmt: skip
            assert fresh.execute("SELECT count(*) FROM faulted").fetchone() == (1,)
    thread.join(10)
    assert not thread.is_alive() and failures, "stopping the proxy ends the held connection"


def test_replay_paused_stops_the_standby_replaying_until_removed(
    pg_pair: PostgresPair, tmp_path: Path
) -> None:
    standby = pg_pair.node("region-b")
    fault = ReplayPaused(standby)
    registry = FaultRegistry(tmp_path)
    with pg_pair.connect("region-a") as primary:
        primary.execute("CREATE TABLE marks (n int)")
    eventually(lambda: _count(pg_pair, "region-b") == 0, what="the table on the standby")
    with registry.injected(fault):
        assert replay_paused(standby) is True
        with pg_pair.connect("region-a") as primary:
            primary.execute("INSERT INTO marks VALUES (1)")
        time.sleep(1.0)
        assert _count(pg_pair, "region-b") == 0, "a paused standby replayed"
    assert replay_paused(standby) is False
    eventually(lambda: _count(pg_pair, "region-b") == 1, what="replay after resume")


def _count(pair: PostgresPair, region: str) -> int | None:
    try:
        with pair.connect(region) as conn:
            row = conn.execute("SELECT count(*) FROM marks").fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None


def test_kill_minus_nine_and_restart_of_a_process_it_is_given(tmp_path: Path) -> None:
    victim = subprocess.Popen(["sleep", "300"])
    fault = KilledProcess(pid=victim.pid, restart=["sleep", "301"], log=str(tmp_path / "restart.log"))
    registry = FaultRegistry(tmp_path)
    try:
        registry.inject(fault)
        assert victim.wait(5) == -signal.SIGKILL
        registry.remove(fault)
        assert fault.restarted is not None and alive(fault.restarted.pid)
        assert registry.records() == []
    finally:
        if fault.restarted is not None:
            fault.restarted.kill()
            fault.restarted.wait()


def test_targets_outside_loopback_or_processes_it_may_not_kill_are_refused_and_nothing_changes(
    tmp_path: Path,
) -> None:
    registry = FaultRegistry(tmp_path)
    with pytest.raises(UnsafeTarget, match="not a loopback address"):
        TcpFaultProxy("192.0.2.10", 5432)
    with pytest.raises(UnsafeTarget, match="not a loopback address"):
        ReplayPaused(PostgresNode(host="192.0.2.10", user="postgres"))
    for pid in (1, os.getpid(), os.getppid()):
        with pytest.raises(UnsafeTarget, match="nothing killed"):
            registry.inject(KilledProcess(pid=pid))
    assert registry.records() == []
    assert alive(os.getppid())


CRASHING = """
import os, signal, sys
from activities.faults.postgres import ReplayPaused
from activities.faults.process import KilledProcess
from activities.faults.state import FaultRegistry
from runbooks.model import PostgresNode
registry = FaultRegistry(sys.argv[1])
registry.inject(ReplayPaused(PostgresNode.model_validate_json(sys.argv[2])))
registry.inject(KilledProcess(pid=int(sys.argv[3]), restart=["sleep", "302"]))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_faults_left_by_a_crashed_process_are_undone_by_cleanup_and_live_ones_are_not(
    pg_pair: PostgresPair, tmp_path: Path
) -> None:
    standby = pg_pair.node("region-b")
    victim = subprocess.Popen(["sleep", "300"])
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING, str(tmp_path), standby.model_dump_json(), str(victim.pid)],
        cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert victim.wait(5) == -signal.SIGKILL
    assert replay_paused(standby) is True
    assert [r.kind for r in FaultRegistry(tmp_path).records()] == ["postgres-replay-paused", "process-kill"]

    # A live process's fault is its own business: cleanup leaves it in place.
    live = FaultRegistry(tmp_path)
    other = subprocess.Popen(["sleep", "300"])
    live_fault = KilledProcess(pid=other.pid)
    live.inject(live_fault)
    other.wait(5)

    cleaned = subprocess.run(
        [*DRFLOW, "faults", "cleanup", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    restarted = re.search(r"as pid (\d+)", cleaned.stdout)
    try:
        assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
        lines = cleaned.stdout.splitlines()
        assert lines[0].startswith(f"undone: WAL replay paused on {standby.host}:{standby.port}")
        assert lines[1].startswith(f"undone: kill -9 of pid {victim.pid}, restart sleep 302: restarted")
        assert len(lines) == 2
        assert restarted is not None and alive(int(restarted.group(1)))
        assert replay_paused(standby) is False
        assert [r.kind for r in FaultRegistry(tmp_path).records()] == ["process-kill"]  # the live one
        assert cleanup_leftovers(tmp_path) == []
    finally:
        if restarted is not None:
            os.kill(int(restarted.group(1)), signal.SIGKILL)
    live.remove(live_fault)
    assert FaultRegistry(tmp_path).records() == []


def test_the_udp_proxy_delays_loses_and_blackholes_a_real_nameservers_answers(
    dns_world: NamedPair, tmp_path: Path
) -> None:
    """Queries to the real BIND secondary through the UDP proxy, as propagation checks make them."""
    registry = FaultRegistry(tmp_path)

    def ask(proxy: UdpFaultProxy, timeout: float = 2.0) -> float:
        query = dns.message.make_query(APP_RECORD, "A")
        started = time.monotonic()
        answer = dns.query.udp(query, "127.0.0.1", port=proxy.port, timeout=timeout)
        assert [rr.address for rrset in answer.answer for rr in rrset] == [APP_ADDRESS]
        return time.monotonic() - started

    with UdpFaultProxy("127.0.0.1", dns_world.secondary_port) as proxy:
        ask(proxy)
        with registry.injected(UdpProxyFault(proxy, UdpFaultSpec(mode="delay", delay=0.3))) as record:
            assert record.kind == "udp-proxy" and "delay +0.3s on udp" in record.description
            assert ask(proxy) >= 0.6  # 0.3 s each way
        with (
            registry.injected(UdpProxyFault(proxy, UdpFaultSpec(mode="blackhole"))),
            pytest.raises(dns.exception.Timeout),
        ):
            ask(proxy, timeout=0.5)
        with registry.injected(UdpProxyFault(proxy, UdpFaultSpec(mode="loss", loss=0.5, seed=7))):
            outcomes = []
            for _ in range(20):
                try:
                    ask(proxy, timeout=0.3)
                    outcomes.append(True)
                except dns.exception.Timeout:
                    outcomes.append(False)
        assert 0 < sum(outcomes) < 20, outcomes  # some queries or answers lost, some not
        assert proxy.counts.dropped >= outcomes.count(False)
        ask(proxy)  # cleared: every answer again
        assert registry.records() == []

    with pytest.raises(FaultError, match="loss must be a probability"):
        UdpFaultSpec(mode="loss", loss=1.5)
    with pytest.raises(UnsafeTarget):
        UdpFaultProxy("192.0.2.53", 53)
