"""Wait until every authoritative nameserver serves the new answer, within the runbook's propagation budget.

A pure read that heartbeats every poll: a worker that dies mid-wait is noticed by the heartbeat timeout, and
the retry polls again. The heartbeat carries when the wait began and who already converged, so a retry
neither restarts the budget nor forgets a nameserver that already served the new answer.
"""

from __future__ import annotations

import asyncio
import time

from pydantic import Field, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.dns.plan import normalise_value
from activities.dns.reader import DnsQuery, NameserverAnswer, ask_nameserver, discover_nameservers
from activities.errors import ErrorType
from runbooks.model import Nameserver, StrictModel

# A query never waits less than this, even when the budget is nearly spent: an answer must be possible.
_MIN_QUERY_SECONDS = 0.05


class PropagationRequest(StrictModel):
    query: DnsQuery
    expected: list[str] = Field(description="the new values, as the plan's desired state lists them")
    timeout_seconds: float = Field(gt=0, le=86400, description="the runbook's propagation_budget")
    poll_interval_seconds: float = Field(default=0.2, gt=0, le=60)


class NameserverConvergence(StrictModel):
    name: str
    address: str
    port: int
    converged: bool
    converged_after_ms: float | None = Field(description="since the wait began (first attempt)")
    last_values: list[str]
    last_error: str | None

    def describe(self, budget: float) -> str:
        where = f"{self.name} ({self.address}:{self.port})"
        if self.last_error is not None:
            return f"{where} did not answer: {self.last_error}"
        answers = ", ".join(self.last_values) or "nothing (no such record)"
        return f"{where} still answers {answers} after {budget:g}s"


class PropagationResult(StrictModel):
    converged: bool
    elapsed_ms: float
    nameservers: list[NameserverConvergence]

    @property
    def lagging(self) -> list[NameserverConvergence]:
        return [nameserver for nameserver in self.nameservers if not nameserver.converged]


class PropagationProgress(StrictModel):
    """The heartbeat: enough for a retry to continue the same wait."""

    started_at_unix: float
    result: PropagationResult


@activity.defn(name="dns_verify_propagation")
async def verify_propagation(req: PropagationRequest) -> PropagationResult:
    """Poll the nameservers not yet converged until all serve ``expected`` or the budget is spent."""
    query = req.query
    expected = sorted(normalise_value(query.type, value) for value in req.expected)
    resumed = _resumed()
    started_at_unix = resumed.started_at_unix if resumed is not None else time.time()
    started = time.monotonic() - max(time.time() - started_at_unix, 0.0)

    nameservers = query.nameservers or await discover_nameservers(query)
    previous = {_key(ns): ns for ns in resumed.result.nameservers} if resumed is not None else {}
    status = [previous.get(_key(ns)) or _unknown(ns) for ns in nameservers]

    while True:
        pending = [index for index, state in enumerate(status) if not state.converged]
        remaining = req.timeout_seconds - (time.monotonic() - started)
        # Never past the budget: the last round asks only for what time remains.
        query_timeout = round(max(min(query.timeout_seconds, remaining), _MIN_QUERY_SECONDS), 2)
        per_query = query.model_copy(update={"timeout_seconds": query_timeout})
        round_started_ms = _since(started)
        answers = await asyncio.gather(*(ask_nameserver(per_query, nameservers[i]) for i in pending))
        for index, answer in zip(pending, answers, strict=True):
            status[index] = _observed(answer, expected, round_started_ms)

        converged = all(state.converged for state in status)
        result = PropagationResult(converged=converged, elapsed_ms=_since(started), nameservers=status)
        activity.heartbeat(
            PropagationProgress(started_at_unix=started_at_unix, result=result).model_dump(mode="json")
        )
        if converged:
            return result
        remaining = req.timeout_seconds - (time.monotonic() - started)
        if remaining <= 0:
            raise _timed_out(req, result)
        await asyncio.sleep(min(req.poll_interval_seconds, remaining))


def _resumed() -> PropagationProgress | None:
    """The last heartbeat of a previous attempt, if there was one and it is readable."""
    details = activity.info().heartbeat_details
    if not details:
        return None
    try:
        return PropagationProgress.model_validate(details[-1])
    except ValidationError:
        activity.logger.warning("Ignoring unreadable heartbeat details of a previous attempt")
        return None


def _key(nameserver: Nameserver | NameserverConvergence) -> tuple[str, str, int]:
    return nameserver.name, nameserver.address, nameserver.port


def _unknown(nameserver: Nameserver) -> NameserverConvergence:
    return NameserverConvergence(
        name=nameserver.name,
        address=nameserver.address,
        port=nameserver.port,
        converged=False,
        converged_after_ms=None,
        last_values=[],
        last_error=None,
    )


def _observed(
    answer: NameserverAnswer, expected: list[str], round_started_ms: float
) -> NameserverConvergence:
    converged = answer.error is None and answer.rcode == "NOERROR" and answer.values == expected
    return NameserverConvergence(
        name=answer.name,
        address=answer.address,
        port=answer.port,
        converged=converged,
        converged_after_ms=round(round_started_ms + answer.latency_ms, 3) if converged else None,
        last_values=answer.values,
        last_error=answer.error,
    )


def _timed_out(req: PropagationRequest, result: PropagationResult) -> ApplicationError:
    query = req.query
    lagging = "; ".join(nameserver.describe(req.timeout_seconds) for nameserver in result.lagging)
    return ApplicationError(
        f"{query.record} {query.type} did not reach every authoritative nameserver within "
        f"{req.timeout_seconds:g}s (expected {', '.join(req.expected)}): {lagging}",
        result.model_dump(mode="json"),
        type=ErrorType.PROPAGATION_TIMEOUT,
        non_retryable=True,
    )


def _since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)
