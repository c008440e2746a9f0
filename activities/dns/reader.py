"""Read one record from every authoritative nameserver directly, to see what each one serves right now.

Resolvers cache for the TTL and hide which nameserver lags, so propagation is judged on the authoritative
servers themselves, with recursion off. An unreachable nameserver is a finding, not a failure of the activity:
the workflow decides whether the answers that did arrive are enough.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import ErrorType
from activities.heartbeat import beating_async
from runbooks.model import Nameserver, StrictModel, drop_unset

RecordType = Literal["A", "AAAA", "CNAME"]
_DISCOVERY_LIFETIME_MIN = 5.0


class DnsQuery(StrictModel):
    record: str = Field(description="fully qualified, e.g. app.example.com.")
    type: RecordType = "A"
    zone: str = Field(description="the zone apex; its NS records are used when no nameservers are given")
    nameservers: list[Nameserver] = Field(
        default_factory=list, description="authoritative nameservers to ask; empty means discover them"
    )
    timeout_seconds: float = Field(default=2.0, gt=0, le=60, description="per nameserver")
    resolver: Nameserver | None = Field(
        default=None, description="recursive resolver used only for discovery; default the system resolver"
    )
    owners: bool = Field(default=False, description="readiness: also look for another system's ownership")

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        return drop_unset(handler(self), "owners")

    @field_validator("record", "zone")
    @classmethod
    def _fqdn(cls, value: str) -> str:
        if not value.endswith("."):
            raise ValueError(f"{value!r} must be fully qualified, ending with a dot: {value}.")
        return value.lower()


class NameserverAnswer(StrictModel):
    name: str
    address: str
    port: int
    values: list[str] = Field(description="sorted; addresses for A/AAAA, the target for CNAME")
    ttl: int | None = None
    rcode: str | None = Field(description="NOERROR, NXDOMAIN, REFUSED, ...; None when nothing came back")
    authoritative: bool = False
    latency_ms: float
    error: str | None = Field(default=None, description="why there is no answer: timeout, refused, ...")

    @property
    def responded(self) -> bool:
        return self.error is None


class RecordOwner(StrictModel):
    """Another system's claim on the record, found in the zone itself."""

    system: Literal["external-dns"]
    txt_name: str = Field(description="where the claim was found")
    owner: str | None = Field(default=None, description="external-dns/owner: the instance's --txt-owner-id")
    resource: str | None = Field(default=None, description="external-dns/resource: what it comes from")


class DnsReadout(StrictModel):
    record: str
    type: RecordType
    answers: list[NameserverAnswer]
    discovered: bool = Field(description="the nameservers came from the zone's NS records, not the runbook")
    owners: list[RecordOwner] | None = Field(default=None, description="when asked; None: not looked for")

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        return handler(self) if self.owners is not None else drop_unset(handler(self), "owners")

    @property
    def responding(self) -> list[NameserverAnswer]:
        return [answer for answer in self.answers if answer.responded]

    @property
    def unreachable(self) -> list[NameserverAnswer]:
        return [answer for answer in self.answers if not answer.responded]

    @property
    def distinct_values(self) -> set[tuple[str, ...]]:
        """What the responding nameservers serve; more than one element means propagation is incomplete."""
        return {tuple(answer.values) for answer in self.responding}

    @property
    def all_agree(self) -> bool:
        """At least one nameserver responded, and every one that did gave the same rcode and values."""
        outcomes = {(answer.rcode, tuple(answer.values)) for answer in self.responding}
        return len(outcomes) == 1


@activity.defn(name="read_dns_record")
async def read_dns_record(query: DnsQuery) -> DnsReadout:
    """Ask every nameserver at once; each answer carries its own error rather than failing the read."""
    async with beating_async():
        discovered = not query.nameservers
        nameservers = await discover_nameservers(query) if discovered else query.nameservers
        answers = await asyncio.gather(*(ask_nameserver(query, nameserver) for nameserver in nameservers))
        owners = await record_owners(query, nameservers, list(answers)) if query.owners else None
        return DnsReadout(
            record=query.record, type=query.type, answers=list(answers), discovered=discovered, owners=owners
        )


async def record_owners(
    query: DnsQuery, nameservers: list[Nameserver], answers: list[NameserverAnswer]
) -> list[RecordOwner]:
    """external-dns's TXT registry records for this name: at the name itself (its old format) and at
    ``<type>-<name>`` (its current one). A record another controller owns may be put back after the
    failover changes it. Asked of the first nameserver that answered the record; none answered: none."""
    server = next((ns for ns, a in zip(nameservers, answers, strict=True) if a.error is None), None)
    if server is None:
        return []
    first, _, rest = query.record.partition(".")
    names = [query.record, f"{query.type.lower()}-{first}.{rest}"]
    found: list[RecordOwner] = []
    for name in names:
        request = dns.message.make_query(name, "TXT")
        request.flags &= ~dns.flags.RD
        try:
            response = await dns.asyncquery.udp(
                request, server.address, timeout=query.timeout_seconds, port=server.port
            )
        except (dns.exception.DNSException, OSError):
            continue
        for rrset in response.answer:
            if rrset.rdtype != dns.rdatatype.TXT:
                continue
            for rdata in rrset:
                text = b"".join(rdata.strings).decode(errors="replace")
                owner = _external_dns(name, text)
                if owner is not None:
                    found.append(owner)
    return found


def _external_dns(name: str, text: str) -> RecordOwner | None:
    """``heritage=external-dns,external-dns/owner=default,external-dns/resource=service/ns/app``."""
    fields = dict(part.partition("=")[::2] for part in text.strip('"').split(","))
    if fields.get("heritage") != "external-dns":
        return None
    return RecordOwner(
        system="external-dns", txt_name=name, owner=fields.get("external-dns/owner") or None,
        resource=fields.get("external-dns/resource") or None,
    )  # fmt: skip


async def ask_nameserver(query: DnsQuery, nameserver: Nameserver) -> NameserverAnswer:
    """One non-recursive query, UDP then TCP on truncation; a failure is an answer carrying its error."""
    request = dns.message.make_query(query.record, query.type)
    request.flags &= ~dns.flags.RD
    timeout = query.timeout_seconds
    started = time.monotonic()

    def failed(error: str) -> NameserverAnswer:
        return NameserverAnswer(
            name=nameserver.name,
            address=nameserver.address,
            port=nameserver.port,
            values=[],
            rcode=None,
            latency_ms=_elapsed_ms(started),
            error=error,
        )

    try:
        try:
            response = await dns.asyncquery.udp(
                request, nameserver.address, timeout=timeout, port=nameserver.port, raise_on_truncation=True
            )
        except dns.message.Truncated:
            remaining = max(timeout - (time.monotonic() - started), 0.001)
            response = await dns.asyncquery.tcp(
                request, nameserver.address, timeout=remaining, port=nameserver.port
            )
    except dns.exception.Timeout:
        return failed(f"timeout after {timeout}s")
    except ConnectionRefusedError:
        return failed("connection refused (nothing listens on that port)")
    except OSError as error:
        return failed(f"network error: {error.strerror or error}")
    except dns.exception.DNSException as error:
        return failed(f"unusable response: {error}")

    values, ttl = _values(response, query.record, query.type)
    return NameserverAnswer(
        name=nameserver.name,
        address=nameserver.address,
        port=nameserver.port,
        values=values,
        ttl=ttl,
        rcode=dns.rcode.to_text(response.rcode()),
        authoritative=bool(response.flags & dns.flags.AA),
        latency_ms=_elapsed_ms(started),
    )


def _values(
    response: dns.message.Message, record: str, record_type: RecordType
) -> tuple[list[str], int | None]:
    """Only the RRset of the name and type asked: a CNAME answered to an A query is not an address."""
    qname = dns.name.from_text(record)
    rdtype = dns.rdatatype.from_text(record_type)
    for rrset in response.answer:
        if rrset.name == qname and rrset.rdtype == rdtype:
            return sorted(_value(rdata) for rdata in rrset), int(rrset.ttl)
    return [], None


def _value(rdata: dns.rdata.Rdata) -> str:
    if isinstance(rdata, CNAME):
        return rdata.target.to_text().lower()
    if isinstance(rdata, A | AAAA):
        return str(rdata.address)
    return rdata.to_text()


async def discover_nameservers(query: DnsQuery) -> list[Nameserver]:
    """The zone's NS names and each one's addresses, on port 53, through the configured or system resolver."""
    try:
        resolver = _resolver(query)
        ns_answer = await resolver.resolve(query.zone, "NS")
    except dns.exception.DNSException as error:
        raise _discovery_failed(query, f"NS lookup failed: {_describe(error)}") from error

    names = sorted({str(rdata.target.to_text()).lower() for rdata in ns_answer})
    found: list[Nameserver] = []
    problems: list[str] = []
    resolved = await asyncio.gather(*(_addresses(resolver, name) for name in names))
    for name, addresses in zip(names, resolved, strict=True):
        if isinstance(addresses, str):
            problems.append(f"{name}: {addresses}")
            continue
        found.extend(Nameserver(name=name, address=address, port=53) for address in addresses)
    if not found:
        raise _discovery_failed(query, "no NS name resolved to an address (" + "; ".join(problems) + ")")
    if problems:
        activity.logger.warning("Some nameservers of %s have no address: %s", query.zone, "; ".join(problems))
    return found


async def _addresses(resolver: dns.asyncresolver.Resolver, name: str) -> list[str] | str:
    """The name's A and AAAA addresses, or why there are none."""
    addresses: list[str] = []
    reasons: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(name, rdtype, raise_on_no_answer=False)
        except dns.exception.DNSException as error:
            reasons.append(f"{rdtype} {_describe(error)}")
            continue
        addresses.extend(str(rdata.address) for rdata in answer)
    return sorted(addresses) if addresses else ", ".join(reasons) or "no A or AAAA records"


def _resolver(query: DnsQuery) -> dns.asyncresolver.Resolver:
    configured = query.resolver is not None
    resolver = dns.asyncresolver.Resolver(configure=not configured)
    if query.resolver is not None:
        resolver.nameservers = [query.resolver.address]
        resolver.port = query.resolver.port
    resolver.lifetime = max(_DISCOVERY_LIFETIME_MIN, 2 * query.timeout_seconds)
    return resolver


def _discovery_failed(query: DnsQuery, reason: str) -> ApplicationError:
    return ApplicationError(
        f"Could not discover the authoritative nameservers of {query.zone}: {reason}. "
        "Check the zone name and that this worker's resolver can see it, or list the nameservers under "
        "dns.nameservers in the runbook.",
        type=ErrorType.DNS_DISCOVERY_FAILED,
        non_retryable=False,
    )


def _describe(error: dns.exception.DNSException) -> str:
    if isinstance(error, dns.resolver.NXDOMAIN):
        return "the name does not exist (NXDOMAIN)"
    if isinstance(error, dns.resolver.NoAnswer):
        return "no records of that type"
    if isinstance(error, dns.resolver.LifetimeTimeout):
        return "the resolver did not answer in time"
    if isinstance(error, dns.resolver.NoResolverConfiguration):
        return "no resolver is configured on this worker (/etc/resolv.conf)"
    return str(error) or type(error).__name__


def _elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)
