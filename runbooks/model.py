"""The runbook: one service's failover contract, as data.

The pydantic models are the single source of truth: the loader validates YAML against them, the JSON Schema
(``docs/runbook.schema.json``) is generated from them, and workflows receive them through the pydantic data
converter. Rules that span fields live in ``rule_problems``, so each problem names the field it is about.

Why one module of about 550 lines: it is the runbook's schema, read top to bottom in the order of a runbook
file and of ``docs/runbook.md``; every section is a handful of small models, and the cross-field rules at the
end need all of them.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import string
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from runbooks.durations import Duration, format_duration
from runbooks.secrets import HeaderRef, SecretRef

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="lowercase letters, digits and dashes")]
Gate = Literal["failover", "promote", "data-loss", "unfenced", "failback", "failback-100"]
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
URL_PLACEHOLDERS = frozenset({"region", "address"})
DEFAULT_GATES: tuple[Gate, ...] = ("failover", "data-loss")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def drop_unset(data: Any, *names: str) -> Any:
    """Leave out fields newer than the histories and workers that may read this payload, when unset.

    Payloads are ``extra="forbid"``: a worker of the previous release refuses any field it does not know,
    so a field at its empty default (None, False, an empty mapping or list) is not written at all
    (``docs/versioning.md``). Identity, not equality: a real ``0`` is a value and stays.
    """
    if isinstance(data, dict):
        for name in names:
            value = data.get(name, ...)
            if value is None or value is False or (isinstance(value, dict | list) and not value):
                data.pop(name)
    return data


WARN_AT = 0.5  # readiness warns from half the RPO or the RTO: early enough to act, rarely noise
VERSION_PATH = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"  # dotted keys; a number indexes a list
TREND_HORIZON = timedelta(hours=1)  # a lag rising toward the RPO within an hour: time to act, not noise


class Objectives(StrictModel):
    rto: Duration = Field(
        description="recovery time objective: detection excluded, start of failover to healthy"
    )
    rpo: Duration = Field(description="recovery point objective: the most recent writes the service may lose")
    rpo_bytes: int | None = Field(
        default=None,
        ge=0,
        description="the RPO as WAL bytes the target may lack; when set, a loss must fit both this and rpo",
    )
    warn_at: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="readiness warns early when replication lag reaches this fraction of the RPO (and "
        "rpo_bytes), or the cutover budget (TTL + propagation + health minimum) this fraction of the RTO; "
        f"default {WARN_AT}",
    )
    trend_horizon: Duration | None = Field(
        default=None,
        description="readiness warns when the replication lag of the last checks rises at a rate that "
        "reaches the RPO within this time; default 1h",
    )

    @property
    def warn_fraction(self) -> float:
        return WARN_AT if self.warn_at is None else self.warn_at

    @property
    def lag_trend_horizon(self) -> timedelta:
        return TREND_HORIZON if self.trend_horizon is None else self.trend_horizon

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        """A runbook without ``rpo_bytes`` or ``warn_at`` serialises as before they existed, so workers of
        the previous release still decode the runbook payloads that newer workers write into histories."""
        return drop_unset(handler(self), "rpo_bytes", "warn_at", "trend_horizon")


class Region(StrictModel):
    address: str = Field(
        description="what the DNS record answers when this region serves (IP, or name for CNAME)"
    )
    vars: dict[str, str] = Field(
        default_factory=dict, description="extra values for health-check URL templates, e.g. {port}"
    )
    description: str | None = None


class Nameserver(StrictModel):
    name: str = Field(description="label used in reports, e.g. ns1.example.com.")
    address: str = Field(description="IP address queried directly")
    port: int = Field(default=53, ge=1, le=65535)

    @field_validator("address")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value


class _DnsBase(StrictModel):
    zone: str = Field(description="the zone apex, fully qualified, e.g. example.com.")
    record: str = Field(description="the record that moves between regions, fully qualified")
    type: Literal["A", "AAAA", "CNAME"] = "A"
    ttl: int = Field(ge=1, le=86400, description="seconds; resolvers may serve the old answer this long")
    nameservers: list[Nameserver] = Field(
        default_factory=list,
        description="authoritative nameservers to verify; empty means discovered from the zone's NS records",
    )
    propagation_budget: Duration = Field(
        default=timedelta(seconds=60),
        description="how long the provider and every authoritative nameserver may take to serve a change",
    )
    managed_by: str | None = Field(
        default=None,
        min_length=1,
        description="another system that also writes this record (e.g. external-dns, a Terraform stack): "
        "readiness reports it, since it may revert a failover's change",
    )

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Without ``managed_by`` (or Route53's ``accelerated_recovery``), serialised as before they existed
        (previous workers decode it)."""
        return drop_unset(handler(self), "managed_by", "accelerated_recovery")

    @field_validator("zone", "record")
    @classmethod
    def _fqdn(cls, value: str) -> str:
        if not value.endswith("."):
            raise ValueError(f"{value!r} must be fully qualified, ending with a dot: {value}.")
        return value.lower()


class Route53Dns(_DnsBase):
    provider: Literal["route53"]
    hosted_zone_id: str = Field(pattern=r"^Z[A-Z0-9]{1,32}$", description="e.g. Z0123456789ABCDEFGHIJ")
    accelerated_recovery: bool = Field(
        default=False,
        description="the hosted zone should have Route53 accelerated recovery enabled (changes accepted "
        "even while us-east-1 is impaired); readiness warns while it is not",
    )


class CloudDns(_DnsBase):
    provider: Literal["clouddns"]
    project: str = Field(min_length=1, description="GCP project id")
    managed_zone: str = Field(min_length=1, description="Cloud DNS managed zone name")


class TsigKey(StrictModel):
    name: str
    algorithm: Literal["hmac-sha256", "hmac-sha384", "hmac-sha512"] = "hmac-sha256"
    secret: SecretRef


class Rfc2136Dns(_DnsBase):
    provider: Literal["rfc2136"]
    server: Nameserver = Field(description="the primary that accepts dynamic updates")
    tsig: TsigKey


DnsConfig = Annotated[Route53Dns | CloudDns | Rfc2136Dns, Field(discriminator="provider")]


class PostgresNode(StrictModel):
    host: str
    port: int = Field(default=5432, ge=1, le=65535)
    dbname: str = "postgres"
    user: str
    password: SecretRef | None = None
    data_directory: str | None = Field(
        default=None, description="only for nodes drflow manages on the same host (the sandbox)"
    )


HOOK_PLACEHOLDERS = frozenset(
    {
        "region",
        "host",
        "port",
        "dbname",
        "user",
        "slot",
        "app_user",
        "source_region",
        "source_host",
        "source_port",
    }
)


class CommandHook(StrictModel):
    """A command the worker runs for a step only the database's own host can do (over ssh, an API CLI).

    The worker runs it without a shell, with ``{placeholders}`` filled in per node, and judges it by its exit
    status; drflow checks the result itself afterwards (over SQL), so a hook that claims success without
    doing the work is caught. Hooks must be idempotent: a retried step runs them again.
    """

    command: list[str] = Field(
        min_length=1,
        description="argv, no shell; placeholders: "
        + ", ".join(f"{{{name}}}" for name in sorted(HOOK_PLACEHOLDERS)),
    )
    env: dict[str, SecretRef] = Field(
        default_factory=dict,
        description="environment variables set from secret references when the hook runs (never logged)",
    )
    timeout: Duration = Field(default=timedelta(minutes=10), description="killed (process group) after this")

    @field_validator("command")
    @classmethod
    def _known_placeholders(cls, value: list[str]) -> list[str]:
        for argument in value:
            unknown = sorted(set(_url_fields(argument)) - HOOK_PLACEHOLDERS)
            if unknown:
                raise ValueError(
                    f"unknown placeholder {{{unknown[0]}}} in {argument!r}; known: "
                    + ", ".join(sorted(HOOK_PLACEHOLDERS))
                )
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value


class PostgresHooks(StrictModel):
    """What drflow cannot do over SQL on a node it does not manage: declared commands do it instead."""

    resync: CommandHook | None = Field(
        default=None,
        description="make the node {region} a streaming standby of {source_host}:{source_port} (e.g. ssh to "
        "it and run pg_rewind); drflow then verifies over SQL that it streams from the new primary",
    )
    fence: CommandHook | None = Field(
        default=None,
        description="an extra fence beside cutting connections (firewall, security group, STONITH); runs "
        "even when the node is unreachable over SQL",
    )
    unfence: CommandHook | None = Field(
        default=None, description="undoes the fence hook (compensation before promotion)"
    )

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        return drop_unset(handler(self), "resync", "fence", "unfence")


class PostgresRole(StrictModel):
    user: str = Field(min_length=1)
    password: SecretRef | None = None


class PostgresDatabase(StrictModel):
    provider: Literal["postgres"]
    nodes: dict[str, PostgresNode] = Field(description="one node per region")
    hooks: PostgresHooks = Field(default_factory=PostgresHooks)
    application: PostgresRole | None = Field(
        default=None,
        description="the application's role: drflow proves a fence by trying a write as it (required for "
        "nodes without data_directory)",
    )

    def resync_problem(self, region: str) -> str | None:
        """Why drflow cannot re-sync ``region`` as a standby after a switch (None: pg_rewind or the hook)."""
        node = self.nodes.get(region)
        if node is not None and node.data_directory is None and self.hooks.resync is None:
            return f"{region} has no data_directory and the runbook declares no database.hooks.resync"
        return None

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        """A runbook of nodes drflow manages serialises as before hooks existed (rolling upgrades)."""
        return drop_unset(handler(self), "hooks", "application")

    def remote_regions(self) -> list[str]:
        """Nodes reached only over the network: drflow has no data directory to act on."""
        return [region for region, node in self.nodes.items() if node.data_directory is None]


SECURITY_GROUP_PATTERN = r"^sg-[0-9a-f]{8}([0-9a-f]{9})?$"
AWS_REGION_PATTERN = r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]+$"


def aws_region_name(name: str) -> str | None:
    """``name`` if it is an AWS region's name (us-east-1), else None."""
    return name if re.fullmatch(AWS_REGION_PATTERN, name) else None


class RdsDatabase(StrictModel):
    provider: Literal["rds"]
    instances: dict[str, str] = Field(
        description="DB instance per region: its ARN, or its identifier when the region is named after its "
        "AWS "
        "region (us-east-1)"
    )

    fence_security_groups: dict[str, Annotated[str, Field(pattern=SECURITY_GROUP_PATTERN)]] = Field(
        default_factory=dict,
        description="region -> a security group of that instance's VPC with no ingress rule. A planned or "
        "drill failover fences the region's instance by making it its only security group and rebooting it "
        "(ending open sessions); without an entry for the source region it refuses at the fence",
    )

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Without fence groups the section serialises as before the field existed, so workers of the
        previous release still decode the runbook payloads that newer workers write into histories."""
        return drop_unset(handler(self), "fence_security_groups")

    def resync_problem(self, region: str) -> str | None:
        """None: drflow re-syncs the old primary as a new cross-region read replica (the old one is kept)."""
        return None


class AuroraGlobalDatabase(StrictModel):
    provider: Literal["aurora-global"]
    global_cluster: str = Field(min_length=1)
    clusters: dict[str, str] = Field(description="member cluster ARN per region")

    def resync_problem(self, region: str) -> str | None:
        """None: Aurora demotes the old writer itself; drflow confirms it is a secondary (or says why not)."""
        return None

    @field_validator("clusters")
    @classmethod
    def _arns(cls, value: dict[str, str]) -> dict[str, str]:
        for region, arn in value.items():
            if not arn.startswith("arn:"):
                raise ValueError(f"cluster for {region} must be an ARN (arn:aws:rds:...), got {arn!r}")
        return value


DatabaseConfig = Annotated[
    PostgresDatabase | RdsDatabase | AuroraGlobalDatabase, Field(discriminator="provider")
]


class HttpCheck(StrictModel):
    url: str = Field(description="template; {region}, {address} and the region's vars are substituted")
    method: Literal["GET", "HEAD", "POST"] = "GET"
    expect_status: list[int] = Field(default_factory=lambda: [200])
    expect_body_contains: str | None = None
    expect_json: dict[str, Any] | None = Field(default=None, description="keys that must have these values")
    version_path: str | None = Field(
        default=None,
        description="where the JSON body names the build, e.g. 'version' or 'build.git_sha': readiness "
        "warns when the regions report different values",
        pattern=VERSION_PATH,
    )
    headers: dict[str, HeaderRef] = Field(
        default_factory=dict,
        description="request headers; every value is a secret reference (env:/file:) holding the whole value",
    )

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        return drop_unset(handler(self), "version_path")

    @field_validator("expect_status", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://[^/\s]+", value)
        if match is None:
            raise ValueError(f"{value!r} has no scheme and host; write it as http://host/path or https://...")
        if match.group(1).lower() not in ("http", "https"):
            raise ValueError(f"{value!r}: only http:// and https:// checks are supported")
        return value


class HealthCheck(StrictModel):
    name: Name
    http: HttpCheck
    timeout: Duration = timedelta(seconds=5)
    interval: Duration = timedelta(seconds=5)
    consecutive_successes: int = Field(default=3, ge=1, le=100)
    regions: list[str] | None = Field(default=None, description="regions this check applies to; default all")
    primary_only: bool = Field(
        default=False,
        description="passes only where the database is writable (a deep write check): not run against "
        "standbys in readiness and preflight, required on the target after the cutover",
    )

    @property
    def minimum_duration(self) -> timedelta:
        """The irreducible time to see N consecutive successes: N-1 intervals between N checks."""
        return self.interval * (self.consecutive_successes - 1)


SLACK_USER_PATTERN = r"^[UW][A-Z0-9]+$"
SlackUserId = Annotated[str, Field(pattern=SLACK_USER_PATTERN, description="Slack user id, e.g. U01ABCDEF")]


class SlackApprovals(StrictModel):
    channel: str = Field(pattern=r"^[CG][A-Z0-9]+$", description="channel id, e.g. C0123ABCD")
    approvers: list[SlackUserId] = Field(
        default_factory=list, description="Slack user ids allowed to approve"
    )
    usergroup: str | None = Field(
        default=None, pattern=r"^S[A-Z0-9]+$", description="Slack user group id whose members may approve"
    )
    escalation_group: str | None = Field(
        default=None,
        pattern=r"^S[A-Z0-9]+$",
        description="Slack user group mentioned when a gate is still unanswered after escalate_after",
    )
    identities: dict[SlackUserId, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict,
        description="Slack user id -> the name the same person uses in the CLI and Web UI (requested_by, "
        "approvers): separation of duties compares people, not accounts. Grants no approval right.",
    )


class HaproxyTraffic(StrictModel):
    """HAProxy in front of the regions (on-prem sites, the sandbox): weights through its runtime API."""

    provider: Literal["haproxy"]
    runtime_api: str = Field(
        pattern=r"^(unix:.+|tcp:[^:]+:\d+)$", description="unix:/path/to/admin.sock or tcp:host:port"
    )
    backend: str = Field(min_length=1)
    servers: dict[str, str] = Field(description="HAProxy server name per region")
    frontend_url: str = Field(description="where clients (and the canary analysis) send requests")


class DnsWeightedTraffic(StrictModel):
    """The DNS provider's weighted records as the traffic manager (Route53 weighted, Cloud DNS WRR)."""

    provider: Literal["dns-weighted"]
    frontend_url: str = Field(
        description="where clients (and the canary analysis) send requests, e.g. https://checkout.example.com"
    )
    servers: dict[str, str] = Field(
        default_factory=dict,
        description="region -> the address its weighted entry answers; regions left out answer their "
        "regions.<name>.address",
    )


TrafficConfig = Annotated[HaproxyTraffic | DnsWeightedTraffic, Field(discriminator="provider")]


class CanaryAnalysis(StrictModel):
    """Synthetic traffic sent through the traffic manager at each stage, and what it must show."""

    path: str = Field(default="/", description="path on the frontend; answers JSON with a region field")
    requests: int = Field(default=200, ge=10, le=100_000)
    duration: Duration = Field(default=timedelta(seconds=5), description="the analysis window per stage")
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_p95_latency: Duration = timedelta(milliseconds=500)
    split_tolerance: float = Field(
        default=0.1, ge=0, le=1, description="allowed gap between a region's weight and its measured share"
    )
    write_path: str | None = Field(
        default=None,
        description="a path on the frontend that writes through the database (answers JSON with a region "
        "field): a read that a standby answers proves nothing about writes",
    )
    write_method: Literal["POST", "GET"] = Field(default="POST", description="how write_path is called")
    write_share: float = Field(
        default=0.5, gt=0, le=1, description="share of the analysis requests sent to write_path"
    )

    @model_serializer(mode="wrap")
    def _without_unset_write_path(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Without a write path the analysis serialises as before it had one, so the previous release's
        workers still decode the runbook and analysis payloads newer workers write into histories."""
        data = handler(self)
        if isinstance(data, dict) and data.get("write_path") is None:
            for key in ("write_path", "write_method", "write_share"):
                data.pop(key, None)
        return data


DatabaseOrder = Literal["first", "last"]
FailedAnalysisPolicy = Literal["ask", "roll-back"]


class Failback(StrictModel):
    stages: list[int] = Field(
        default_factory=lambda: [5, 25, 50, 100], description="percent of traffic to the home region"
    )
    analysis: CanaryAnalysis = Field(default_factory=CanaryAnalysis)
    database: DatabaseOrder | None = Field(
        default=None,
        description="when the database switches: first (before the canary: the source region serves canary "
        "traffic on a standby, so its app must follow the primary, see writes) or last (after every "
        "stage, 100 % included, and before DNS: a failed analysis always rolls back onto the primary). "
        "Unset: first",
    )
    on_failed_analysis: FailedAnalysisPolicy | None = Field(
        default=None,
        description="what a failed analysis does once the database has moved: ask (a person decides: retry "
        "the analysis, skip it and go on, or abort) or roll-back (traffic back to the source region, only "
        "where its app reaches the primary, see writes). Unset: ask. Before the switch a failed analysis "
        "always rolls back by itself",
    )

    @field_validator("stages")
    @classmethod
    def _increasing_to_100(cls, value: list[int]) -> list[int]:
        if not value or value[-1] != 100 or any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("stages rise strictly and end at 100, e.g. [5, 25, 50, 100]")
        if value[0] <= 0:
            raise ValueError("the first stage sends some traffic: more than 0")
        return value

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Unset fields are left out, so a failback section serialises as before they existed."""
        return drop_unset(handler(self), "database", "on_failed_analysis")

    @property
    def database_last(self) -> bool:
        return self.database == "last"

    @property
    def failed_analysis_policy(self) -> FailedAnalysisPolicy:
        return self.on_failed_analysis or "ask"


class Writes(StrictModel):
    """How the regions' apps reach a writable database, whichever region holds the primary."""

    follow_primary: list[str] = Field(
        min_length=1,
        description="regions whose app always reaches the current primary (a writer endpoint that follows "
        "it, or a libpq multi-host connection string with target_session_attrs=read-write over every "
        "region's node): they take writes even while their own database is a standby",
    )
    how: str = Field(min_length=1, description="the mechanism, for the approver and the audit record")


class Quorum(StrictModel):
    """What one gate needs before it passes; frozen when the gate opens."""

    min_approvals: int = Field(default=1, ge=1, le=9, description="distinct people who must approve")
    groups: list[Name] = Field(
        default_factory=list,
        description="people-file groups that must each be represented among the approvers, e.g. [dba, sre]",
    )


class Approvals(StrictModel):
    approvers: list[str] = Field(
        default_factory=list,
        description="who may approve: with a people file, names of people or groups; without one, the "
        "strings the CLI and UI send (unverified)",
    )
    people: str | None = Field(
        default=None,
        description="the people file (who approves, with which keys); relative paths resolve from the "
        "worker's working directory, like file: secrets. Default: people.yaml in the runbooks directory, "
        "when it exists",
    )
    unsigned: Literal["refuse", "record"] | None = Field(
        default=None,
        description="with a people file, what an unsigned answer (Web UI Send Update, raw temporal) gets: "
        "refuse (the default) or record it as 'identity not verified'",
    )
    unverified_requester: Literal["two-person", "refuse"] | None = Field(
        default=None,
        description="when unsigned answers are refused and the request was not signed: two distinct "
        "verified approvers at every gate (two-person, the default) or refuse the run at its start",
    )
    quorum: dict[Gate, Quorum] = Field(
        default_factory=dict, description="per gate: how many distinct people and which groups must approve"
    )
    slack: SlackApprovals | None = None
    gates: list[Gate] = Field(default_factory=lambda: list(DEFAULT_GATES))
    skip_in_emergency: list[Gate] = Field(
        default_factory=list, description="gates an emergency failover may pass without approval (recorded)"
    )
    separation_of_duties: bool = Field(default=True, description="the requester cannot approve")
    timeout: Duration = timedelta(minutes=30)
    escalate_after: Duration | None = Field(
        default=None,
        description="an unanswered gate is re-posted in Slack this long after it opened, mentioning "
        "slack.escalation_group",
    )

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Runbooks without people or quorum serialise as before those fields existed (rolling upgrades)."""
        return drop_unset(handler(self), "people", "unsigned", "unverified_requester", "quorum")


class Alerts(StrictModel):
    """Where scheduled readiness checks announce a change of verdict or warnings (docs/readiness.md)."""

    slack_channel: str | None = Field(
        default=None, pattern=r"^[CG][A-Z0-9]+$", description="channel id; default: approvals.slack.channel"
    )
    webhook: SecretRef | None = Field(
        default=None,
        description="URL that gets a JSON POST, as an env:/file: reference (webhook URLs carry tokens)",
    )


class Runbook(StrictModel):
    """One service's regions, DNS, database, health checks, objectives and approvers."""

    service: Name
    description: str | None = None
    owner: str | None = None
    objectives: Objectives
    primary: str = Field(description="the region that serves today")
    regions: dict[str, Region] = Field(min_length=2)
    dns: DnsConfig
    database: DatabaseConfig | None = None
    traffic: TrafficConfig | None = Field(
        default=None, description="a traffic manager with weights, for canary failback"
    )
    failback: Failback | None = Field(default=None, description="canary stages when traffic comes home")
    writes: Writes | None = Field(
        default=None,
        description="which regions' apps reach the current primary wherever it is; unset: each region's app "
        "writes only through its own region's database",
    )
    health: list[HealthCheck] = Field(min_length=1)
    approvals: Approvals
    alerts: Alerts | None = Field(default=None, description="where scheduled readiness changes are told")

    @model_validator(mode="before")
    @classmethod
    def _dns_weighted_servers(cls, data: Any) -> Any:
        """A ``dns-weighted`` section's entries answer the regions' addresses unless it says otherwise."""
        if not isinstance(data, dict) or not isinstance(data.get("regions"), dict):
            return data
        traffic = data.get("traffic")
        if isinstance(traffic, DnsWeightedTraffic):
            servers = _with_region_addresses(traffic.servers, data["regions"])
            return {**data, "traffic": traffic.model_copy(update={"servers": servers})}
        if isinstance(traffic, dict) and traffic.get("provider") == "dns-weighted":
            given = traffic.get("servers") or {}
            if isinstance(given, dict):
                servers = _with_region_addresses(given, data["regions"])
                return {**data, "traffic": {**traffic, "servers": servers}}
        return data

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Without ``writes`` or ``alerts``, serialised as before they existed (previous workers read it)."""
        return drop_unset(handler(self), "writes", "alerts")

    @property
    def alert_channel(self) -> str | None:
        """The Slack channel of readiness alerts: their own, else the approvals' channel."""
        if self.alerts is not None and self.alerts.slack_channel is not None:
            return self.alerts.slack_channel
        return self.approvals.slack.channel if self.approvals.slack is not None else None

    @model_validator(mode="after")
    def _rules(self) -> Runbook:
        raise_rule_problems("runbook_rules", rule_problems(self))
        return self

    def follows_primary(self, region: str) -> bool:
        """The region's app reaches the current primary wherever it is (declared in ``writes``)."""
        return self.writes is not None and region in self.writes.follow_primary

    @property
    def canary_before_switch(self) -> bool:
        """Traffic stages below 100 % and a database: a region may serve canary traffic on a standby."""
        return (
            self.traffic is not None
            and self.database is not None
            and self.failback is not None
            and any(stage < 100 for stage in self.failback.stages)
        )

    @property
    def weighted_traffic(self) -> DnsWeightedTraffic | None:
        """The traffic section when it is the DNS provider's weighted records: they are the DNS change."""
        return self.traffic if isinstance(self.traffic, DnsWeightedTraffic) else None

    @property
    def health_minimum(self) -> timedelta:
        return max((check.minimum_duration for check in self.health), default=timedelta(0))

    @property
    def cutover_budget(self) -> timedelta:
        """TTL + propagation budget + health minimum: the part of the RTO drflow cannot shorten."""
        return timedelta(seconds=self.dns.ttl) + self.dns.propagation_budget + self.health_minimum

    def checks_for(self, region: str, serving: bool = True) -> list[HealthCheck]:
        """The checks that apply to a region; a standby (``serving=False``) skips the primary-only ones."""
        return [
            c
            for c in self.health
            if (c.regions is None or region in c.regions) and (serving or not c.primary_only)
        ]


def _with_region_addresses(servers: dict[str, Any], regions: dict[str, Any]) -> dict[str, Any]:
    """``servers`` with every region it leaves out added, answering that region's address."""
    filled: dict[str, Any] = {}
    for name, region in regions.items():
        address = region.address if isinstance(region, Region) else None
        if isinstance(region, dict):
            address = region.get("address")
        if name not in servers and isinstance(address, str):
            filled[name] = address
    return {**filled, **servers}


Problem = tuple[tuple[str | int, ...], str]


def raise_rule_problems(error_type: str, problems: list[Problem]) -> None:
    """Cross-field problems as one validation error whose ``ctx["problems"]`` the loader locates one by one
    (``runbooks.loader.RULE_ERROR_TYPES``)."""
    if problems:
        raise PydanticCustomError(
            error_type,
            "{summary}",
            {
                "summary": "; ".join(f"{'.'.join(map(str, p))}: {m}" for p, m in problems),
                "problems": problems,
            },
        )


def rule_problems(runbook: Runbook) -> list[Problem]:
    """Cross-field rules, each reported at the field it is about (added later: ``admission_problems``)."""
    problems: list[Problem] = []
    regions = set(runbook.regions)
    known = ", ".join(sorted(regions))

    for name in runbook.regions:
        if not re.fullmatch(NAME_PATTERN, name):
            problems.append((("regions", name), "region names use lowercase letters, digits and dashes"))
    if runbook.primary not in regions:
        problems.append((("primary",), f"{runbook.primary!r} is not one of the regions ({known})"))

    dns = runbook.dns
    if not (dns.record == dns.zone or dns.record.endswith("." + dns.zone)):
        problems.append((("dns", "record"), f"{dns.record} is not inside the zone {dns.zone}"))
    if dns.record == dns.zone:
        problems.append(
            (("dns", "record"), "the zone apex cannot move between regions (it also holds SOA/NS)")
        )
    for name, region in runbook.regions.items():
        problems.extend(_address_problems(dns.type, name, region.address))

    if runbook.cutover_budget > runbook.objectives.rto:
        problems.append(
            (
                ("dns", "ttl"),
                budget_overrun(
                    timedelta(seconds=dns.ttl),
                    dns.propagation_budget,
                    runbook.health_minimum,
                    runbook.objectives.rto,
                ),
            )
        )

    problems.extend(_database_region_problems(runbook, regions, known))

    for index, check in enumerate(runbook.health):
        for listed in check.regions or []:
            if listed not in regions:
                problems.append(
                    (("health", index, "regions"), f"{listed!r} is not one of the regions ({known})")
                )
        for header in check.http.headers:
            if not re.fullmatch(HEADER_NAME_PATTERN, header):
                problems.append(
                    (
                        ("health", index, "http", "headers", header),
                        "not an HTTP header name (letters, digits, -)",
                    )
                )
        for field in _url_fields(check.http.url):
            if field not in URL_PLACEHOLDERS and not all(field in r.vars for r in runbook.regions.values()):
                problems.append(
                    (
                        ("health", index, "http", "url"),
                        f"placeholder {{{field}}} is neither region nor address nor in every region's vars",
                    )
                )
        if check.timeout <= timedelta(0):
            problems.append(
                (("health", index, "timeout"), "must be longer than 0s: no answer could ever pass")
            )
        elif check.timeout > check.interval:
            problems.append(
                (("health", index, "timeout"), "timeout is longer than the interval between checks")
            )

    traffic = runbook.traffic
    if runbook.failback is not None and len(runbook.failback.stages) > 1 and traffic is None:
        problems.append(
            (
                ("failback", "stages"),
                f"canary stages need traffic weights, which {runbook.dns.provider} DNS alone does not give: "
                "add a traffic section (haproxy) or use one stage [100]",
            )
        )
    if isinstance(traffic, DnsWeightedTraffic) and not isinstance(dns, Route53Dns | CloudDns):
        problems.append(
            (
                ("traffic", "provider"),
                f"dns-weighted needs weighted records, which {dns.provider} DNS does not have: use route53 "
                "or clouddns, or a haproxy traffic section",
            )
        )
    if isinstance(traffic, HaproxyTraffic):  # dns-weighted: regions left out answer their own address
        for missing in sorted(regions - set(traffic.servers)):
            problems.append((("traffic", "servers"), f"region {missing!r} has no server"))
    if traffic is not None:
        for extra in sorted(set(traffic.servers) - regions):
            problems.append((("traffic", "servers", extra), f"{extra!r} is not one of the regions ({known})"))

    problems.extend(_writes_problems(runbook, regions, known))

    approvals = runbook.approvals
    slack_approvers = approvals.slack is not None and bool(
        approvals.slack.approvers or approvals.slack.usergroup
    )
    if approvals.gates and not approvals.approvers and not slack_approvers:
        problems.append((("approvals", "approvers"), "gates are configured but nobody may approve them"))
    if "unfenced" in approvals.gates:
        problems.append(
            (
                ("approvals", "gates"),
                "the unfenced gate is not configurable: it opens by itself whenever a fence is not confirmed",
            )
        )
    for gate in approvals.skip_in_emergency:
        if gate in ("data-loss", "unfenced"):
            problems.append(
                (
                    ("approvals", "skip_in_emergency"),
                    "the data-loss gate can never be skipped: accepting data loss needs a recorded decision"
                    if gate == "data-loss"
                    else "the unfenced gate can never be skipped: promoting without a confirmed fence needs "
                    "a recorded decision with a reason",
                )
            )
        elif gate not in approvals.gates:
            problems.append((("approvals", "skip_in_emergency"), f"{gate!r} is not one of the gates"))
    if approvals.escalate_after is not None and approvals.escalate_after >= approvals.timeout:
        problems.append((("approvals", "escalate_after"), "must be shorter than the approval timeout"))
    return problems


def _writes_problems(runbook: Runbook, regions: set[str], known: str) -> list[Problem]:
    if runbook.writes is None:
        return []
    return [
        (("writes", "follow_primary", index), f"{region!r} is not one of the regions ({known})")
        for index, region in enumerate(runbook.writes.follow_primary)
        if region not in regions
    ]


def canary_guard_problems(runbook: Runbook) -> list[Problem]:
    """The canary must never send traffic to a region that cannot write, nor judge it by reads alone.

    With the database switched first, the source region keeps canary traffic while its database is a standby:
    its app must follow the primary. Any region can be the source of a failback, so every region must.
    """
    failback = runbook.failback
    if failback is None or not runbook.canary_before_switch:
        return []
    problems: list[Problem] = []
    regions = sorted(runbook.regions)
    not_following = [r for r in regions if not runbook.follows_primary(r)]
    if not failback.database_last and not_following:
        where: tuple[str | int, ...] = (
            ("failback", "database") if runbook.writes is None else ("writes", "follow_primary")
        )
        problems.append(
            (
                where,
                "the database switches before the canary, so the source region serves canary traffic on a "
                f"standby: {', '.join(not_following)} would refuse writes. Declare writes.follow_primary for "
                "every region (a writer endpoint, or libpq multi-host with target_session_attrs=read-write), "
                "or failback.database: last (the switch after 100 % traffic, before DNS)",
            )
        )
    if failback.analysis.write_path is None:
        problems.append(
            (
                ("failback", "analysis", "write_path"),
                "the canary moves traffic around a database switch: its analysis must exercise a path that "
                "writes (a read is answered by a standby too)",
            )
        )
    if failback.on_failed_analysis == "roll-back" and not_following:
        problems.append(
            (
                ("failback", "on_failed_analysis"),
                "roll-back after the database moved sends all traffic to the source region, whose database "
                "is then a standby: allowed only where its app follows the primary "
                f"({', '.join(not_following)} does not, see writes.follow_primary); use ask",
            )
        )
    return problems


def admission_problems(runbook: Runbook) -> list[Problem]:
    """Rules checked when a runbook file is loaded, not when a payload is decoded.

    Rules added after runs were recorded live here: a runbook inside an old history (a ``load_runbook``
    result) must still decode, or that history no longer replays (``docs/versioning.md``).
    """
    problems: list[Problem] = []
    db = runbook.database
    if isinstance(db, PostgresDatabase) and db.remote_regions():
        remote = ", ".join(db.remote_regions())
        if db.hooks.resync is None:
            problems.append(
                (
                    ("database", "hooks", "resync"),
                    f"required: {remote} has no data_directory, so drflow re-syncs it after a switch only "
                    "through a declared command (see infra/postgres/hooks)",
                )
            )
        if db.application is None:
            problems.append(
                (
                    ("database", "application"),
                    f"required: {remote} has no data_directory, so drflow proves its fence by trying a write "
                    "as the application's role",
                )
            )
    problems.extend(canary_guard_problems(runbook))
    return problems


def budget_overrun(ttl: timedelta, propagation: timedelta, health: timedelta, rto: timedelta) -> str:
    return (
        f"TTL {format_duration(ttl)} + propagation budget {format_duration(propagation)} + "
        f"health-check minimum {format_duration(health)} = {format_duration(ttl + propagation + health)} "
        f"exceeds the RTO of {format_duration(rto)}"
    )


def _address_problems(record_type: str, name: str, address: str) -> list[Problem]:
    where = ("regions", name, "address")
    if record_type == "CNAME":
        return (
            []
            if address.endswith(".")
            else [(where, f"{address!r} must be a fully qualified name for CNAME")]
        )
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return [(where, f"{address!r} is not an IP address (the record type is {record_type})")]
    if (record_type == "A") != (parsed.version == 4):
        return [(where, f"{address} is IPv{parsed.version}, which does not fit an {record_type} record")]
    return []


def _database_region_problems(runbook: Runbook, regions: set[str], known: str) -> list[Problem]:
    db = runbook.database
    if db is None:
        return []
    per_region: dict[str, Any]
    key: str
    if isinstance(db, PostgresDatabase):
        per_region, key = db.nodes, "nodes"
    elif isinstance(db, RdsDatabase):
        per_region, key = db.instances, "instances"
    else:
        per_region, key = db.clusters, "clusters"
    problems: list[Problem] = []
    if isinstance(db, RdsDatabase):
        for region, instance in db.instances.items():
            if not instance.startswith("arn:") and aws_region_name(region) is None:
                problems.append(
                    (
                        ("database", "instances", region),
                        f"{region!r} is not an AWS region name, so give the instance's ARN "
                        "(arn:aws:rds:<region>:<account>:db:<name>) to say where it lives",
                    )
                )
        for region in sorted(set(db.fence_security_groups) - set(db.instances)):
            problems.append(
                (
                    ("database", "fence_security_groups", region),
                    f"{region!r} has no instance in database.instances",
                )
            )
    for region in sorted(regions - set(per_region)):
        problems.append((("database", key), f"region {region!r} has no entry"))
    for region in sorted(set(per_region) - regions):
        problems.append((("database", key, region), f"{region!r} is not one of the regions ({known})"))
    return problems


def _url_fields(template: str) -> list[str]:
    try:
        return [field for _, field, _, _ in string.Formatter().parse(template) if field]
    except ValueError:
        return []


def render_url(check: HealthCheck, region_name: str, region: Region) -> str:
    values = {**region.vars, "region": region_name, "address": region.address}
    return check.http.url.format_map(values)
