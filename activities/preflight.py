"""Provider preflight: before anything changes, can the worker reach and act on the runbook's cloud resources?

Credentials valid, the zone / cluster / replica exist and are what the runbook says, the permissions present
where the API can tell without changing anything. A failed check is a finding in the report (the workflow
decides), never an activity failure. Providers without a cloud API (rfc2136, postgres) report no checks:
their readiness is already observed by the plan and the replication measurement.
"""

from __future__ import annotations

from pydantic import Field
from temporalio import activity

from activities.cloud import PreflightReport
from runbooks.model import (
    AuroraGlobalDatabase,
    CloudDns,
    DatabaseConfig,
    DnsConfig,
    RdsDatabase,
    Route53Dns,
    StrictModel,
)


class DnsPreflightRequest(StrictModel):
    dns: DnsConfig
    weighted: dict[str, str] | None = Field(
        default=None,
        description="dns-weighted traffic: region -> the address of its weighted entry; the record is then "
        "read as weighted entries, not as one simple record",
    )


class DatabasePreflightRequest(StrictModel):
    database: DatabaseConfig
    primary: str
    standby: str


def dns_preflight_report(dns: DnsConfig, weighted: dict[str, str] | None = None) -> PreflightReport:
    if isinstance(dns, Route53Dns):
        from activities.route53 import Route53Provider

        return Route53Provider(dns).preflight(weighted)
    if isinstance(dns, CloudDns):
        from activities.clouddns import CloudDnsProvider

        return CloudDnsProvider(dns).preflight(weighted)
    return PreflightReport.of(dns.provider, [])


def database_preflight_report(database: DatabaseConfig, primary: str, standby: str) -> PreflightReport:
    if isinstance(database, RdsDatabase):
        from activities.rds import RdsProvider

        return RdsProvider(database).preflight(primary, standby)
    if isinstance(database, AuroraGlobalDatabase):
        from activities.aurora import AuroraProvider

        return AuroraProvider(database).preflight(primary, standby)
    return PreflightReport.of(database.provider, [])


@activity.defn(name="dns_preflight")
def dns_preflight(request: DnsPreflightRequest) -> PreflightReport:
    return dns_preflight_report(request.dns, request.weighted)


@activity.defn(name="db_preflight")
def db_preflight(request: DatabasePreflightRequest) -> PreflightReport:
    return database_preflight_report(request.database, request.primary, request.standby)


PREFLIGHT_ACTIVITIES = [dns_preflight, db_preflight]
