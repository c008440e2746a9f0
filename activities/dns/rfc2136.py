"""RFC 2136 dynamic updates signed with TSIG: BIND, Knot, PowerDNS, Windows DNS.

The primary named in the runbook is both the source of truth for reads and the target of writes, so a plan
is computed from exactly what the update's prerequisites will be checked against. The TSIG secret is
resolved from its reference only when an update is signed, and never appears in a message.
"""

from __future__ import annotations

import binascii

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataset
import dns.tsig
import dns.update
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.cloud.preflight import PreflightCheck, PreflightReport
from activities.dns.plan import DnsChangePlan, DnsRecordState
from activities.dns.reader import DnsQuery, RecordType, ask_nameserver
from activities.errors import ConcurrentChange, ErrorType
from activities.secrets import resolve_secret
from runbooks.model import Rfc2136Dns

DEFAULT_TIMEOUT_SECONDS = 5.0
# The server checked the prerequisites and found the record no longer as planned (RFC 2136 section 2.4).
_PREREQUISITE_FAILED = frozenset(
    {dns.rcode.NXRRSET, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN, dns.rcode.YXDOMAIN}
)
# The server would not accept this key for this zone: retrying cannot help, a person must fix the key.
_REFUSED = frozenset({dns.rcode.REFUSED, dns.rcode.NOTAUTH, dns.rcode.BADKEY, dns.rcode.BADSIG})
_TSIG_ERRORS: dict[type[dns.tsig.PeerError], str] = {
    dns.tsig.PeerBadKey: "BADKEY, the server does not know this key name and algorithm",
    dns.tsig.PeerBadSignature: "BADSIG, the secret does not match the server's",
    dns.tsig.PeerBadTime: "BADTIME, the worker's clock and the server's differ by more than the fudge",
    dns.tsig.PeerBadTruncation: "BADTRUNC",
}


class Rfc2136Provider:
    name = "rfc2136"
    supports_weights = False
    reports_change_status = False

    def __init__(self, config: Rfc2136Dns, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.config = config
        self.timeout_seconds = timeout_seconds

    async def change_status(self, change_id: str) -> tuple[bool, str]:
        raise ApplicationError(
            "an RFC2136 update has no change status: its primary applied it when it answered NOERROR; "
            "propagation to the secondaries is verified on every nameserver instead",
            type=ErrorType.NOT_APPLICABLE,
            non_retryable=True,
        )

    def preflight(self, weighted: dict[str, str] | None = None) -> PreflightReport:
        """The TSIG key, accepted by the primary for a signed read of the zone's SOA.

        A read proves the key name, algorithm and secret (and the clocks) match the server's; only an update
        proves the update policy, which no check may make. Readiness runs this; a failover's plan reads the
        primary anyway and its update reports a refused key with the same words.
        """
        tsig = self.config.tsig
        name = f"TSIG key {tsig.name} ({tsig.algorithm}) accepted by {self.server_label}"
        try:
            query = dns.message.make_query(self.config.zone, "SOA")
            query.use_tsig(keyring=self._key())
            response = dns.query.tcp(
                query, self.config.server.address, timeout=self.timeout_seconds, port=self.config.server.port
            )
        except ApplicationError as error:
            return PreflightReport.of(self.name, [PreflightCheck(name=name, ok=False, detail=error.message)])
        except dns.tsig.PeerError as error:
            detail = (
                f"refused: {_TSIG_ERRORS.get(type(error), 'TSIG error')}; check the secret at {tsig.secret}"
            )
            return PreflightReport.of(self.name, [PreflightCheck(name=name, ok=False, detail=detail)])
        except (dns.exception.DNSException, OSError) as error:
            detail = f"could not ask: {error}"
            return PreflightReport.of(self.name, [PreflightCheck(name=name, ok=None, detail=detail)])
        rcode = dns.rcode.to_text(response.rcode())
        ok = response.rcode() == dns.rcode.NOERROR
        detail = (
            "a signed read of the zone's SOA was answered" if ok else f"the signed read was answered {rcode}"
        )
        return PreflightReport.of(self.name, [PreflightCheck(name=name, ok=ok, detail=detail)])

    @property
    def server_label(self) -> str:
        server = self.config.server
        return f"{server.name} ({server.address}:{server.port})"

    async def read(self, record: str, type: RecordType) -> DnsRecordState:
        query = DnsQuery(
            record=record,
            type=type,
            zone=self.config.zone,
            nameservers=[self.config.server],
            timeout_seconds=self.timeout_seconds,
        )
        answer = await ask_nameserver(query, self.config.server)
        if answer.error is not None:
            raise ApplicationError(
                f"the primary {self.server_label} did not answer for {record} {type}: {answer.error}",
                type=ErrorType.DNS_PROVIDER_UNAVAILABLE,
            )
        if answer.rcode not in ("NOERROR", "NXDOMAIN") or not answer.authoritative:
            authority = "authoritatively" if answer.authoritative else "without authority"
            raise ApplicationError(
                f"the primary {self.server_label} answered {answer.rcode} {authority} for {record} {type}; "
                f"check that it serves the zone {self.config.zone}",
                type=ErrorType.DNS_PROVIDER_UNAVAILABLE,
            )
        return DnsRecordState(record=record, type=type, ttl=answer.ttl, values=answer.values)

    async def apply(self, plan: DnsChangePlan) -> str | None:
        """One signed update: require exactly ``plan.current``, then replace it by ``plan.desired``."""
        update = dns.update.UpdateMessage(self.config.zone, keyring=self._key())
        name = dns.name.from_text(plan.record)
        if plan.current.values:
            # TTL 0 and rdata: the "RRset exists (value dependent)" prerequisite.
            update.present(name, dns.rdataset.from_text_list("IN", plan.type, 0, plan.current.values))
        else:
            update.absent(name, plan.type)
        update.delete(name, plan.type)
        update.add(name, plan.desired.ttl or self.config.ttl, plan.type, *plan.desired.values)

        server = self.config.server
        key_name = self.config.tsig.name
        try:
            response = await dns.asyncquery.tcp(
                update, server.address, timeout=self.timeout_seconds, port=server.port
            )
        except dns.tsig.PeerError as error:
            raise self._refused(plan, _TSIG_ERRORS.get(type(error), "TSIG error")) from None
        except dns.exception.Timeout:
            raise ApplicationError(
                f"the primary {self.server_label} did not answer the update of {plan.record} within "
                f"{self.timeout_seconds:g}s; it may or may not have been applied, a retry re-reads first",
                type=ErrorType.DNS_PROVIDER_UNAVAILABLE,
            ) from None
        except OSError as error:
            raise ApplicationError(
                f"cannot send the update of {plan.record} to {self.server_label}: {error.strerror or error}",
                type=ErrorType.DNS_PROVIDER_UNAVAILABLE,
            ) from None
        except dns.exception.DNSException as error:
            raise ApplicationError(
                f"unusable response from {self.server_label} to the update of {plan.record}: {error}",
                type=ErrorType.DNS_UPDATE_FAILED,
            ) from None

        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            activity.logger.info("%s updated on %s with key %s", plan.record, self.server_label, key_name)
            return None
        if rcode in _PREREQUISITE_FAILED:
            raise ConcurrentChange(f"{self.server_label} answered {dns.rcode.to_text(rcode)}")
        if rcode in _REFUSED:
            raise self._refused(plan, dns.rcode.to_text(rcode))
        raise ApplicationError(
            f"{self.server_label} answered {dns.rcode.to_text(rcode)} to the update of {plan.record}",
            type=ErrorType.DNS_UPDATE_FAILED,
            non_retryable=rcode != dns.rcode.SERVFAIL,
        )

    def _key(self) -> dns.tsig.Key:
        tsig = self.config.tsig
        secret = resolve_secret(tsig.secret)
        try:
            return dns.tsig.Key(tsig.name, secret, tsig.algorithm)
        except (binascii.Error, ValueError):
            raise ApplicationError(
                f"the TSIG secret {tsig.secret} for key {tsig.name} is not valid base64",
                type=ErrorType.SECRET_UNAVAILABLE,
                non_retryable=True,
            ) from None

    def _refused(self, plan: DnsChangePlan, reason: str) -> ApplicationError:
        tsig = self.config.tsig
        return ApplicationError(
            f"{self.server_label} refused the update of {plan.record} signed with TSIG key {tsig.name} "
            f"({tsig.algorithm}): {reason}. Check the key name, algorithm and the secret at {tsig.secret}, "
            f"and that the server's update policy for {self.config.zone} allows this key",
            type=ErrorType.DNS_UPDATE_REFUSED,
            non_retryable=True,
        )
