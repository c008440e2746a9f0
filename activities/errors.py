"""Error types that cross the activity boundary; the workflow and the CLI key on these constants."""

from __future__ import annotations


class ErrorType:
    UNKNOWN_SERVICE = "UnknownService"
    INVALID_RUNBOOK = "InvalidRunbook"
    DNS_DISCOVERY_FAILED = "DnsDiscoveryFailed"
