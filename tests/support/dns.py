"""The ``dns_world`` fixture: one real BIND primary and secondary for the whole test session."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dns.message
import dns.query
import dns.rcode
import dns.update
import pytest

from runbooks.model import Nameserver
from workers.sandbox.named import LOOPBACK, NamedPair, NamedPairConfig, ZoneRecord, free_ports

ZONE = "drflow.test."
APP_RECORD = "app.drflow.test."
APP_ADDRESS = "127.0.1.1"
OTHER_RECORD = "other.drflow.test."
OTHER_ADDRESS = "127.0.2.1"
RECORD_TTL = 5
TSIG_NAME = "drflow-test"


@pytest.fixture(scope="session")
def dns_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamedPair]:
    """Tests that stop the secondary must start it again: the pair is shared by the whole session."""
    primary_port, secondary_port = free_ports(2)
    config = NamedPairConfig(
        directory=tmp_path_factory.mktemp("dns"),
        primary_port=primary_port,
        secondary_port=secondary_port,
        zone=ZONE,
        tsig_name=TSIG_NAME,
        records=[
            ZoneRecord(APP_RECORD, "A", RECORD_TTL, APP_ADDRESS),
            ZoneRecord(OTHER_RECORD, "A", RECORD_TTL, OTHER_ADDRESS),
        ],
    )
    with NamedPair(config) as pair:
        yield pair


def signed_update(pair: NamedPair, change: Callable[[dns.update.UpdateMessage], None]) -> None:
    """Another writer (an operator with nsupdate): a change that does not go through drflow."""
    update = dns.update.UpdateMessage(ZONE, keyring=pair.tsig_key())
    change(update)
    response = dns.query.tcp(update, LOOPBACK, port=pair.primary_port, timeout=5)
    assert dns.rcode.to_text(response.rcode()) == "NOERROR"


@contextmanager
def udp_nameserver(
    answer: Callable[[dns.message.Message], dns.message.Message], name: str
) -> Iterator[Nameserver]:
    """An authoritative nameserver on loopback answering each UDP query with ``answer(query)``.

    For providers whose real nameservers cannot be queried offline (awsdns, googledomains): the answer
    function reads the emulator's zone, so propagation is checked against what the provider serves.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                wire, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            sock.sendto(answer(dns.message.from_wire(wire)).to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Nameserver(name=name, address=LOOPBACK, port=sock.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        sock.close()
