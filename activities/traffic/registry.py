"""The one module that imports traffic backends: the runbook's ``traffic.provider`` picks the manager."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

from activities.errors import ErrorType
from activities.traffic.provider import TrafficManager
from runbooks.model import DnsConfig, DnsWeightedTraffic, HaproxyTraffic, TrafficConfig


def traffic_manager_for(traffic: TrafficConfig, dns: DnsConfig | None) -> TrafficManager:
    """``dns`` is the runbook's DNS section, which ``dns-weighted`` moves the weights of."""
    if isinstance(traffic, HaproxyTraffic):
        from activities.traffic.haproxy import HaproxyWeights

        return HaproxyWeights(traffic)
    if isinstance(traffic, DnsWeightedTraffic):
        from activities.traffic.dns_weighted import DnsWeights

        return DnsWeights(traffic, dns)
    raise ApplicationError(
        f"traffic provider {traffic.provider!r} is not supported by this worker",
        type=ErrorType.UNSUPPORTED_PROVIDER,
        non_retryable=True,
    )
