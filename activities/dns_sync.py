"""Wait until the DNS provider reports a change as live on its own servers (Route53 INSYNC, Cloud DNS done).

This is the provider's word, not proof: ``dns_verify_propagation`` still asks every authoritative nameserver.
It comes first because it is cheap and because until then no nameserver is expected to answer the new value.
A plain read that heartbeats every poll, so a retry simply polls again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

from pydantic import Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import dns_providers
from activities.cloud import heartbeat
from activities.errors import ErrorType
from runbooks.model import DnsConfig, StrictModel


@runtime_checkable
class ChangeStatusProvider(Protocol):
    """A DNS provider whose ``apply`` returns a change id with a status (``reports_change_status``)."""

    async def change_status(self, change_id: str) -> tuple[bool, str]:
        """(live on every server of the provider, the provider's own status word)."""
        ...


class DnsChangeStatusRequest(StrictModel):
    dns: DnsConfig
    change_id: str
    timeout_seconds: float = Field(gt=0, le=86400, description="the runbook's propagation_budget")
    poll_interval_seconds: float = Field(default=1.0, gt=0, le=60)


class DnsChangeStatus(StrictModel):
    provider: str
    change_id: str
    status: str = Field(
        description="the provider's last word: PENDING/INSYNC (Route53), pending/done (Cloud DNS)"
    )
    in_sync: bool
    waited_ms: float
    polls: int


@activity.defn(name="dns_wait_for_change")
async def wait_for_change(req: DnsChangeStatusRequest) -> DnsChangeStatus:
    """Poll the change until the provider reports it live; past the budget, fail with what it last said."""
    provider = dns_providers.provider_for(req.dns)
    if not isinstance(provider, ChangeStatusProvider) or not provider.reports_change_status:
        raise ApplicationError(
            f"DNS provider {req.dns.provider!r} reports no change status; verify propagation directly",
            type=ErrorType.NOT_APPLICABLE,
            non_retryable=True,
        )
    started = time.monotonic()
    polls = 0
    while True:
        in_sync, status = await provider.change_status(req.change_id)
        polls += 1
        waited_ms = round((time.monotonic() - started) * 1000, 1)
        result = DnsChangeStatus(
            provider=req.dns.provider,
            change_id=req.change_id,
            status=status,
            in_sync=in_sync,
            waited_ms=waited_ms,
            polls=polls,
        )
        if in_sync:
            activity.logger.info(
                "%s change %s is %s after %.0f ms", req.dns.provider, req.change_id, status, waited_ms
            )
            return result
        heartbeat(result.model_dump(mode="json"))
        remaining = req.timeout_seconds - (time.monotonic() - started)
        if remaining <= 0:
            raise ApplicationError(
                f"{req.dns.provider} change {req.change_id} is still {status} after {req.timeout_seconds:g}s",
                result.model_dump(mode="json"),
                type=ErrorType.PROPAGATION_TIMEOUT,
                non_retryable=True,
            )
        await asyncio.sleep(min(req.poll_interval_seconds, remaining))
