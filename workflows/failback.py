"""Failback: bring a service home after a failover, the database with zero loss, traffic in canary stages.

The home region's database must stream from the current primary (``prepare`` re-syncs it with pg_rewind
when asked). After approval the database switches back (fence, replay to the fenced LSN, promote) and the
old primary becomes the standby again; traffic moves back stage by stage through the traffic manager, each
stage judged by an analysis window of synthetic traffic (reads and, declared, writes). The runbook orders the
two: ``failback.database: first`` switches before the canary (the source region then serves on a standby, so
its app must follow the primary), ``last`` after every stage and before DNS. A failed analysis before the
switch sets the home weight back to 0 by itself; after it, traffic back on the source could land on a
read-only database, so a person decides (or the declared ``roll-back`` policy applies where the source's app
follows the primary). An approval stands before 100 %; DNS follows; the run ends completed only if the
region DNS points at takes writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import timedelta
from typing import NoReturn

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.database import activities as database
    from activities.database.results import PrepareStandbyResult, ReplicationStatus
    from activities.dns.plan import DnsChangePlan
    from activities.errors import ErrorType
    from activities.health import HealthProbeRequest, HealthProbeResults, probe_budget, probe_health
    from activities.search_attributes import STEP_ATTR
    from activities.traffic.activities import SetWeightsRequest, set_weights
    from activities.traffic.analysis import CanaryRequest, CanaryResult, analyse
    from runbooks.model import CanaryAnalysis, Failback, Runbook, TrafficConfig
    from workflows.archive import begin_archive, finish_archive
    from workflows.common import load_runbook, tag_run
    from workflows.failback_models import (
        FailbackPlan,
        FailbackReport,
        FailbackRequest,
        StageRecord,
        render_failback,
    )
    from workflows.failover_models import DatabasePlan, Mode, StepRecord
    from workflows.moves import Moves, probes
    from workflows.run_control import Ended

SINGLE_STAGE = Failback(stages=[100])


# The old primary's re-sync after the switch: the one step past promotion that a person may skip.
RESYNC_STEP = "re-sync"
# A failed canary analysis after the switch waits for a decision; a person may skip it (accept the stage).
ANALYSIS_STEP = "analysis at"
# After the database moved, a failed analysis asks (or follows the declared policy) instead of sending all
# traffic back to a source region whose database is now a standby.
ASK_AFTER_SWITCH_PATCH = "canary-ask-after-switch"
# The failback-100 gate binds its own plan (the last stage after the canary's results), not the failback's.
FINAL_STAGE_PLAN_PATCH = "failback-100-plan"


@workflow.defn(name="Failback")
class FailbackWorkflow(Moves[FailbackReport]):
    kind = "failback"
    skippable_steps = frozenset({"verify propagation", "validate health"})

    @workflow.init
    def __init__(self, request: FailbackRequest) -> None:
        info = workflow.info()
        self._request = request
        report = FailbackReport(
            service=request.service,
            home=request.home or "?",
            mode=request.mode,
            reason=request.reason,
            requested_by=request.requested_by,
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            started_at=workflow.now(),
        )
        self._init_control(report, request.requested_by, request.excluded_approvers)

    def _render(self) -> str:
        return render_failback(self._report)

    def _mode(self) -> Mode:
        return self._request.mode

    @workflow.query
    def status(self) -> FailbackReport:
        return self._report

    # ------------------------------------------------------------------------------------------ the run
    @workflow.run
    async def run(self, request: FailbackRequest) -> FailbackReport:
        tag_run(request.service, "failback", "preflight")
        runbook = await self._load(request)
        home = self._report.home
        if request.dry_run:
            return await self._plan_only(runbook, home)
        holder = await self._acquire_lock(request.service)
        try:
            if holder is not None:
                raise Ended(
                    "refused", f"another run holds the lock of {request.service}: {holder.workflow_id}"
                )
            await self._admit_requester(request, home=request.home, mode=request.mode)
            plan = await self._preflight(runbook, home)
            await self._gate("failback", plan.checksum, always=True)
            workflow.upsert_search_attributes([STEP_ATTR.value_set("executing")])
            if plan.database is not None and not plan.database_last:
                await self._switch_database(plan)
            await self._shift_traffic(runbook, plan)
            if plan.database is not None and plan.database_last:
                # Every stage, 100 % included, ran on the source's primary: a rollback always landed on it.
                await self._switch_database(plan)
            await self._cut_over_dns(plan)
            await self._verify_propagation(plan)
            await asyncio.gather(self._wait_out_old_ttl(plan), self._validate_health(plan))
            await self._confirm_writable(plan)
            self._finish("completed")
        except Ended as ended:
            plan_or_none = self._report.plan
            if plan_or_none is not None and ended.outcome in ("aborted", "rejected", "expired"):
                await self._compensate(plan_or_none)
            self._note(str(ended))
            self._finish(ended.outcome)
        finally:
            # Scheduled together with the lock release: one workflow task for both, not two.
            archive = begin_archive("failback")
            await self._release_lock(request.service)
            await finish_archive(archive)
        await self._close_slack()
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.upsert_search_attributes([STEP_ATTR.value_set(self._report.outcome)])
        return self._report

    async def _plan_only(self, runbook: Runbook, home: str) -> FailbackReport:
        """Plan mode: the same preflight and plan a real run approves at its failback gate, then stop.

        No lock, no gate, no archive, and no ``prepare``: where the home database would first be re-synced,
        the plan says so and is built from the replication observed now (the checksum does not depend on it).
        """
        try:
            await self._preflight(runbook, home)
            self._note("dry run: nothing was changed; a real run would open its failback gate on this plan")
            self._finish("dry-run")
        except Ended as ended:
            self._note(str(ended))
            self._finish(ended.outcome)
        workflow.upsert_search_attributes([STEP_ATTR.value_set(self._report.outcome)])
        return self._report

    # -------------------------------------------------------------------------------------- preflight
    async def _load(self, request: FailbackRequest) -> Runbook:
        loaded = await load_runbook(request.service)
        runbook = loaded.runbook
        home = request.home or runbook.primary
        if home not in runbook.regions:
            raise ApplicationError(
                f"{home!r} is not a region of {request.service} (regions: {', '.join(runbook.regions)})",
                type=ErrorType.INVALID_FAILBACK_REQUEST,
                non_retryable=True,
            )
        self._runbook = runbook
        self._update(runbook_sha256=loaded.sha256, home=home)
        return runbook

    async def _preflight(self, runbook: Runbook, home: str) -> FailbackPlan:
        address = runbook.regions[home].address

        async def observe() -> tuple[DnsChangePlan, HealthProbeResults]:
            dns_plan, health = await asyncio.gather(
                self._plan_dns(runbook, address), self._probe(runbook, home)
            )
            return dns_plan, health

        dns_plan, health = await self._step("preflight", observe)
        source = next(
            (n for n, r in runbook.regions.items() if n != home and dns_plan.current.values == [r.address]),
            next(n for n in runbook.regions if n != home),
        )
        self._update(source=source)
        if dns_plan.no_op:
            raise Ended("no-op", f"{runbook.service} already runs in {home}: DNS answers {address}")
        failing = [f"{r.check} ({r.error})" for r in health.results if not r.ok]
        if failing:
            raise Ended("not-ready", f"home region {home} fails its health checks: {', '.join(failing)}")
        replication = await self._home_as_standby(runbook, source, home)
        stages = (runbook.failback or SINGLE_STAGE).stages
        database_plan = (
            None
            if runbook.database is None or replication is None
            else DatabasePlan(
                provider=runbook.database.provider, source=source, target=home, replication=replication
            )
        )
        database_last = _database_last(runbook) and database_plan is not None
        plan = FailbackPlan(
            service=runbook.service, mode=self._request.mode, source=source, target=home,
            target_address=address, dns=dns_plan, database=database_plan, rpo=runbook.objectives.rpo,
            stages=stages, database_last=database_last,
            checksum=_checksum(runbook.service, source, home, dns_plan, stages, database_last),
        )  # fmt: skip
        self._update(plan=plan)
        problem = None if runbook.database is None else runbook.database.resync_problem(source)
        if problem is not None:
            # Said before anything changes: the approver knows the service will end up without a replica.
            self._note(
                f"after the switch drflow cannot re-sync {source} as a standby ({problem}); that step will "
                "fail and wait for a decision: skip it to finish the failback without a replica"
            )
        return plan

    async def _probe(self, runbook: Runbook, region: str) -> HealthProbeResults:
        targets = probes(runbook, region, serving=False)
        results: HealthProbeResults = await self._activity(
            probe_health,
            HealthProbeRequest(probes=targets),
            f"health of {region}",
            timeout=probe_budget(targets),
        )
        return results

    async def _home_as_standby(self, runbook: Runbook, source: str, home: str) -> ReplicationStatus | None:
        """The home database must stream from the current primary; ``prepare`` makes it so."""
        db = runbook.database
        if db is None:
            return None
        status: ReplicationStatus = await self._activity(
            database.measure_replication,
            database.ReplicationRequest(database=db, primary=source, standby=home),
            f"replication {source} → {home}",
        )
        if status.standby_reachable and status.standby_in_recovery and status.primary_in_recovery is False:
            return status
        if not self._request.prepare:
            raise Ended(
                "not-ready",
                f"the {home} database is not a streaming standby of {source}: re-sync it first "
                f"(drflow failback {runbook.service} --prepare does it with pg_rewind)",
            )
        if self._request.dry_run:
            # Plan mode changes nothing: what prepare would do is said, not done.
            self._note(
                f"--prepare: a real run would first re-sync {home} as a standby of {source} (pg_rewind), "
                "then switch"
            )
            return status
        prepared: PrepareStandbyResult = await self._step(
            f"re-sync {home} as a standby of {source}",
            lambda: self._activity(
                database.prepare_standby,
                database.PrepareStandbyDatabaseRequest(database=db, region=home, source=source),
                f"pg_rewind {home} from {source}, stream",
                timeout=timedelta(minutes=10),
            ),
            _describe_prepared,
        )
        self._update(prepared=prepared)
        refreshed: ReplicationStatus = await self._activity(
            database.measure_replication,
            database.ReplicationRequest(database=db, primary=source, standby=home),
            f"replication {source} → {home}",
        )
        return refreshed

    # ------------------------------------------------------------------------------------ the changes
    def _is_skippable(self, step: str) -> bool:
        """Re-syncing the old primary is skippable: the service runs without a replica, but it runs, which
        is better than a run that stops after promotion with DNS and traffic in the read-only region. A
        failed analysis after the switch is too: the person who read it takes the stage and goes on."""
        moved = self._report.promotion is not None
        forward = step.startswith(RESYNC_STEP) or step.startswith(ANALYSIS_STEP)
        return super()._is_skippable(step) or (forward and moved)

    async def _switch_database(self, plan: FailbackPlan) -> None:
        await self._fence(plan)
        await self._promote(plan)
        await self._resync_old_primary(plan)

    async def _resync_old_primary(self, plan: FailbackPlan) -> None:
        """After the switch the old primary becomes the standby again, so the service keeps a replica."""
        db = self._require_runbook().database
        assert db is not None
        resynced = await self._optional_step(
            f"{RESYNC_STEP} {plan.source} as a standby of {plan.target}",
            lambda: self._activity(
                database.prepare_standby,
                database.PrepareStandbyDatabaseRequest(database=db, region=plan.source, source=plan.target),
                f"pg_rewind {plan.source} from {plan.target}, stream",
                timeout=timedelta(minutes=10),
            ),
            _describe_prepared,
        )
        if resynced is None:
            self._note(
                f"{plan.source} was NOT re-synced: the service runs on {plan.target} without a replica until "
                f"{plan.source} is rebuilt as its standby"
            )
        self._update(resynced=resynced)

    async def _shift_traffic(self, runbook: Runbook, plan: FailbackPlan) -> None:
        traffic = runbook.traffic
        if traffic is None:
            return
        analysis = (runbook.failback or SINGLE_STAGE).analysis
        for percent in plan.stages:
            if percent == 100:
                await self._gate("failback-100", self._final_stage_checksum(plan), always=True)
            weights = {plan.target: percent, plan.source: 100 - percent}
            stage = StageRecord(percent=percent)
            self._stages([*self._report.stages, stage])
            applied = await self._step(
                f"canary {percent}%",
                lambda w=weights: self._activity(  # type: ignore[misc]
                    set_weights,
                    SetWeightsRequest(traffic=traffic, weights=w, dns=runbook.dns),
                    f"weights {', '.join(f'{r} {v}%' for r, v in w.items())}",
                ),
            )
            retried = False
            while True:
                result = await self._analyse(traffic, analysis, weights, percent)
                passed = bool(result.passed)
                outcome = "passed" if passed else "failed"
                judged = stage.model_copy(update={"weights": applied, "analysis": result, "outcome": outcome})
                self._stages([*self._report.stages[:-1], judged])
                if passed:
                    if retried:
                        self._finish_step(f"{ANALYSIS_STEP} {percent}%", "ok", detail="passed when retried")
                    break
                if not self._asks_on_failed_analysis(runbook, plan):
                    await self._roll_back_canary(traffic, plan, percent, result.reasons)
                if await self._decide_failed_analysis(plan, percent, weights, result.reasons) == "skip":
                    break
                retried = True

    async def _analyse(
        self, traffic: TrafficConfig, analysis: CanaryAnalysis, weights: dict[str, int], percent: int
    ) -> CanaryResult:
        result: CanaryResult = await self._activity(
            analyse,
            CanaryRequest(
                url=traffic.frontend_url,
                analysis=analysis,
                expected_share={region: value / 100 for region, value in weights.items()},
            ),
            f"analysis window at {percent}%",
            timeout=analysis.duration + timedelta(seconds=60),
        )
        return result

    def _asks_on_failed_analysis(self, runbook: Runbook, plan: FailbackPlan) -> bool:
        """Before the switch a rollback lands on the primary: automatic. After it, the source's database is
        a standby: roll back by itself only under the declared policy, and only where the source's app
        follows the primary; otherwise a person decides."""
        if self._report.promotion is None:
            return False
        policy = (runbook.failback or SINGLE_STAGE).failed_analysis_policy
        if policy == "roll-back" and runbook.follows_primary(plan.source):
            return False
        return workflow.patched(ASK_AFTER_SWITCH_PATCH)

    async def _decide_failed_analysis(
        self, plan: FailbackPlan, percent: int, weights: dict[str, int], reasons: list[str]
    ) -> str:
        """Retry the analysis, skip it (go on with the next stage) or abort with the traffic where it is."""
        runbook = self._require_runbook()
        name = f"{ANALYSIS_STEP} {percent}%"
        source_writes = (
            f"{plan.source}'s app follows the primary ({runbook.writes.how})"
            if runbook.writes is not None and runbook.follows_primary(plan.source)
            else f"{plan.source}'s database is a standby and its app is not declared to follow the primary"
        )
        problem = (
            f"the canary analysis at {percent}% failed ({'; '.join(reasons)}) after the database moved to "
            f"{plan.target}: {source_writes}, so drflow does not send the traffic back by itself"
        )
        self._set_step(StepRecord(name=name, started_at=workflow.now()))
        self._finish_step(name, "failed", error=problem)
        decision = await self._await_decision(name, problem)
        if decision == "abort":
            split = ", ".join(f"{region} {value}%" for region, value in weights.items())
            raise Ended(
                "aborted",
                f"{problem}; aborted: traffic stays {split}, the database is primary on {plan.target}, DNS "
                f"still answers {', '.join(plan.dns.current.values) or '-'}: move the traffic by hand",
            )
        if decision == "skip":
            self._finish_step(name, "skipped", error=problem)
        return decision

    async def _roll_back_canary(
        self, traffic: TrafficConfig, plan: FailbackPlan, percent: int, reasons: list[str]
    ) -> NoReturn:
        rollback = {plan.target: 0, plan.source: 100}
        await self._step(
            f"roll back canary from {percent}%",
            lambda: self._activity(
                set_weights,
                SetWeightsRequest(traffic=traffic, weights=rollback, dns=self._require_runbook().dns),
                f"weights back: {plan.target} 0%",
            ),
        )
        last = self._report.stages[-1].model_copy(update={"outcome": "rolled-back"})
        self._stages([*self._report.stages[:-1], last])
        database = (
            "no database to move"
            if plan.database is None
            else f"the database stays on {plan.source} (primary): it was not switched"
            if self._report.promotion is None
            else f"the database stays on {plan.target} (primary), {plan.source} streams from it"
        )
        raise Ended(
            "aborted",
            f"the canary analysis at {percent}% failed ({'; '.join(reasons)}): traffic is back on "
            f"{plan.source}; {database}",
        )

    def _final_stage_checksum(self, plan: FailbackPlan) -> str:
        """What the failback-100 gate approves: the last stage after the canary results it shows.

        Its own plan since ``failback-100-plan``, so the failback gate's checksum no longer passes it: an
        answer carrying that one is refused as stale. Before the patch both gates bound the same checksum.
        """
        if not workflow.patched(FINAL_STAGE_PLAN_PATCH):
            return plan.checksum
        moved = self._report.promotion is not None
        return final_stage_checksum(plan.checksum, self._report.stages, moved)

    def _stages(self, stages: list[StageRecord]) -> None:
        self._update(stages=stages)
        self._show(self._render())


def _database_last(runbook: Runbook) -> bool:
    """The database switches after the canary: declared, and there is a canary (a traffic section)."""
    return runbook.traffic is not None and runbook.failback is not None and runbook.failback.database_last


def _checksum(
    service: str, source: str, home: str, dns: DnsChangePlan, stages: list[int], database_last: bool = False
) -> str:
    """What the approver saw; the database order is in it only when last, so older plans keep their sum."""
    payload: dict[str, object] = {
        "service": service, "source": source, "home": home, "dns": dns.checksum, "stages": stages
    }  # fmt: skip
    if database_last:
        payload["database"] = "last"
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def final_stage_checksum(plan_checksum: str, stages: list[StageRecord], database_moved: bool) -> str:
    """The failback-100 plan: the failback plan, the stages so far with their outcomes, where the data is."""
    payload = {
        "plan": plan_checksum, "gate": "failback-100", "database_moved": database_moved,
        "stages": [[stage.percent, stage.outcome] for stage in stages],
    }  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _describe_prepared(result: PrepareStandbyResult) -> str:
    if result.already_standby:
        return "already streaming"
    return f"{'rewound, ' if result.rewound else ''}{'streaming' if result.streaming else 'NOT streaming'}"
