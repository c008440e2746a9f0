"""The ``dns_world`` fixture: one real BIND primary and secondary for the whole test session."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import dns.query
import dns.rcode
import dns.update
import pytest

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
