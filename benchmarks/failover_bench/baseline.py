"""The plain-script baseline: the same activity functions called in order on a fresh sandbox, no Temporal."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from datetime import timedelta

from temporalio.testing import ActivityEnvironment

from activities.database import activities as database
from activities.dns.activities import apply_dns_change, plan_dns_change
from activities.dns.plan import ApplyDnsChangeRequest, PlanDnsChangeRequest
from activities.dns.propagation import PropagationRequest, verify_propagation
from activities.dns.reader import DnsQuery
from activities.health import HealthValidationRequest, ValidatedProbe, validate_health, validation_budget
from runbooks.model import Runbook
from tests.support.sandbox import sandbox_world
from workflows.moves import REPLAY_WAIT_PLANNED
from workflows.moves import probes as _probes

from .records import SOURCE, TARGET, Irreducible, ScriptRun


@contextlib.contextmanager
def timed(into: dict[str, float], key: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        into[key] = time.monotonic() - started


def validated_probes(runbook: Runbook) -> list[ValidatedProbe]:
    """What the workflow's health validation checks on the target (the same construction)."""
    checks = {c.name: c for c in runbook.checks_for(TARGET)}
    return [
        ValidatedProbe(
            probe=p,
            consecutive_successes=checks[p.check].consecutive_successes,
            interval=checks[p.check].interval,
        )
        for p in _probes(runbook, TARGET, serving=True)
    ]


def health_budget(runbook: Runbook) -> timedelta:
    """The validation window the workflow gives the same checks."""
    window, _ = validation_budget(validated_probes(runbook), runbook.health_minimum)
    return window


async def run_script(ttl_then_health: bool) -> ScriptRun:
    """What a user would otherwise write: the same activity functions, called in order, no Temporal.

    ``ActivityEnvironment`` gives the functions that heartbeat an activity context (heartbeats go nowhere).
    By default the TTL wait and health validation run concurrently, as in the workflow; with
    ``ttl_then_health`` the script sleeps out the TTL first, as a naive sequential script would.
    """
    with sandbox_world() as world:
        runbook = world.runbook
        assert runbook.database is not None
        dns = runbook.dns
        address = runbook.regions[TARGET].address
        env = ActivityEnvironment()
        steps: dict[str, float] = {}
        began = time.monotonic()
        plan = await env.run(plan_dns_change, PlanDnsChangeRequest(dns=dns, target_address=address))
        go = time.monotonic()  # what the operator approves is computed: from here on it is the failover
        with timed(steps, "fence"):
            fence = env.run(
                database.fence,
                database.DatabaseFenceRequest(database=runbook.database, region=SOURCE, mode="planned"),
            )
        if not fence.fenced or fence.final_lsn is None:
            raise RuntimeError(f"the script could not fence {SOURCE}: {fence.errors}")
        with timed(steps, "wait for replay"):
            replay = env.run(
                database.wait_for_replay,
                database.ReplayRequest(
                    database=runbook.database,
                    region=TARGET,
                    position=fence.final_lsn,
                    timeout_seconds=REPLAY_WAIT_PLANNED.total_seconds(),
                ),
            )
        if not replay.reached:
            raise RuntimeError(f"{TARGET} did not replay {fence.final_lsn}")
        with timed(steps, "promote"):
            promotion = env.run(
                database.promote, database.DatabasePromoteRequest(database=runbook.database, region=TARGET)
            )
        with timed(steps, "apply DNS"):
            await env.run(apply_dns_change, ApplyDnsChangeRequest(dns=dns, plan=plan))
        query = DnsQuery(record=dns.record, type=dns.type, zone=dns.zone, nameservers=dns.nameservers)
        with timed(steps, "verify propagation"):
            propagation = await env.run(
                verify_propagation,
                PropagationRequest(
                    query=query, expected=[address], timeout_seconds=dns.propagation_budget.total_seconds()
                ),
            )
        ttl = float(plan.current.ttl or dns.ttl)

        async def ttl_wait() -> None:
            with timed(steps, "TTL wait"):
                await asyncio.sleep(ttl)

        async def health_check() -> float:
            with timed(steps, "validate health"):
                result = await env.run(
                    validate_health,
                    HealthValidationRequest(probes=validated_probes(runbook), timeout=health_budget(runbook)),
                )
            return result.elapsed_ms / 1000

        if ttl_then_health:
            await ttl_wait()
            health_elapsed = await health_check()
        else:
            _, health_elapsed = await asyncio.gather(ttl_wait(), health_check())
        ended = time.monotonic()
        return ScriptRun(
            rto_s=ended - go,
            total_s=ended - began,
            irreducible=Irreducible(
                promotion_s=promotion.duration_ms / 1000,
                propagation_s=propagation.elapsed_ms / 1000,
                ttl_s=ttl,
                health_minimum_s=runbook.health_minimum.total_seconds(),
            ),
            health_elapsed_s=health_elapsed,
            steps_s=steps,
        )
