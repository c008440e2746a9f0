"""``dns-weighted`` traffic: the DNS provider's weighted records as the traffic manager.

Percents are the provider's weights as they are (0..100 fits Route53's 0..255 and Cloud DNS's any); a
region's percent is read back as its share of the total, so weights another writer set (9/1) read as 90/10.
A write is planned from the served weights and applied only while they still hold (``WeightPlan``), like
any DNS change.
"""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

from activities.dns import registry
from activities.dns.plan import normalise_value
from activities.dns.provider import WeightedDnsProvider
from activities.dns.weights import TrafficState, WeightPlan, desired_weights
from activities.errors import ConcurrentChange, ErrorType
from activities.traffic.provider import TrafficWeightsState
from runbooks.model import DnsConfig, DnsWeightedTraffic


class DnsWeights:
    def __init__(self, traffic: DnsWeightedTraffic, dns: DnsConfig | None) -> None:
        if dns is None:
            raise ApplicationError(
                f"traffic provider {traffic.provider!r} moves the DNS provider's weighted records, but the "
                "request carries no dns section (a workflow older than dns-weighted?)",
                type=ErrorType.INVALID_TRAFFIC_WEIGHTS,
                non_retryable=True,
            )
        self.traffic = traffic
        self.dns = dns
        self.provider: WeightedDnsProvider = registry.weights_provider_for(dns)
        self.addresses = dict(traffic.servers)

    @property
    def name(self) -> str:
        return f"{self.provider.name} {self.dns.record}"

    async def read(self) -> TrafficWeightsState:
        return self._state(await self._served())

    async def write(self, desired: dict[str, int]) -> bool:
        current = await self._served()
        plan = WeightPlan.build(
            self.provider.name,
            current,
            desired_weights(current, desired, self.addresses, self.dns.ttl),
        )
        if plan.no_op:
            return False
        try:
            await self.provider.apply_weights(plan, self.addresses)
        except ConcurrentChange as err:
            # Planned and applied within this attempt: a retry plans again from what is served then.
            raise ConcurrentChange(
                f"{self.dns.record} changed while its weights were being set ({err})"
            ) from None
        return True

    async def _served(self) -> TrafficState:
        return await self.provider.read_weights(self.dns.record, self.dns.type, self.addresses)

    def _state(self, state: TrafficState) -> TrafficWeightsState:
        """Each region of the traffic section as a percent; a region without a weighted entry gets 0 (a plain
        record still in place answers one region only: that region gets 100)."""
        servers = self.traffic.servers
        shares = {share.region: share for share in state.shares}
        if shares:
            current = {region: shares[region].weight if region in shares else 0 for region in servers}
            raw = {
                region: f"weight {shares[region].weight}" if region in shares else "no weighted entry"
                for region in servers
            }
        else:
            plain = set(state.plain_values)
            current = {
                region: 100 if plain and normalise_value(state.type, address) in plain else 0
                for region, address in servers.items()
            }
            raw = {region: "plain record" if current[region] else "no weighted entry" for region in servers}
        total = sum(current.values())
        return TrafficWeightsState(
            weights={region: round(100 * w / total) if total else 0 for region, w in current.items()}, raw=raw
        )
