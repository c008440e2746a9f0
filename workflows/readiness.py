"""Readiness: could this service fail over right now, and would it fit inside its RTO?

Deterministic orchestration only: the runbook, the health checks and the DNS answers come from activities;
the verdict is a pure function of what they observed.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.database import activities as database
    from activities.database.results import ReplicationStatus
    from activities.dns.reader import DnsQuery, DnsReadout, read_dns_record
    from activities.health import (
        HealthProbe,
        HealthProbeRequest,
        HealthProbeResults,
        probe_budget,
        probe_health,
    )
    from activities.search_attributes import STEP_ATTR
    from runbooks.loader import LoadedRunbook
    from runbooks.model import render_url
    from workflows.archive import start_archive
    from workflows.common import INFRA_RETRY, load_runbook, tag_run
    from workflows.metrics import record_readiness
    from workflows.readiness_report import ReadinessReport, ReadinessRequest, assess, render_markdown

DNS_QUERY_TIMEOUT = 2.0


@workflow.defn(name="Readiness")
class ReadinessWorkflow:
    def __init__(self) -> None:
        self._report: ReadinessReport | None = None

    @workflow.run
    async def run(self, request: ReadinessRequest) -> ReadinessReport:
        tag_run(request.service, "readiness", "checking")
        workflow.set_current_details(f"Loading the runbook of {request.service}")
        loaded = await load_runbook(request.service)
        workflow.set_current_details(f"Probing health checks and DNS of {request.service}")
        health, dns, replication = await asyncio.gather(
            self._probe_health(loaded), self._read_dns(loaded), self._measure_replication(loaded)
        )
        report = assess(loaded, health.results, dns, workflow.now(), replication)
        self._report = report
        record_readiness(report, loaded.runbook.objectives.rpo)
        workflow.set_current_details(render_markdown(report))
        workflow.upsert_search_attributes([STEP_ATTR.value_set(report.verdict)])
        if request.archive:
            await start_archive("readiness")
        return report

    @workflow.query
    def report(self) -> ReadinessReport | None:
        return self._report

    async def _probe_health(self, loaded: LoadedRunbook) -> HealthProbeResults:
        runbook = loaded.runbook
        probes = [
            HealthProbe(
                region=name,
                check=check.name,
                url=render_url(check, name, region),
                http=check.http,
                timeout=check.timeout,
            )
            for name, region in runbook.regions.items()
            for check in runbook.checks_for(name, serving=name == runbook.primary)
        ]
        return await workflow.execute_activity(
            probe_health,
            HealthProbeRequest(probes=probes),
            start_to_close_timeout=probe_budget(probes),
            retry_policy=INFRA_RETRY,
            summary=f"{len(probes)} health checks",
        )

    async def _measure_replication(self, loaded: LoadedRunbook) -> list[ReplicationStatus]:
        runbook = loaded.runbook
        if runbook.database is None:
            return []
        db = runbook.database
        return list(
            await asyncio.gather(
                *(
                    workflow.execute_activity(
                        database.measure_replication,
                        database.ReplicationRequest(database=db, primary=runbook.primary, standby=standby),
                        start_to_close_timeout=timedelta(seconds=60),
                        retry_policy=INFRA_RETRY,
                        summary=f"replication {runbook.primary} → {standby}",
                    )
                    for standby in runbook.regions
                    if standby != runbook.primary
                )
            )
        )

    async def _read_dns(self, loaded: LoadedRunbook) -> DnsReadout:
        dns = loaded.runbook.dns
        query = DnsQuery(
            record=dns.record,
            type=dns.type,
            zone=dns.zone,
            nameservers=dns.nameservers,
            timeout_seconds=DNS_QUERY_TIMEOUT,
        )
        return await workflow.execute_activity(
            read_dns_record,
            query,
            start_to_close_timeout=timedelta(seconds=DNS_QUERY_TIMEOUT * 3 + 10),
            retry_policy=INFRA_RETRY,
            summary=f"read {dns.record} from every authoritative nameserver",
        )
