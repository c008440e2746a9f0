"""The contract every traffic manager implements: read and set each region's percent of the traffic.

Weights are percents, 0..100 summing to 100 over the runbook's traffic regions. A manager reads back what it
serves as percents (whatever raw weights it holds: HAProxy's 1/1 reads as 50/50) and writes only what
differs, so a retried write does nothing twice. Failures are ``activities.errors.TrafficManagerUnreachable``
(retry may help), ``TrafficManagerRefused`` (it will not) and ``ConcurrentChange`` (another writer changed
the weights between read and write); the activities map them to ``ApplicationError`` types.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import Field

from runbooks.model import StrictModel


class TrafficWeightsState(StrictModel):
    weights: dict[str, int] = Field(description="region -> percent of the traffic it gets now")
    raw: dict[str, str] = Field(description="region -> the weight as the traffic manager reports it")

    def describe(self) -> str:
        return ", ".join(f"{region} {weight}%" for region, weight in sorted(self.weights.items()))


class TrafficManager(Protocol):
    """Per-region weights of one traffic manager (an HAProxy backend, one weighted DNS record)."""

    @property
    def name(self) -> str:
        """For logs and messages: ``haproxy``, ``route53 app.example.com.``."""
        ...

    async def read(self) -> TrafficWeightsState:
        """Each region of the traffic section with its percent, as the manager serves it now."""
        ...

    async def write(self, desired: dict[str, int]) -> bool:
        """Make the manager serve ``desired`` (every traffic region -> percent); False if it already did.

        The manager never lets the total drop to 0 on the way (HAProxy would answer 503 to everyone).
        """
        ...
