"""Failover: move a service's traffic and data to another region, with people approving the risky steps.

Reads like the runbook it executes. Every side effect is an activity that checks state before acting, so a
retry (or a replacement worker after a crash) never applies a change twice; every decision a person makes
arrives as an Update whose validator refuses bad input before anything changes.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import NoReturn, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities import database
    from activities.dns_providers import (
        ApplyDnsChangeRequest,
        DnsChangePlan,
        DnsChangeResult,
        PlanDnsChangeRequest,
        apply_dns_change,
        plan_dns_change,
    )
    from activities.dns_reader import DnsQuery, DnsReadout, read_dns_record
    from activities.health import (
        HealthProbe,
        HealthProbeRequest,
        HealthProbeResults,
        HealthValidationRequest,
        HealthValidationResult,
        ValidatedProbe,
        probe_budget,
        probe_health,
        validate_health,
    )
    from activities.postgres import FenceResult, ReplicationStatus, WaitForReplayResult, lsn_diff
    from activities.propagation import PropagationRequest, PropagationResult, verify_propagation
    from runbooks.loader import LoadedRunbook
    from runbooks.model import Runbook, render_url
    from workflows.common import STEP_ATTR, load_runbook, tag_run
    from workflows.failover_models import (
        DatabasePlan,
        DataLossWindow,
        FailoverPlan,
        FailoverReport,
        FailoverRequest,
        FinalState,
        Outcome,
        StepRecord,
        plan_checksum,
        render_plan,
        render_report,
    )
    from workflows.run_control import ControlledRun, Ended, failure_message

T = TypeVar("T")

INVALID_REQUEST = "InvalidFailoverRequest"
REPLAY_WAIT_PLANNED = timedelta(seconds=60)
REPLAY_WAIT_EMERGENCY = timedelta(seconds=5)


@workflow.defn(name="Failover")
class FailoverWorkflow(ControlledRun[FailoverReport]):
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
        self._init_control(report, request.requested_by)

    def _render(self) -> str:
        return render_report(self._report)

    def _emergency(self) -> bool:
        return self._request.mode == "emergency"

    @workflow.query
    def status(self) -> FailoverReport:
        return self._report

    # ------------------------------------------------------------------------------------------ the run
    @workflow.run
    async def run(self, request: FailoverRequest) -> FailoverReport:
        tag_run(request.service, "failover", "preflight")
        loaded = await self._load(request)
        holder = await self._acquire_lock(request.service)
        try:
            if holder is not None:
                raise Ended(
                    "refused", f"another run holds the lock of {request.service}: {holder.workflow_id}"
                )
            plan = await self._preflight(loaded)
            await self._gate("failover", plan.checksum)
            workflow.upsert_search_attributes([STEP_ATTR.value_set("executing")])
            if plan.database is not None:
                await self._fence(plan)
                await self._gate("promote", plan.checksum)
                await self._promote(plan)
            await self._cut_over_dns(plan)
            await self._verify_propagation(plan)
            await asyncio.gather(self._wait_out_old_ttl(plan), self._validate_health(plan))
            self._finish("completed")
        except Ended as ended:
            await self._end_early(ended)
        finally:
            await self._release_lock(request.service)
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.upsert_search_attributes([STEP_ATTR.value_set(self._report.outcome)])
        return self._report

    # -------------------------------------------------------------------------------------- preflight
    async def _load(self, request: FailoverRequest) -> LoadedRunbook:
        loaded = await load_runbook(request.service)
        runbook = loaded.runbook
        if request.target not in runbook.regions:
            raise ApplicationError(
                f"{request.target!r} is not a region of {request.service} "
                f"(regions: {', '.join(runbook.regions)})",
                type=INVALID_REQUEST,
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
                self._activity(
                    plan_dns_change,
                    PlanDnsChangeRequest(dns=runbook.dns, target_address=target_address),
                    f"plan DNS {runbook.dns.record} → {target_address}",
                ),
                self._probe_target(runbook, target),
            )
            source = _serving_region(runbook, dns_plan, target)
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

    async def _probe_target(self, runbook: Runbook, target: str) -> HealthProbeResults:
        probes = _probes(runbook, target, serving=False)
        results: HealthProbeResults = await self._activity(
            probe_health,
            HealthProbeRequest(probes=probes),
            f"health of {target}",
            timeout=probe_budget(probes),
        )
        return results

    # --------------------------------------------------------------------------------------- approvals
    # ---------------------------------------------------------------------------------- step failures

    # ------------------------------------------------------------------------------------ the changes
    async def _fence(self, plan: FailoverPlan) -> None:
        runbook = self._require_runbook()
        db = runbook.database
        assert db is not None and plan.database is not None
        mode = self._request.mode
        fence: FenceResult = await self._step(
            f"fence {plan.source}",
            lambda: self._activity(
                database.fence,
                database.DatabaseFenceRequest(database=db, region=plan.source, mode=mode),
                f"fence {plan.source} ({mode})",
            ),
            lambda r: (
                f"{r.method}, final LSN {r.final_lsn or 'unknown'}"
                + ("" if r.fenced else f"; NOT fenced: {'; '.join(r.errors)}")
            ),
        )
        self._update(fence=fence)
        wait = REPLAY_WAIT_EMERGENCY if mode == "emergency" else REPLAY_WAIT_PLANNED
        replay: WaitForReplayResult | None = None
        if fence.final_lsn is not None:
            final_lsn = fence.final_lsn
            replayed = await self._step(
                f"wait for {plan.target} to replay {final_lsn}",
                lambda: self._activity(
                    database.wait_for_replay,
                    database.ReplayRequest(
                        database=db,
                        region=plan.target,
                        position=final_lsn,
                        timeout_seconds=wait.total_seconds(),
                    ),
                    f"wait for {plan.target} to replay up to {final_lsn}",
                    timeout=wait + timedelta(seconds=30),
                    heartbeat=True,
                ),
                _describe_replay,
            )
            replay = replayed
            self._update(replay=replay)
        if mode != "emergency" and (replay is None or not replay.reached):
            await self._unfence_and_end(
                plan, "the standby did not replay the fenced primary's last write in time"
            )
        window = await self._data_loss_window(plan, fence, replay)
        self._update(data_loss=window)
        if not window.within_rpo:
            self._note(f"RPO guard: {window.basis}")
            await self._gate("data-loss", plan.checksum, always=True)

    async def _data_loss_window(
        self, plan: FailoverPlan, fence: FenceResult, replay: WaitForReplayResult | None
    ) -> DataLossWindow:
        rpo = plan.rpo.total_seconds()
        if fence.final_lsn is not None and replay is not None and replay.reached:
            return DataLossWindow(
                zero_proven=True, bytes=0, seconds=0.0, within_rpo=True,
                basis=f"{plan.target} replayed {replay.replay_lsn}, at or past the fenced primary's final "
                f"LSN {fence.final_lsn}",
            )  # fmt: skip
        db = self._require_runbook().database
        assert db is not None
        status = await self._activity(
            database.measure_replication,
            database.ReplicationRequest(database=db, primary=plan.source, standby=plan.target),
            f"measure what {plan.target} lacks",
        )
        lost_bytes = None
        if fence.final_lsn is not None and status.standby_replay_lsn is not None:
            lost_bytes = max(lsn_diff(fence.final_lsn, status.standby_replay_lsn), 0)
        elif status.lag_bytes is not None:
            lost_bytes = status.lag_bytes
        seconds = status.lag_seconds
        within = seconds is not None and seconds <= rpo and lost_bytes is not None
        basis = (
            f"{plan.target} lacks {lost_bytes if lost_bytes is not None else 'an unknown amount of'} bytes"
            f" ({f'{seconds:.1f}s' if seconds is not None else 'age unknown'}) of {plan.source}'s WAL; "
            f"RPO {rpo:g}s"
        )
        return DataLossWindow(
            zero_proven=False, bytes=lost_bytes, seconds=seconds, within_rpo=within, basis=basis
        )

    async def _promote(self, plan: FailoverPlan) -> None:
        db = self._require_runbook().database
        assert db is not None
        promotion = await self._step(
            f"promote {plan.target}",
            lambda: self._activity(
                database.promote,
                database.DatabasePromoteRequest(database=db, region=plan.target),
                f"promote {plan.target}",
                timeout=timedelta(seconds=120),
            ),
            lambda r: (
                ("already primary" if r.already_primary else f"promoted at {r.replay_lsn_at_promotion}")
                + f", timeline {r.timeline}, writable {r.writable}"
            ),
        )
        self._update(promotion=promotion)

    async def _cut_over_dns(self, plan: FailoverPlan) -> None:
        runbook = self._require_runbook()
        change: DnsChangeResult = await self._step(
            f"cut DNS over to {plan.target_address}",
            lambda: self._activity(
                apply_dns_change,
                ApplyDnsChangeRequest(dns=runbook.dns, plan=plan.dns),
                f"{runbook.dns.provider}: {runbook.dns.record} → {plan.target_address}",
            ),
            lambda r: (
                f"{', '.join(r.before.values) or '-'} → {', '.join(r.after.values)}"
                + ("" if r.applied else " (already in place)")
            ),
        )
        self._update(dns_change=change)

    async def _verify_propagation(self, plan: FailoverPlan) -> None:
        runbook = self._require_runbook()
        dns = runbook.dns
        budget = dns.propagation_budget
        query = DnsQuery(record=dns.record, type=dns.type, zone=dns.zone, nameservers=dns.nameservers)
        result = await self._optional_step(
            "verify propagation",
            lambda: self._activity(
                verify_propagation,
                PropagationRequest(
                    query=query, expected=[plan.target_address], timeout_seconds=budget.total_seconds()
                ),
                f"every authoritative nameserver answers {plan.target_address}",
                timeout=budget + timedelta(seconds=30),
                heartbeat=True,
            ),
            _describe_propagation,
        )
        self._update(propagation=result)

    async def _wait_out_old_ttl(self, plan: FailoverPlan) -> None:
        ttl = plan.dns.current.ttl or self._require_runbook().dns.ttl
        started = workflow.now()
        self._set_step(StepRecord(name=f"wait out the old TTL ({ttl}s)", started_at=started))
        await workflow.sleep(timedelta(seconds=ttl), summary="resolvers may serve the old answer this long")
        self._finish_step(f"wait out the old TTL ({ttl}s)", "ok", detail="clients moved")
        self._update(ttl_wait_seconds=(workflow.now() - started).total_seconds())

    async def _validate_health(self, plan: FailoverPlan) -> None:
        runbook = self._require_runbook()
        checks = {c.name: c for c in runbook.checks_for(plan.target)}
        probes = [
            ValidatedProbe(probe=p, consecutive_successes=checks[p.check].consecutive_successes,
                           interval=checks[p.check].interval)
            for p in _probes(runbook, plan.target, serving=True)
        ]  # fmt: skip
        budget = max(runbook.health_minimum * 3, timedelta(seconds=30))
        result = await self._optional_step(
            "validate health",
            lambda: self._activity(
                validate_health,
                HealthValidationRequest(probes=probes, timeout=budget),
                f"{len(probes)} health checks on {plan.target}, consecutive successes",
                timeout=budget + timedelta(seconds=30),
                heartbeat=True,
            ),
            _describe_health,
        )
        self._update(health=result)

    # ----------------------------------------------------------------------------------- compensation
    async def _unfence_and_end(self, plan: FailoverPlan, why: str) -> NoReturn:
        await self._compensate(plan)
        raise Ended("aborted", why)

    async def _compensate(self, plan: FailoverPlan) -> None:
        """Fenced but not promoted: giving the old primary its service back is safe and is done at once."""
        db = self._require_runbook().database
        fence = self._report.fence
        if db is None or fence is None or not fence.fenced or self._report.promotion is not None:
            return
        try:
            result = await self._activity(
                database.unfence,
                database.DatabaseUnfenceRequest(database=db, region=plan.source),
                f"compensate: unfence {plan.source}",
            )
        except ActivityError as err:
            self._note(f"could not unfence {plan.source}: {failure_message(err)}")
            return
        self._update(compensation=result)
        self._note(f"compensated: {plan.source} serves again ({'; '.join(result.actions)})")

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
    def _finish(self, outcome: Outcome) -> None:
        now = workflow.now()
        rto = (now - self._report.started_at).total_seconds() if outcome == "completed" else None
        self._update(
            outcome=outcome, finished_at=now, achieved_rto_seconds=rto, open_gate=None, waiting_step=None
        )
        self._show(self._render())


def _probes(runbook: Runbook, region: str, serving: bool) -> list[HealthProbe]:
    spec = runbook.regions[region]
    return [
        HealthProbe(
            region=region, check=c.name, url=render_url(c, region, spec), http=c.http, timeout=c.timeout
        )
        for c in runbook.checks_for(region, serving=serving)
    ]


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


def _describe_replay(result: WaitForReplayResult) -> str:
    return f"replayed {result.replay_lsn} in {result.waited_ms:.0f} ms" if result.reached else "not reached"


def _describe_propagation(result: PropagationResult) -> str:
    return ", ".join(f"{n.name} {n.converged_after_ms or 0:.0f} ms" for n in result.nameservers)


def _describe_health(result: HealthValidationResult) -> str:
    return ", ".join(f"{c.check} {c.required}x in {c.passed_after_ms or 0:.0f} ms" for c in result.checks)


__all__ = ["FailoverWorkflow", "render_plan"]
