"""The one module that imports DNS backends: the runbook's ``dns.provider`` picks the implementation.

Backends are imported when first asked for, so a worker that serves only RFC2136 never loads boto3 or the
Google client, and ``drflow --help`` stays fast. Adding a provider is one branch here (see
``docs/architecture.md``, "How to add a provider").
"""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

from activities.dns.provider import DnsProvider, WeightedDnsProvider
from activities.errors import ErrorType
from runbooks.model import CloudDns, DnsConfig, Rfc2136Dns, Route53Dns


def dns_provider_for(dns: DnsConfig) -> DnsProvider:
    if isinstance(dns, Rfc2136Dns):
        from activities.dns.rfc2136 import Rfc2136Provider

        return Rfc2136Provider(dns)
    if isinstance(dns, Route53Dns):
        from activities.dns.route53 import Route53Provider

        return Route53Provider(dns)
    if isinstance(dns, CloudDns):
        from activities.dns.clouddns import CloudDnsProvider

        return CloudDnsProvider(dns)
    raise ApplicationError(
        f"DNS provider {dns.provider!r} is not supported",
        type=ErrorType.DNS_PROVIDER_NOT_SUPPORTED,
        non_retryable=True,
    )


def weights_provider_for(dns: DnsConfig) -> WeightedDnsProvider:
    if isinstance(dns, Route53Dns):
        from activities.dns.route53 import Route53Provider

        return Route53Provider(dns)
    if isinstance(dns, CloudDns):
        from activities.dns.clouddns import CloudDnsProvider

        return CloudDnsProvider(dns)
    raise ApplicationError(
        f"DNS provider {dns.provider!r} has no traffic weights; use route53 or clouddns (HAProxy comes with "
        "failback)",
        type=ErrorType.DNS_PROVIDER_NOT_SUPPORTED,
        non_retryable=True,
    )
