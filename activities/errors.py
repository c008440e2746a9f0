"""Every error drflow's activities and workflows raise across a boundary, in one place.

Two kinds live here (the model is httpx's ``_exceptions.py``):

* ``ApplicationError.type`` strings: what crosses the activity boundary into a workflow history, where the
  workflow, the CLI and Slack key on them. They are part of the history format: a stored history replays only
  while these strings stay as they are, so a constant may be added, never renamed or re-valued.
* Exceptions raised *inside* the activity layer between a backend and the activity that called it. A backend
  raises one of them; the activity maps it to an ``ApplicationError`` with a type above. Vendor errors
  (botocore, Google API, psycopg, dnspython, HAProxy's text answers) are mapped at the backend boundary
  (``activities.cloud.aws.aws_error``, the DNS and database backends), never above it.

    DrflowError
    ├── ConcurrentChange            a conditional write found the record changed since it was planned
    ├── TrafficManagerError
    │   ├── TrafficManagerUnreachable   the traffic manager's control API does not answer (retry may help)
    │   └── TrafficManagerRefused       it refused a command or answered nonsense (retry will not help)
    └── ArchiveRefused              the archive store refused to write (an archive exists and differs, ...)

``ErrorType`` is a plain class of string constants rather than an ``Enum`` because ``ApplicationError`` takes
and returns ``str`` types, and histories recorded before an enum would compare equal only by value anyway.
"""

from __future__ import annotations


class ErrorType:
    """``ApplicationError.type`` values that the workflows, the CLI or an operator act on."""

    # --- runbooks and requests
    UNKNOWN_SERVICE = "UnknownService"
    """No runbook names the service: a typo, or the runbooks directory is not the one the worker reads."""
    INVALID_RUNBOOK = "InvalidRunbook"
    """The service's runbook does not validate; the message names file, line and field."""
    INVALID_INPUT = "InvalidInput"
    """A workflow's start input does not validate (a typo in the Web UI or ``temporal workflow start``): the
    run fails at once; the message names each field path and what it allows (``activities.start_input``)."""
    INVALID_FAILOVER_REQUEST = "InvalidFailoverRequest"
    """A failover's input does not fit its runbook (unknown region, source equals target, ...)."""
    INVALID_FAILBACK_REQUEST = "InvalidFailbackRequest"
    """A failback's input does not fit its runbook or the current state of the service."""
    SECRET_UNAVAILABLE = "SecretUnavailable"
    """A secret reference (``env:``/``file:``) cannot be resolved on this worker; retried, as a mounted
    secret may appear, except for a reference of an unknown kind."""
    UNSUPPORTED_PROVIDER = "UnsupportedProvider"
    """The runbook names a database or traffic provider, or an operation, that this worker cannot run."""
    NOT_APPLICABLE = "NotApplicableToProvider"
    """The step has no meaning for this provider (a replay position on RDS, which has none)."""

    # --- DNS
    DNS_DISCOVERY_FAILED = "DnsDiscoveryFailed"
    """The authoritative nameservers of the zone could not be found (no NS answer, no addresses)."""
    DNS_PROVIDER_NOT_SUPPORTED = "DnsProviderNotSupported"
    """The runbook's DNS provider is unknown, or lacks the capability asked for (weights, change status)."""
    DNS_PROVIDER_UNAVAILABLE = "DnsProviderUnavailable"
    """The DNS provider's API or primary server does not answer; retried with backoff."""
    DNS_UPDATE_REFUSED = "DnsUpdateRefused"
    """The provider refused the change for a reason a retry cannot fix (NOTAUTH, REFUSED, a bad key)."""
    DNS_UPDATE_FAILED = "DnsUpdateFailed"
    """The provider failed the change in a way that may pass on a retry (SERVFAIL)."""
    INVALID_DNS_TARGET = "InvalidDnsTarget"
    """The target address does not fit the record type (an IPv6 address for an A record, ...)."""
    UNSUPPORTED_DNS_RECORD = "UnsupportedDnsRecord"
    """The record as served has a shape drflow will not rewrite (an alias, a geo or latency policy)."""
    PLAN_MISMATCH = "PlanMismatch"
    """The plan handed to apply belongs to another record, zone or provider than the runbook's."""
    PLAN_CHECKSUM_MISMATCH = "PlanChecksumMismatch"
    """The plan's content no longer matches the checksum that was approved: it was altered."""
    PLAN_STALE = "PlanStale"
    """What the plan was computed from no longer holds: re-plan and re-approve."""
    PROPAGATION_TIMEOUT = "PropagationTimeout"
    """Not every authoritative nameserver answered the new value within the propagation budget."""

    # --- databases
    DATABASE_UNREACHABLE = "DatabaseUnreachable"
    """A database node does not accept connections from the worker; retried."""
    DATABASE_TOOLS_MISSING = "DatabaseToolsMissing"
    """Server programs (pg_ctl, pg_rewind) are missing on the worker host."""
    DATABASE_STATE_CONFLICT = "DatabaseStateConflict"
    """The database is not in the state the step needs (the target is not a standby, two writers, ...)."""
    FENCE_FAILED = "FenceFailed"
    """The old primary could not be fenced (shut down or its connections cut)."""
    PROMOTION_FAILED = "PromotionFailed"
    """The standby could not be promoted or did not become writable in time."""
    UNFENCE_FAILED = "UnfenceFailed"
    """The compensation could not give the old primary its service back."""
    STANDBY_RESYNC_FAILED = "StandbyResyncFailed"
    """The former primary could not be re-synced as a standby of the current one (pg_rewind)."""
    HOOK_FAILED = "HookFailed"
    """A runbook command hook exited non-zero; the message has its status and redacted last lines."""
    HOOK_TIMED_OUT = "HookTimedOut"
    """A runbook command hook ran past its timeout and was killed with its process group."""

    # --- health
    HEALTH_VALIDATION_FAILED = "HealthValidationFailed"
    """The target region's health checks did not pass as users see them within the budget."""

    # --- cloud providers (Route53, Cloud DNS, RDS, Aurora): credentials, permissions, what an operator fixes
    CLOUD_CREDENTIALS = "CloudCredentialsInvalid"
    """The worker's cloud credentials are missing, expired or invalid."""
    CLOUD_PERMISSION_DENIED = "CloudPermissionDenied"
    """The credentials are valid but lack a permission the step needs (the message names it)."""
    CLOUD_RESOURCE_NOT_FOUND = "CloudResourceNotFound"
    """The zone, instance or cluster the runbook names does not exist where it says."""
    CLOUD_THROTTLED = "CloudThrottled"
    """The provider throttled past drflow's own backoff; Temporal retries the activity later."""
    CLOUD_UNAVAILABLE = "CloudUnavailable"
    """The provider's API answered 5xx or not at all; retried."""

    # --- traffic (canary weights)
    INVALID_TRAFFIC_WEIGHTS = "InvalidTrafficWeights"
    """The weights asked for are not percents of the runbook's regions adding up to 100."""
    TRAFFIC_MANAGER_UNREACHABLE = "TrafficManagerUnreachable"
    """The traffic manager's control API does not answer; retried."""
    TRAFFIC_WEIGHTS_REFUSED = "TrafficWeightsRefused"
    """The traffic manager refused the weights or did not read them back as written."""

    # --- audit archive
    RUN_STILL_OPEN = "RunStillOpen"
    """The run to archive has not closed yet; retried until it does."""
    RUN_NOT_FOUND = "RunNotFound"
    """Temporal does not know the run to archive (past the namespace's retention?)."""
    ARCHIVE_REFUSED = "ArchiveRefused"
    """The archive store refused the write (an archive exists for the run and differs, a locked bucket)."""


class SlackErrorType:
    """``ApplicationError.type`` of a failed Slack call; the first three are retried, the rest are not."""

    RATE_LIMITED = "SlackRateLimited"
    """Slack answered 429; retried after its Retry-After."""
    UNAVAILABLE = "SlackUnavailable"
    """Slack's API did not answer or answered 5xx."""
    FAILED = "SlackRequestFailed"
    """Any other failed call that may pass on a retry."""
    NOT_CONFIGURED = "SlackNotConfigured"
    """No bot token on the worker: the run goes on without Slack and says so in its report."""
    AUTH = "SlackAuthFailed"
    """The bot token is invalid, revoked or lacks a scope."""
    CHANNEL = "SlackChannelUnavailable"
    """The approvals channel does not exist, is archived, or the bot is not in it."""
    REFUSED = "SlackRequestRefused"
    """Slack refused the request itself (a malformed message); a retry sends the same."""


class DrflowError(Exception):
    """Base of the exceptions raised between a backend and the activity that called it."""


class ConcurrentChange(DrflowError):
    """The provider refused a conditional write because the record no longer holds ``plan.current``.

    Raised by a DNS backend's ``apply``/``apply_weights`` only; the activity turns it into a result (the
    change already took effect) or ``ErrorType.PLAN_STALE``.
    """


class TrafficManagerError(DrflowError):
    """A traffic manager (HAProxy, DNS weights) could not read or set weights."""


class TrafficManagerUnreachable(TrafficManagerError):
    """The traffic manager's control API does not answer: retrying may help."""


class TrafficManagerRefused(TrafficManagerError):
    """The traffic manager refused a command or answered nonsense: retrying will not help."""


class ArchiveRefused(DrflowError):
    """The archive store refused to write or to read an archive; the message says why."""
