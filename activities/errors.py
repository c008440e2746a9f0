"""Error types that cross the activity boundary; the workflow and the CLI key on these constants."""

from __future__ import annotations


class ErrorType:
    UNKNOWN_SERVICE = "UnknownService"
    INVALID_RUNBOOK = "InvalidRunbook"
    DNS_DISCOVERY_FAILED = "DnsDiscoveryFailed"
    DNS_PROVIDER_NOT_SUPPORTED = "DnsProviderNotSupported"
    DNS_PROVIDER_UNAVAILABLE = "DnsProviderUnavailable"
    DNS_UPDATE_REFUSED = "DnsUpdateRefused"
    DNS_UPDATE_FAILED = "DnsUpdateFailed"
    INVALID_DNS_TARGET = "InvalidDnsTarget"
    PLAN_MISMATCH = "PlanMismatch"
    PLAN_CHECKSUM_MISMATCH = "PlanChecksumMismatch"
    PLAN_STALE = "PlanStale"
    PROPAGATION_TIMEOUT = "PropagationTimeout"
    DATABASE_UNREACHABLE = "DatabaseUnreachable"
    DATABASE_TOOLS_MISSING = "DatabaseToolsMissing"
    FENCE_FAILED = "FenceFailed"
    PROMOTION_FAILED = "PromotionFailed"
    UNFENCE_FAILED = "UnfenceFailed"
    UNSUPPORTED_PROVIDER = "UnsupportedProvider"
    HEALTH_VALIDATION_FAILED = "HealthValidationFailed"
    # Cloud providers (Route53, Cloud DNS, RDS, Aurora): credentials, permissions, shapes an operator fixes.
    CLOUD_CREDENTIALS = "CloudCredentialsInvalid"
    CLOUD_PERMISSION_DENIED = "CloudPermissionDenied"
    CLOUD_RESOURCE_NOT_FOUND = "CloudResourceNotFound"
    CLOUD_THROTTLED = "CloudThrottled"
    CLOUD_UNAVAILABLE = "CloudUnavailable"
    UNSUPPORTED_DNS_RECORD = "UnsupportedDnsRecord"
    INVALID_TRAFFIC_WEIGHTS = "InvalidTrafficWeights"
    NOT_APPLICABLE = "NotApplicableToProvider"
    DATABASE_STATE_CONFLICT = "DatabaseStateConflict"
    # Canary failback: traffic weights and re-syncing the old primary as a standby.
    TRAFFIC_MANAGER_UNREACHABLE = "TrafficManagerUnreachable"
    TRAFFIC_WEIGHTS_REFUSED = "TrafficWeightsRefused"
    STANDBY_RESYNC_FAILED = "StandbyResyncFailed"
