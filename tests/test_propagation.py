"""dns_verify_propagation against the real BIND primary and secondary (the session fixture ``dns_world``)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import dns.query
import dns.rcode
import dns.update
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.dns.activities import apply_dns_change, plan_dns_change
from activities.dns.plan import ApplyDnsChangeRequest, PlanDnsChangeRequest
from activities.dns.propagation import (
    NameserverConvergence,
    PropagationProgress,
    PropagationRequest,
    PropagationResult,
    verify_propagation,
)
from activities.dns.reader import DnsQuery
from runbooks.model import Rfc2136Dns, TsigKey
from tests.support.dns import RECORD_TTL, TSIG_NAME, ZONE
from workers.sandbox.named import LOOPBACK, NamedPair

OLD, NEW = "127.0.1.1", "127.0.2.1"
BUDGET_SECONDS = 10.0


def signed_update(pair: NamedPair, change: Callable[[dns.update.UpdateMessage], None]) -> None:
    update = dns.update.UpdateMessage(ZONE, keyring=pair.tsig_key())
    change(update)
    response = dns.query.tcp(update, LOOPBACK, port=pair.primary_port, timeout=5)
    assert dns.rcode.to_text(response.rcode()) == "NOERROR"


@pytest.fixture
def record(dns_world: NamedPair) -> Iterator[str]:
    """A record of this test's own that both nameservers serve as OLD; deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:12]}.{ZONE}"
    signed_update(dns_world, lambda update: update.replace(name, RECORD_TTL, "A", OLD))
    dns_world.wait_in_sync()
    yield name
    signed_update(dns_world, lambda update: update.delete(name))


def request(
    pair: NamedPair, record: str, expected: str, timeout_seconds: float = BUDGET_SECONDS
) -> PropagationRequest:
    query = DnsQuery(record=record, type="A", zone=ZONE, nameservers=pair.nameservers, timeout_seconds=0.5)
    return PropagationRequest(query=query, expected=[expected], timeout_seconds=timeout_seconds)


def recording_environment() -> tuple[ActivityEnvironment, list[Any]]:
    env = ActivityEnvironment()
    heartbeats: list[Any] = []
    env.on_heartbeat = lambda *details: heartbeats.append(details[0])
    return env, heartbeats


def by_name(result: PropagationResult) -> dict[str, NameserverConvergence]:
    return {nameserver.name: nameserver for nameserver in result.nameservers}


async def test_an_applied_change_reaches_the_primary_first_and_the_secondary_after_notify(
    dns_world: NamedPair, record: str
) -> None:
    runbook_dns = Rfc2136Dns(
        provider="rfc2136",
        zone=ZONE,
        record=record,
        ttl=RECORD_TTL,
        nameservers=dns_world.nameservers,
        server=dns_world.primary_nameserver,
        tsig=TsigKey(name=TSIG_NAME, secret=dns_world.tsig_secret_ref),
    )
    plan = await ActivityEnvironment().run(
        plan_dns_change, PlanDnsChangeRequest(dns=runbook_dns, target_address=NEW)
    )
    applied = await ActivityEnvironment().run(
        apply_dns_change, ApplyDnsChangeRequest(dns=runbook_dns, plan=plan)
    )
    env, heartbeats = recording_environment()

    result = await env.run(verify_propagation, request(dns_world, record, NEW))

    assert applied.applied
    assert result.converged
    ns1, ns2 = by_name(result)["ns1.drflow.test."], by_name(result)["ns2.drflow.test."]
    assert (ns1.converged, ns1.last_values, ns1.last_error) == (True, [NEW], None)
    assert (ns2.converged, ns2.last_values, ns2.last_error) == (True, [NEW], None)
    assert ns1.converged_after_ms is not None and ns2.converged_after_ms is not None
    assert ns1.converged_after_ms < ns2.converged_after_ms, (
        "the primary serves at once, the secondary after NOTIFY"
    )
    assert result.elapsed_ms >= ns2.converged_after_ms
    assert len(heartbeats) >= 2, "one heartbeat per poll while the secondary lags"
    assert PropagationProgress.model_validate(heartbeats[-1]).result == result
    for text in (runbook_dns.model_dump_json(), plan.model_dump_json(), applied.model_dump_json()):
        assert dns_world.tsig_secret not in text


async def test_nameservers_that_already_serve_the_value_converge_on_the_first_poll(
    dns_world: NamedPair, record: str
) -> None:
    env, heartbeats = recording_environment()

    result = await env.run(verify_propagation, request(dns_world, record, OLD))

    assert result.converged
    assert [(n.name, n.converged) for n in result.nameservers] == [
        ("ns1.drflow.test.", True),
        ("ns2.drflow.test.", True),
    ]
    assert len(heartbeats) == 1


async def test_a_stopped_secondary_times_out_naming_ns2_and_what_it_answered(
    dns_world: NamedPair, record: str
) -> None:
    await asyncio.to_thread(dns_world.stop_secondary)
    try:
        signed_update(dns_world, lambda update: update.replace(record, RECORD_TTL, "A", NEW))
        started = time.monotonic()
        with pytest.raises(ApplicationError) as raised:
            await ActivityEnvironment().run(
                verify_propagation, request(dns_world, record, NEW, timeout_seconds=1.0)
            )
        waited = time.monotonic() - started
    finally:
        await asyncio.to_thread(dns_world.start_secondary)
        await asyncio.to_thread(dns_world.wait_in_sync)

    error = raised.value
    assert error.type == "PropagationTimeout"
    assert error.non_retryable
    assert f"ns2.drflow.test. (127.0.0.1:{dns_world.secondary_port}) did not answer: " in error.message
    assert "ns1.drflow.test." not in error.message
    assert 1.0 <= waited < 2.0, "the budget bounds the wait, queries included"
    result = PropagationResult.model_validate(error.details[0])
    assert not result.converged
    assert by_name(result)["ns1.drflow.test."].converged
    ns2 = by_name(result)["ns2.drflow.test."]
    assert (ns2.converged, ns2.converged_after_ms) == (False, None)
    assert ns2.last_error is not None


async def test_nameservers_still_serving_the_old_value_are_named_with_their_answer(
    dns_world: NamedPair, record: str
) -> None:
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(
            verify_propagation, request(dns_world, record, NEW, timeout_seconds=0.5)
        )

    assert raised.value.type == "PropagationTimeout"
    assert f"ns1.drflow.test. (127.0.0.1:{dns_world.primary_port}) still answers {OLD} after 0.5s" in (
        raised.value.message
    )
    assert f"ns2.drflow.test. (127.0.0.1:{dns_world.secondary_port}) still answers {OLD} after 0.5s" in (
        raised.value.message
    )


async def test_a_retry_continues_the_wait_of_the_previous_attempt_from_its_heartbeat(
    dns_world: NamedPair, record: str
) -> None:
    """A worker died after ns1 converged: the retry keeps ns1's time and counts from the first start."""
    ns1, ns2 = dns_world.nameservers
    earlier = PropagationResult(
        converged=False,
        elapsed_ms=2000.0,
        nameservers=[
            NameserverConvergence(
                name=ns1.name,
                address=ns1.address,
                port=ns1.port,
                converged=True,
                converged_after_ms=123.0,
                last_values=[OLD],
                last_error=None,
            ),
            NameserverConvergence(
                name=ns2.name,
                address=ns2.address,
                port=ns2.port,
                converged=False,
                converged_after_ms=None,
                last_values=[],
                last_error="timeout after 0.5s",
            ),
        ],
    )
    progress = PropagationProgress(started_at_unix=time.time() - 5, result=earlier)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[progress.model_dump(mode="json")])

    result = await env.run(verify_propagation, request(dns_world, record, OLD))

    assert result.converged
    assert by_name(result)[ns1.name].converged_after_ms == 123.0
    second = by_name(result)[ns2.name].converged_after_ms
    assert second is not None and second >= 5000
