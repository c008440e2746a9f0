"""The contract every DNS backend implements, with the capabilities a workflow may ask about.

Backends import this module and the plan types; nothing here imports a backend (``registry.py`` does).
"""

from __future__ import annotations

from typing import Protocol

from activities.cloud.preflight import PreflightReport
from activities.dns.plan import DnsChangePlan, DnsRecordState
from activities.dns.reader import RecordType
from activities.dns.weights import TrafficState, WeightPlan


class DnsProvider(Protocol):
    """One DNS service: what it serves for a record, and one conditional write of a plan."""

    @property
    def name(self) -> str: ...

    @property
    def supports_weights(self) -> bool:
        """Weighted entries per region can be read and set (``WeightedDnsProvider``)."""
        ...

    @property
    def reports_change_status(self) -> bool:
        """``apply`` returns a change id whose status can be polled (Route53 INSYNC, Cloud DNS done)."""
        ...

    async def read(self, record: str, type: RecordType) -> DnsRecordState:
        """The RRset as the provider itself serves it, not through a resolver's cache."""
        ...

    async def apply(self, plan: DnsChangePlan) -> str | None:
        """Replace ``plan.current`` by ``plan.desired`` only if the record still holds ``plan.current``.

        Raises ``activities.errors.ConcurrentChange`` when the provider refused for that reason; returns the
        change id.
        """
        ...

    async def change_status(self, change_id: str) -> tuple[bool, str]:
        """(live on every server of the provider, the provider's own status word).

        Only called when ``reports_change_status``; other providers raise ``NotApplicableToProvider``.
        """
        ...

    def preflight(self, weighted: dict[str, str] | None = None) -> PreflightReport:
        """Credentials, zone and permissions, checked without changing anything; findings, never raises.

        ``weighted``: region -> address of its weighted entry, when the record is read as weighted entries.
        """
        ...


class WeightedDnsProvider(Protocol):
    """Moves traffic shares between regions' weighted entries of one record (``supports_weights``)."""

    @property
    def name(self) -> str: ...

    async def read_weights(self, record: str, type: RecordType, addresses: dict[str, str]) -> TrafficState:
        """Each region's entry (by region name or address) with its weight, as the provider serves it."""
        ...

    async def apply_weights(self, plan: WeightPlan, addresses: dict[str, str]) -> str | None:
        """Write ``plan.desired`` only if the provider still serves ``plan.current``; returns the change id.

        Raises ``activities.errors.ConcurrentChange`` when the provider refused for that reason.
        """
        ...
