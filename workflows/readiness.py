"""Readiness: could this service fail over right now, and would it fit inside its RTO?

Deterministic orchestration only: the runbook, the health checks and the DNS answers come from activities;
the verdict is a pure function of what they observed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.cloud.preflight import PreflightReport
    from activities.database import activities as database
    from activities.database.results import ReplicationStatus
    from activities.dns.activities import DnsPreflightRequest, dns_preflight
    from activities.dns.reader import DnsQuery, DnsReadout, read_dns_record
    from activities.health import (
        HealthProbe,
        HealthProbeRequest,
        HealthProbeResults,
        probe_budget,
        probe_health,
    )
    from activities.readiness_alerts import (
        AlertFinding,
        AlertOutcome,
        AlertRequest,
        ReadinessAlertActivities,
    )
    from activities.readiness_history import (
        PastChecks,
        PastChecksRequest,
        ReadinessHistoryActivities,
    )
    from activities.search_attributes import STEP_ATTR
    from activities.slack.activities import check_users
    from activities.slack.models import SlackUsers, SlackUsersRequest
    from runbooks.loader import LoadedRunbook
    from runbooks.model import render_url
    from workflows.archive import start_archive
    from workflows.common import INFRA_RETRY, load_people, load_runbook, tag_run
    from workflows.metrics import record_readiness
    from workflows.readiness_people import people_findings, slack_ids_to_check
    from workflows.readiness_report import (
        EarlyWarning,
        ReadinessReport,
        ReadinessRequest,
        assess,
        render_markdown,
        with_provider_checks,
    )
    from workflows.readiness_trend import lag_trend
    from workflows.run_state import failure_message

DNS_QUERY_TIMEOUT = 2.0
CHECKED_DNS = frozenset({"route53", "clouddns", "rfc2136"})  # rfc2136: the TSIG key, by a signed read
CHECKED_DATABASES = frozenset({"rds", "aurora-global"})  # PostgreSQL: the replication measurement
PEOPLE_PATCH = "readiness-people"  # since: the check loads the people file as a gate would
PROVIDERS_PATCH = "readiness-provider-checks"  # since: credentials and resources, as a failover's preflight
WATCH_PATCH = "readiness-trend-and-slack"  # since: the lag trend over past checks, approvers' Slack accounts
PeopleResult = tuple[tuple[list[str], list[EarlyWarning]], str | None]


async def _no_providers() -> list[PreflightReport]:
    """Runs from before ``readiness-provider-checks``."""
    return []


async def _no_past_checks() -> PastChecks:
    """Runs from before ``readiness-trend-and-slack``, and services without a database: no trend."""
    return PastChecks(checks=[])


async def _no_people() -> PeopleResult:
    """Runs from before ``readiness-people``: no people check, as they were recorded."""
    return ([], []), None


@workflow.defn(name="Readiness")
class ReadinessWorkflow:
    def __init__(self) -> None:
        self._report: ReadinessReport | None = None
        self._watch = False

    @workflow.run
    async def run(self, request: ReadinessRequest) -> ReadinessReport:
        tag_run(request.service, "readiness", "checking")
        workflow.set_current_details(f"Loading the runbook of {request.service}")
        loaded = await load_runbook(request.service)
        workflow.set_current_details(f"Probing health checks and DNS of {request.service}")
        people = self._check_people(loaded) if workflow.patched(PEOPLE_PATCH) else _no_people()
        providers = self._check_providers(loaded) if workflow.patched(PROVIDERS_PATCH) else _no_providers()
        self._watch = workflow.patched(WATCH_PATCH)
        past = self._past_checks(loaded) if self._watch and loaded.runbook.database else _no_past_checks()
        health, dns, replication, (findings, people_source), provider_checks, history = await asyncio.gather(
            self._probe_health(loaded), self._read_dns(loaded), self._measure_replication(loaded), people,
            providers, past,
        )  # fmt: skip
        trend = lag_trend(history.checks, workflow.now(), replication, loaded.runbook.objectives)
        findings = (findings[0], findings[1] + trend)
        report = assess(loaded, health.results, dns, workflow.now(), replication, findings, people_source)
        if provider_checks:
            report = with_provider_checks(report, provider_checks)
        if request.alert:  # only scheduled checks ask, and none did before: no patch
            report = report.model_copy(update={"alert": await self._alert(loaded, report)})
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

    async def _alert(self, loaded: LoadedRunbook, report: ReadinessReport) -> AlertOutcome | None:
        """Tell the alert channels if this check differs from the schedule's previous one; a channel that
        fails is recorded in the report, never a failed check (one attempt: a retry could post twice)."""
        runbook = loaded.runbook
        webhook = runbook.alerts.webhook if runbook.alerts is not None else None
        if runbook.alert_channel is None and webhook is None:
            return None
        info = workflow.info()
        request = AlertRequest(
            service=runbook.service, schedule_id=f"readiness-{runbook.service}", workflow_id=info.workflow_id,
            run_id=info.run_id, verdict=report.verdict, reasons=report.reasons,
            warnings=[AlertFinding(code=w.code, message=w.message) for w in report.warnings],
            slack_channel=runbook.alert_channel, webhook=webhook,
        )  # fmt: skip
        try:
            outcome: AlertOutcome = await workflow.execute_activity_method(
                ReadinessAlertActivities.readiness_alert,
                request,
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=RetryPolicy(maximum_attempts=1),
                summary="tell the alert channels if the state changed",
            )
        except ActivityError as err:
            return AlertOutcome(changed=False, failed=[failure_message(err)])
        return outcome

    async def _check_providers(self, loaded: LoadedRunbook) -> list[PreflightReport]:
        """The DNS and database providers' own preflight (credentials valid, zone / cluster / replica what
        the runbook says, permissions where the API tells), the one a failover runs before its gate."""
        runbook = loaded.runbook
        checks: list[Awaitable[PreflightReport]] = []
        if runbook.dns.provider in CHECKED_DNS:
            checks.append(
                workflow.execute_activity(
                    dns_preflight,
                    DnsPreflightRequest(dns=runbook.dns),
                    start_to_close_timeout=timedelta(seconds=60),
                    retry_policy=INFRA_RETRY,
                    summary=f"{runbook.dns.provider} credentials and zone",
                )
            )
        db = runbook.database
        if db is not None and db.provider in CHECKED_DATABASES:
            checks += [
                workflow.execute_activity(
                    database.db_preflight,
                    database.DatabasePreflightRequest(database=db, primary=runbook.primary, standby=standby),
                    start_to_close_timeout=timedelta(seconds=60),
                    retry_policy=INFRA_RETRY,
                    summary=f"{db.provider} credentials and replica {standby}",
                )
                for standby in runbook.regions
                if standby != runbook.primary
            ]
        return list(await asyncio.gather(*checks))

    async def _check_people(self, loaded: LoadedRunbook) -> PeopleResult:
        """The people file as a gate would load it: refused approvers block, thin quorums warn."""
        runbook = loaded.runbook
        try:
            people = await load_people(runbook)
        except ActivityError as err:
            return ([f"runs of {runbook.service} would be refused: {failure_message(err)}"], []), None
        snapshot = people.snapshot
        source = snapshot.source if snapshot is not None else None
        slack = await self._slack_users(slack_ids_to_check(runbook.approvals, snapshot))
        return people_findings(runbook.approvals, snapshot, slack), source

    async def _slack_users(self, user_ids: list[str]) -> SlackUsers | None:
        """Whether the approvers' Slack accounts still exist; a Slack that cannot tell (no token, down) is
        an early warning, not a failed check."""
        if not self._watch or not user_ids:
            return None
        try:
            users: SlackUsers = await workflow.execute_activity(
                check_users,
                SlackUsersRequest(user_ids=user_ids),
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=RetryPolicy(maximum_attempts=3),
                summary=f"{len(user_ids)} approvers' Slack accounts",
            )
        except ActivityError as err:
            return SlackUsers(states={}, problems=[failure_message(err)])
        return users

    async def _past_checks(self, loaded: LoadedRunbook) -> PastChecks:
        """The service's last checks for the lag trend; unreadable history is no trend, never a failure."""
        horizon = loaded.runbook.objectives.lag_trend_horizon
        try:
            past: PastChecks = await workflow.execute_activity_method(
                ReadinessHistoryActivities.past_checks,
                PastChecksRequest(
                    service=loaded.runbook.service, run_id=workflow.info().run_id,
                    since=workflow.now() - 2 * horizon,
                ),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=2),
                summary="the lag of the last checks, for its trend",
            )  # fmt: skip
        except ActivityError:
            return PastChecks(checks=[])
        return past

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
                        database.ReplicationRequest(
                            database=db, primary=runbook.primary, standby=standby, compare_settings=True
                        ),
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
            owners=True,
        )
        return await workflow.execute_activity(
            read_dns_record,
            query,
            start_to_close_timeout=timedelta(seconds=DNS_QUERY_TIMEOUT * 3 + 10),
            retry_policy=INFRA_RETRY,
            summary=f"read {dns.record} from every authoritative nameserver",
        )
