"""Failover: move a service's traffic and data to another region, with people approving the risky steps.

Reads like the runbook it executes. Every side effect is an activity that checks state before acting, so a
retry (or a replacement worker after a crash) never applies a change twice; every decision a person makes
arrives as an Update whose validator refuses bad input before anything changes.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.cloud.preflight import PreflightReport
    from activities.database import activities as database
    from activities.database.activities import DatabasePreflightRequest, db_preflight
    from activities.database.results import ReplicationStatus
    from activities.dns.activities import DnsPreflightRequest, dns_preflight
    from activities.dns.plan import DnsChangePlan
    from activities.dns.reader import DnsQuery, DnsReadout, read_dns_record
    from activities.errors import ErrorType
    from activities.health import (
        HealthProbeRequest,
        HealthProbeResults,
        probe_budget,
        probe_health,
    )
    from activities.search_attributes import STEP_ATTR
    from activities.traffic.activities import SetWeightsRequest, set_weights
    from runbooks.loader import LoadedRunbook
    from runbooks.model import Runbook
    from workflows.archive import begin_archive, finish_archive
    from workflows.common import load_runbook, tag_run
    from workflows.failover_models import (
        DatabasePlan,
        FailoverPlan,
        FailoverReport,
        FailoverRequest,
        FinalState,
        Mode,
        plan_checksum,
        render_report,
    )
    from workflows.moves import Moves, probes
    from workflows.run_control import Ended, failure_message

CLOUD_DNS = frozenset({"route53", "clouddns"})
CLOUD_DATABASES = frozenset({"rds", "aurora-global"})


@workflow.defn(name="Failover")
class FailoverWorkflow(Moves[FailoverReport]):
    kind = "failover"
    skippable_steps = frozenset({"verify propagation", "validate health"})

    @workflow.init
    def __init__(self, request: FailoverRequest) -> None:
        info = workflow.info()
        self._request = request
        report = FailoverReport(
            service=request.service,
            target=request.target,
            mode=request.mode,
            reason=request.reason,
            requested_by=request.requested_by,
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            started_at=workflow.now(),
        )
        self._init_control(report, request.requested_by, request.excluded_approvers)

    def _render(self) -> str:
        return render_report(self._report)

    def _emergency(self) -> bool:
        return self._request.mode == "emergency"

    def _mode(self) -> Mode:
        return self._request.mode

    @workflow.query
    def status(self) -> FailoverReport:
        return self._report

    # ------------------------------------------------------------------------------------------ the run
    @workflow.run
    async def run(self, request: FailoverRequest) -> FailoverReport:
        tag_run(request.service, "failover", "preflight")
        loaded = await self._load(request)
        if request.dry_run:
            return await self._plan_only(loaded)
        holder = await self._acquire_lock(request.service)
        try:
            if holder is not None:
                raise Ended(
                    "refused", f"another run holds the lock of {request.service}: {holder.workflow_id}"
                )
            await self._admit_requester(request, target=request.target, mode=request.mode)
            plan = await self._preflight(loaded)
            await self._gate("failover", plan.checksum)
            workflow.upsert_search_attributes([STEP_ATTR.value_set("executing")])
            if plan.database is not None:
                await self._fence(plan)
                await self._gate("promote", plan.checksum)
                await self._promote(plan)
            await self._cut_over_dns(plan)
            await self._move_traffic_weights(plan)
            await self._verify_propagation(plan)
            await asyncio.gather(self._wait_out_old_ttl(plan), self._validate_health(plan))
            await self._confirm_writable(plan)
            self._finish("completed")
        except Ended as ended:
            await self._end_early(ended)
        finally:
            # Scheduled together with the lock release: one workflow task for both, not two.
            archive = begin_archive("failover")
            await self._release_lock(request.service)
            await finish_archive(archive)
        await self._close_slack()
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.upsert_search_attributes([STEP_ATTR.value_set(self._report.outcome)])
        return self._report

    async def _plan_only(self, loaded: LoadedRunbook) -> FailoverReport:
        """Plan mode: the same preflight and plan a real run makes before its approval gate, then stop.

        No lock (a plan changes nothing, so it may be made while another run holds the service), no gate,
        no archive. Only runs started with ``dry_run`` take this branch, so no recorded history meets it.
        """
        try:
            await self._preflight(loaded)
            self._note("dry run: nothing was changed; a real run would open its approval gate on this plan")
            self._finish("dry-run")
        except Ended as ended:
            self._note(str(ended))
            self._finish(ended.outcome)
        workflow.upsert_search_attributes([STEP_ATTR.value_set(self._report.outcome)])
        return self._report

    async def _move_traffic_weights(self, plan: FailoverPlan) -> None:
        """Where a traffic manager sits in front of the regions, it sends everything to the target too."""
        runbook = self._require_runbook()
        traffic = runbook.traffic
        # No patch needed: runbooks could not name a traffic manager before this step existed, so no
        # recorded run with one lacks it (and a patch marker costs billable actions).
        if traffic is None:
            return
        weights = {region: 100 if region == plan.target else 0 for region in traffic.servers}
        await self._step(
            f"send all traffic to {plan.target}",
            lambda: self._activity(
                set_weights,
                SetWeightsRequest(traffic=traffic, weights=weights, dns=runbook.dns),
                f"{traffic.provider}: {plan.target} 100%",
            ),
            lambda r: f"{r.before.describe()} → {r.after.describe()}",
        )

    # -------------------------------------------------------------------------------------- preflight
    async def _load(self, request: FailoverRequest) -> LoadedRunbook:
        loaded = await load_runbook(request.service)
        runbook = loaded.runbook
        if request.target not in runbook.regions:
            raise ApplicationError(
                f"{request.target!r} is not a region of {request.service} "
                f"(regions: {', '.join(runbook.regions)})",
                type=ErrorType.INVALID_FAILOVER_REQUEST,
                non_retryable=True,
            )
        self._runbook = runbook
        self._update(runbook_sha256=loaded.sha256)
        if request.requested_by is None and runbook.approvals.separation_of_duties:
            self._note("requested_by was not given: separation of duties cannot be checked for this run")
        return loaded

    async def _preflight(self, loaded: LoadedRunbook) -> FailoverPlan:
        runbook = loaded.runbook
        target = self._request.target
        target_address = runbook.regions[target].address

        async def observe() -> tuple[DnsChangePlan, HealthProbeResults, ReplicationStatus | None, str]:
            dns_plan, health = await asyncio.gather(
                self._plan_dns(runbook, target_address), self._probe_target(runbook, target)
            )
            source = _serving_region(runbook, dns_plan, target)
            await self._provider_preflight(runbook, source, target)
            replication = None
            if runbook.database is not None and source != target:
                replication = await self._activity(
                    database.measure_replication,
                    database.ReplicationRequest(database=runbook.database, primary=source, standby=target),
                    f"measure replication {source} → {target}",
                )
            return dns_plan, health, replication, source

        dns_plan, health, replication, source = await self._step("preflight", observe)
        self._update(source=source)
        problems, warnings = _preflight_findings(runbook, target, dns_plan, health, replication)
        database_plan = (
            None
            if runbook.database is None or replication is None
            else DatabasePlan(
                provider=runbook.database.provider, source=source, target=target, replication=replication
            )
        )
        plan = FailoverPlan(
            service=runbook.service,
            mode=self._request.mode,
            source=source,
            target=target,
            target_address=target_address,
            dns=dns_plan,
            database=database_plan,
            target_health=health.results,
            rto=runbook.objectives.rto,
            rpo=runbook.objectives.rpo,
            warnings=warnings,
            checksum=plan_checksum(
                runbook.service, self._request.mode, source, target, dns_plan, database_plan
            ),
        )
        self._update(plan=plan)
        if problems:
            raise Ended("not-ready", "; ".join(problems))
        if source == target and dns_plan.no_op:
            raise Ended("no-op", f"{runbook.service} already runs in {target}: DNS answers {target_address}")
        return plan

    async def _provider_preflight(self, runbook: Runbook, source: str, target: str) -> None:
        """Cloud providers check credentials, resources and permissions before anything changes."""
        reports: list[PreflightReport] = []
        if runbook.dns.provider in CLOUD_DNS:
            reports.append(
                await self._activity(
                    dns_preflight,
                    DnsPreflightRequest(
                        dns=runbook.dns,
                        weighted=(
                            dict(runbook.weighted_traffic.servers) if runbook.weighted_traffic else None
                        ),
                    ),
                    f"{runbook.dns.provider} preflight",
                )
            )
        db = runbook.database
        if db is not None and db.provider in CLOUD_DATABASES and source != target:
            reports.append(
                await self._activity(
                    db_preflight,
                    DatabasePreflightRequest(database=db, primary=source, standby=target),
                    f"{db.provider} preflight",
                )
            )
        problems = [problem for report in reports for problem in report.problems]
        self._update(provider_checks=reports)
        if problems:
            raise Ended("not-ready", "; ".join(problems))

    async def _probe_target(self, runbook: Runbook, target: str) -> HealthProbeResults:
        targets = probes(runbook, target, serving=False)
        results: HealthProbeResults = await self._activity(
            probe_health,
            HealthProbeRequest(probes=targets),
            f"health of {target}",
            timeout=probe_budget(targets),
        )
        return results

    # --------------------------------------------------------------------------------------- approvals
    # ---------------------------------------------------------------------------------- step failures

    # ------------------------------------------------------------------------------------ the changes
    # ----------------------------------------------------------------------------------- compensation
    async def _end_early(self, ended: Ended) -> None:
        plan = self._report.plan
        if plan is not None and ended.outcome in ("aborted", "rejected", "expired"):
            await self._compensate(plan)
            if self._report.fence is not None:
                self._update(final_state=await self._final_state(plan))
        self._note(str(ended))
        self._finish(ended.outcome)

    async def _final_state(self, plan: FailoverPlan) -> FinalState:
        runbook = self._require_runbook()
        notes: list[str] = []
        dns_state: DnsReadout | None = None
        replication: ReplicationStatus | None = None
        dns = runbook.dns
        try:
            dns_state = await self._activity(
                read_dns_record,
                DnsQuery(record=dns.record, type=dns.type, zone=dns.zone, nameservers=dns.nameservers),
                "final state: DNS",
            )
        except ActivityError as err:
            notes.append(f"DNS could not be read: {failure_message(err)}")
        if runbook.database is not None:
            try:
                replication = await self._activity(
                    database.measure_replication,
                    database.ReplicationRequest(
                        database=runbook.database, primary=plan.source, standby=plan.target
                    ),
                    "final state: databases",
                )
            except ActivityError as err:
                notes.append(f"databases could not be read: {failure_message(err)}")
        return FinalState(dns=dns_state, replication=replication, notes=notes)

    # ---------------------------------------------------------------------------------------- helpers


def _serving_region(runbook: Runbook, dns_plan: DnsChangePlan, target: str) -> str:
    """The region whose address DNS serves now; the runbook's primary when the answer matches none."""
    for name, region in runbook.regions.items():
        if dns_plan.current.values == [region.address]:
            return name
    return runbook.primary if runbook.primary != target else target


def _preflight_findings(
    runbook: Runbook,
    target: str,
    dns_plan: DnsChangePlan,
    health: HealthProbeResults,
    replication: ReplicationStatus | None,
) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    warnings: list[str] = []
    failing = [f"{r.check} ({r.error})" for r in health.results if not r.ok]
    if failing:
        problems.append(f"target {target} fails its health checks: {', '.join(failing)}")
    if not dns_plan.current.values:
        warnings.append(f"{dns_plan.record} has no {dns_plan.type} record today")
    elif not any(dns_plan.current.values == [r.address] for r in runbook.regions.values()):
        warnings.append(
            f"{dns_plan.record} answers {', '.join(dns_plan.current.values)}, which is no region's address"
        )
    ttl = dns_plan.current.ttl
    if ttl is not None:
        budget = timedelta(seconds=ttl) + runbook.dns.propagation_budget + runbook.health_minimum
        if budget > runbook.objectives.rto:
            warnings.append(
                f"served TTL {ttl}s + propagation budget + health minimum = {budget} exceeds the RTO "
                f"{runbook.objectives.rto}: clients may take longer than the objective"
            )
    if replication is not None:
        if not replication.standby_reachable:
            problems.append(f"the {target} database cannot be reached: {'; '.join(replication.errors)}")
        elif (
            replication.primary_reachable
            and replication.primary_in_recovery is False
            and (replication.standby_in_recovery is False)
        ):
            problems.append(
                f"both {replication.primary_region} and {target} databases accept writes (split brain): "
                "resolve by hand before failing over"
            )
        if (
            replication.lag_seconds is not None
            and replication.lag_seconds > runbook.objectives.rpo.total_seconds()
        ):
            warnings.append(
                f"replication lag {replication.lag_seconds:.1f}s exceeds the RPO {runbook.objectives.rpo}"
            )
    return problems, warnings
