"""What a gate approves, in words: one renderer for every gate of every kind of run (docs/approvals.md).

A failover, a failback (and later an evacuation) fill a ``GatePlan`` from their own plan; this module turns
it into the lines the status report, ``drflow status``, the Web UI's current details and the CLI's
``--wait`` message show: the steps passing the gate lets happen, the DNS diff, the data at stake and the
full checksum an answer binds to. Pure functions of typed values, so the workflow stays deterministic and
the views cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from activities.database.results import ReplicationStatus
from activities.dns.plan import DnsChangePlan
from runbooks.durations import format_duration


class LossWindow(Protocol):
    """What a data-loss window says (``DataLossWindow``): read only, so any record of it will do."""

    @property
    def zero_proven(self) -> bool: ...
    @property
    def bytes(self) -> int | None: ...
    @property
    def seconds(self) -> float | None: ...
    @property
    def basis(self) -> str: ...
    @property
    def rpo_seconds(self) -> float | None: ...
    @property
    def rpo_bytes(self) -> int | None: ...


@dataclass(frozen=True)
class GatePlan:
    """The approver's side of a gate: what passing it does, the DNS change, what data is at stake."""

    title: str
    approves: list[str]
    dns: DnsChangePlan | None
    at_stake: list[str]
    checksum: str | None
    warnings: list[str] = field(default_factory=list)
    objectives: str | None = None


def dns_diff(dns: DnsChangePlan) -> list[str]:
    """Record, from → to and TTL on one line, then the zone-file diff (what the provider applies)."""
    if dns.no_op:
        return [f"`{dns.record}` {dns.type}: no change ({dns.current.describe()})"]
    ttl = dns.current.ttl
    served = f"TTL {ttl}s" if ttl is not None else "TTL unknown"
    wanted = f"TTL {dns.desired.ttl}s" if dns.desired.ttl is not None else "TTL unknown"
    ttls = served if dns.desired.ttl == ttl else f"{served} → {wanted}"
    return [
        f"`{dns.record}` {dns.type} ({dns.provider}, zone {dns.zone}): {dns.current.describe()} → "
        f"{dns.desired.describe()}, {ttls}",
        "```diff",
        dns.markdown(),
        "```",
    ]


def lag_words(replication: ReplicationStatus) -> str:
    """The replication lag as the plan measured it: bytes and seconds where the provider reports both."""
    if replication.lag_bytes is not None and replication.lag_seconds is not None:
        return f"{replication.lag_bytes} bytes / {replication.lag_seconds:.1f}s"
    if replication.lag_seconds is not None:
        return f"{replication.lag_seconds:.1f}s (this provider reports no byte positions)"
    if replication.lag_bytes is not None:
        return f"{replication.lag_bytes} bytes (age unknown)"
    return "unknown (primary unreachable)"


def replication_at_stake(
    replication: ReplicationStatus, source: str, target: str, rpo: timedelta, *, zero_loss: bool
) -> str:
    """The data of a database move: what must catch up (zero loss) or what may be lost (emergency)."""
    lag = lag_words(replication)
    if zero_loss:
        return (
            f"{target}'s database is {lag} behind {source} now: after the fence no write is accepted and "
            f"the switch waits until {target} has replayed everything (zero loss, proven by LSN), or stops "
            "and undoes the fence; RPO " + format_duration(rpo)
        )
    return (
        f"{target}'s database is {lag} behind {source} now: an emergency move may lose what it has not "
        f"replayed; above the RPO ({format_duration(rpo)}) or unknown, the data-loss gate asks again"
    )


def loss_at_stake(window: LossWindow) -> str:
    """The data-loss gate's stake: what passing it loses, against the objectives."""
    if window.zero_proven:
        return f"nothing is lost (proven): {window.basis}"
    lost = f"{window.bytes} bytes" if window.bytes is not None else "an unknown number of bytes"
    age = f"{window.seconds:.1f}s of writes" if window.seconds is not None else "writes of unknown age"
    objective = ""
    if window.rpo_seconds is not None:
        objective = f"; objective RPO {window.rpo_seconds:g}s" + (
            f" and {window.rpo_bytes} bytes" if window.rpo_bytes is not None else ""
        )
    return f"passing this gate LOSES {lost} ({age}) the old primary took: {window.basis}{objective}"


def gate_plan_lines(plan: GatePlan) -> list[str]:
    """The plan part of an open gate, in Markdown."""
    lines = ["", f"**{plan.title}**", "", "Approving lets these happen:"]
    lines += [f"{n}. {step}" for n, step in enumerate(plan.approves, start=1)]
    if plan.dns is not None:
        lines += ["", "**DNS diff**", *dns_diff(plan.dns)]
    lines += ["", "**Data at stake**", *[f"- {line}" for line in plan.at_stake or ["none"]]]
    if plan.objectives is not None:
        lines += ["", f"**Objectives**: {plan.objectives}"]
    if plan.warnings:
        lines += ["", "**Warnings**", *[f"- {w}" for w in plan.warnings]]
    if plan.checksum is not None:
        lines += ["", f"Plan checksum: `{plan.checksum}`"]
    return lines
