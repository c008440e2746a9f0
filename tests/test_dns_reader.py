"""read_dns_record against a real BIND primary and secondary (the session fixture ``dns_world``)."""

from __future__ import annotations

import asyncio
import socket
import time

import dns.asyncquery
import dns.message
import dns.query
import dns.rcode
import dns.update
import dns.xfr
import dns.zone
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.dns.reader import DnsQuery, DnsReadout, NameserverAnswer, read_dns_record
from runbooks.model import Nameserver
from tests.support.dns import APP_ADDRESS, APP_RECORD, RECORD_TTL, ZONE
from workers.sandbox.named import LOOPBACK, NamedPair, free_port

CONVERGENCE_BOUND_SECONDS = 10.0


async def read(query: DnsQuery) -> DnsReadout:
    return await ActivityEnvironment().run(read_dns_record, query)


def query_for(pair: NamedPair, record: str, **overrides: object) -> DnsQuery:
    fields: dict[str, object] = {"record": record, "type": "A", "zone": ZONE, "nameservers": pair.nameservers}
    return DnsQuery.model_validate(fields | overrides)


def only(readout: DnsReadout, nameserver: Nameserver) -> NameserverAnswer:
    [answer] = [a for a in readout.answers if (a.address, a.port) == (nameserver.address, nameserver.port)]
    return answer


async def test_both_nameservers_answer_the_record_authoritatively_with_its_ttl(dns_world: NamedPair) -> None:
    readout = await read(query_for(dns_world, APP_RECORD))

    assert [a.name for a in readout.answers] == ["ns1.drflow.test.", "ns2.drflow.test."]
    for answer in readout.answers:
        assert answer.error is None
        assert answer.rcode == "NOERROR"
        assert answer.authoritative
        assert answer.values == [APP_ADDRESS]
        assert answer.ttl == RECORD_TTL
        assert answer.latency_ms > 0
    assert readout.all_agree
    assert readout.distinct_values == {(APP_ADDRESS,)}
    assert not readout.discovered


async def test_a_signed_update_is_served_by_the_primary_at_once_and_by_the_secondary_after_notify(
    dns_world: NamedPair,
) -> None:
    record, new_address = "moved.drflow.test.", "127.0.3.1"
    update = dns.update.Update(ZONE, keyring=dns_world.tsig_key())
    update.replace(record, RECORD_TTL, "A", new_address)

    response = await dns.asyncquery.tcp(update, LOOPBACK, timeout=2, port=dns_world.primary_port)
    updated_at = time.monotonic()

    assert dns.rcode.to_text(response.rcode()) == "NOERROR"
    readout = await read(query_for(dns_world, record, nameservers=[dns_world.primary_nameserver]))
    assert readout.answers[0].values == [new_address]

    secondary_query = query_for(dns_world, record, nameservers=[dns_world.secondary_nameserver])
    values: list[str] = []
    while time.monotonic() - updated_at < CONVERGENCE_BOUND_SECONDS:
        values = (await read(secondary_query)).answers[0].values
        if values == [new_address]:
            break
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - updated_at
    assert values == [new_address], (
        f"secondary still serves {values} {elapsed:.2f}s after the update (NOTIFY + IXFR did not converge)"
    )
    assert elapsed < CONVERGENCE_BOUND_SECONDS, f"secondary converged after {elapsed:.2f}s"


def test_the_primary_refuses_a_zone_transfer_without_the_tsig_key(dns_world: NamedPair) -> None:
    with pytest.raises(dns.xfr.TransferError, match="REFUSED"):
        dns.zone.from_xfr(dns.query.xfr(LOOPBACK, ZONE, port=dns_world.primary_port, lifetime=5))

    signed = dns.zone.from_xfr(
        dns.query.xfr(
            LOOPBACK, ZONE, port=dns_world.primary_port, lifetime=5, keyring=dns_world.tsig_keyring()
        )
    )
    assert signed.get_node("app") is not None


def test_the_secondary_refuses_zone_transfers_even_with_the_tsig_key(dns_world: NamedPair) -> None:
    with pytest.raises(dns.xfr.TransferError, match="REFUSED"):
        dns.zone.from_xfr(
            dns.query.xfr(
                LOOPBACK, ZONE, port=dns_world.secondary_port, lifetime=5, keyring=dns_world.tsig_keyring()
            )
        )


async def test_the_primary_refuses_an_update_without_the_tsig_key(dns_world: NamedPair) -> None:
    update = dns.update.Update(ZONE)
    update.replace(APP_RECORD, RECORD_TTL, "A", "127.0.9.9")

    response = await dns.asyncquery.tcp(update, LOOPBACK, timeout=2, port=dns_world.primary_port)

    assert dns.rcode.to_text(response.rcode()) == "REFUSED"
    readout = await read(query_for(dns_world, APP_RECORD, nameservers=[dns_world.primary_nameserver]))
    assert readout.answers[0].values == [APP_ADDRESS]


async def test_a_closed_port_is_an_answer_with_an_error_not_a_failed_read(dns_world: NamedPair) -> None:
    closed = Nameserver(name="ns-gone.drflow.test.", address=LOOPBACK, port=free_port())
    query = query_for(dns_world, APP_RECORD, nameservers=[dns_world.primary_nameserver, closed])

    readout = await read(query.model_copy(update={"timeout_seconds": 0.5}))

    gone = only(readout, closed)
    assert gone.error is not None
    assert "refused" in gone.error or "timeout" in gone.error
    assert (gone.rcode, gone.values, gone.ttl, gone.authoritative) == (None, [], None, False)
    assert only(readout, dns_world.primary_nameserver).values == [APP_ADDRESS]
    assert readout.all_agree, "the nameservers that answered agree; the silent one is reported separately"
    assert readout.unreachable == [gone]


async def test_a_nameserver_that_never_answers_is_reported_as_a_timeout(dns_world: NamedPair) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as black_hole:
        black_hole.bind((LOOPBACK, 0))
        silent = Nameserver(name="ns-silent.drflow.test.", address=LOOPBACK, port=black_hole.getsockname()[1])
        query = query_for(dns_world, APP_RECORD, nameservers=[silent], timeout_seconds=0.3)

        readout = await read(query)

    assert readout.answers[0].error == "timeout after 0.3s"
    assert readout.answers[0].latency_ms >= 300
    assert not readout.all_agree, "no nameserver answered, so nothing can be said to agree"


async def test_a_missing_record_is_reported_as_nxdomain_by_every_nameserver(dns_world: NamedPair) -> None:
    readout = await read(query_for(dns_world, "missing.drflow.test."))

    assert [(a.rcode, a.values, a.error, a.authoritative) for a in readout.answers] == [
        ("NXDOMAIN", [], None, True),
        ("NXDOMAIN", [], None, True),
    ]
    assert readout.all_agree


async def test_a_stopped_secondary_answers_with_an_error_until_it_is_started_again(
    dns_world: NamedPair,
) -> None:
    query = query_for(dns_world, APP_RECORD, timeout_seconds=0.5)
    await asyncio.to_thread(dns_world.stop_secondary)
    try:
        readout = await read(query)
    finally:
        await asyncio.to_thread(dns_world.start_secondary)

    assert only(readout, dns_world.secondary_nameserver).error is not None
    assert only(readout, dns_world.primary_nameserver).values == [APP_ADDRESS]
    assert only(await read(query), dns_world.secondary_nameserver).values == [APP_ADDRESS]


async def test_nameservers_are_discovered_from_the_zone_ns_records_when_none_are_listed(
    dns_world: NamedPair,
) -> None:
    query = query_for(
        dns_world, APP_RECORD, nameservers=[], resolver=dns_world.primary_nameserver, timeout_seconds=0.3
    )

    readout = await read(query)

    assert readout.discovered
    assert [(a.name, a.address, a.port) for a in readout.answers] == [
        ("ns1.drflow.test.", LOOPBACK, 53),
        ("ns2.drflow.test.", LOOPBACK, 53),
    ]


async def test_a_zone_whose_nameservers_cannot_be_discovered_fails_with_a_retryable_error(
    dns_world: NamedPair,
) -> None:
    query = DnsQuery(record="app.nowhere.test.", zone="nowhere.test.", resolver=dns_world.primary_nameserver)

    with pytest.raises(ApplicationError) as raised:
        await read(query)

    assert raised.value.type == "DnsDiscoveryFailed"
    assert not raised.value.non_retryable
    assert "nowhere.test." in raised.value.message
    assert "dns.nameservers" in raised.value.message


def test_readout_disagrees_while_one_nameserver_still_serves_the_old_value() -> None:
    def answer(name: str, values: list[str]) -> NameserverAnswer:
        return NameserverAnswer(
            name=name, address=LOOPBACK, port=53, values=values, ttl=5, rcode="NOERROR", latency_ms=1.0
        )

    readout = DnsReadout(
        record=APP_RECORD,
        type="A",
        answers=[answer("ns1.drflow.test.", ["127.0.2.1"]), answer("ns2.drflow.test.", ["127.0.1.1"])],
        discovered=False,
    )

    assert not readout.all_agree
    assert readout.distinct_values == {("127.0.2.1",), ("127.0.1.1",)}
