"""The moves every failover and failback makes: fence and switch the database, move DNS, prove it.

A mixin over ``ControlledRun``: each move is a step (retry / skip / abort on failure) made of idempotent
activities, and records its result under the same report field in every kind of run.
"""

from __future__ import annotations

from datetime import timedelta
from typing import NoReturn, Protocol, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.database import activities as database
    from activities.database.results import (
        FenceResult,
        PromoteResult,
        UnfenceResult,
        WaitForReplayResult,
        lsn_diff,
    )
    from activities.dns.activities import (
        DnsChangeStatusRequest,
        apply_dns_change,
        plan_dns_change,
        wait_for_change,
    )
    from activities.dns.plan import (
        ApplyDnsChangeRequest,
        DnsChangePlan,
        DnsChangeResult,
        DnsRecordState,
        PlanDnsChangeRequest,
        desired_state,
        normalise_value,
    )
    from activities.dns.propagation import PropagationRequest, PropagationResult, verify_propagation
    from activities.dns.reader import DnsQuery
    from activities.health import (
        HealthProbe,
        HealthValidationRequest,
        HealthValidationResult,
        ValidatedProbe,
        validate_health,
        validation_budget,
    )
    from activities.traffic.activities import ReadWeightsRequest, read_weights
    from activities.traffic.provider import TrafficWeightsState
    from runbooks.model import Runbook, render_url
    from workflows.failover_models import DatabasePlan, DataLossWindow, Mode, MoveReport, Outcome, StepRecord
    from workflows.run_control import ControlledRun, Ended, failure_message

REPLAY_WAIT_PLANNED = timedelta(seconds=60)
REPLAY_WAIT_EMERGENCY = timedelta(seconds=5)
# RDS proves replay with CloudWatch's one-minute ReplicaLag after the fence's reboot: minutes, not seconds.
# A value only, on a branch no earlier RDS run took (its fence reported no position): no patch needed.
REPLAY_WAIT_RDS = timedelta(minutes=10)

# Each patch is asked for only on the branch it changes, so runs that never take the branch pay nothing.
FENCE_CONFIRMED_PATCH = "fence-confirmed"  # an unconfirmed fence opens the unfenced gate before promotion
RPO_BYTES_PATCH = "rpo-bytes"  # known-lost bytes with no measurable age are not "within the RPO"
WRITABLE_PATCH = "writable-before-dns"  # a promotion that is not writable is a failed step
UNFENCE_STEP_PATCH = "unfence-step"  # a failed compensation is a failed step, not a note
WRITABLE_AT_END_PATCH = "writable-at-end"  # never completed while DNS points at a region that cannot write


M = TypeVar("M", bound=MoveReport)


class MovePlan(Protocol):
    """What a move needs from a plan; FailoverPlan and FailbackPlan both provide it."""

    @property
    def source(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def target_address(self) -> str: ...
    @property
    def dns(self) -> DnsChangePlan: ...
    @property
    def database(self) -> DatabasePlan | None: ...
    @property
    def rpo(self) -> timedelta: ...
    @property
    def checksum(self) -> str: ...


class Moves(ControlledRun[M]):
    def _mode(self) -> Mode:
        return "planned"

    async def _plan_dns(self, runbook: Runbook, target_address: str) -> DnsChangePlan:
        """The DNS change to approve; with dns-weighted traffic, planned here from the served weights."""
        traffic = runbook.weighted_traffic
        if traffic is not None:
            served: TrafficWeightsState = await self._activity(
                read_weights,
                ReadWeightsRequest(traffic=traffic, dns=runbook.dns),
                f"read the weights of {runbook.dns.record}",
            )
            return weighted_dns_plan(runbook, served.weights, target_address)
        plan: DnsChangePlan = await self._activity(
            plan_dns_change,
            PlanDnsChangeRequest(dns=runbook.dns, target_address=target_address),
            f"plan DNS {runbook.dns.record} → {target_address}",
        )
        return plan

    def _finish(self, outcome: Outcome) -> None:
        """Close the report; a completed run's duration from start to recovery is its achieved RTO."""
        now = workflow.now()
        rto = (now - self._report.started_at).total_seconds() if outcome == "completed" else None
        self._update(
            outcome=outcome, finished_at=now, achieved_rto_seconds=rto, open_gate=None, waiting_step=None
        )
        self._show(self._render())

    async def _fence(self, plan: MovePlan) -> None:
        runbook = self._require_runbook()
        db = runbook.database
        assert db is not None and plan.database is not None
        mode = self._mode()
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
        if mode != "emergency" and plan.database.provider == "rds":
            wait = REPLAY_WAIT_RDS
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
                ),
                _describe_replay,
            )
            replay = replayed
            self._update(replay=replay)
        if plan.database.provider == "aurora-global" and mode != "emergency":
            self._update(
                data_loss=DataLossWindow(
                    zero_proven=True,
                    bytes=0,
                    seconds=0.0,
                    within_rpo=True,
                    basis="SwitchoverGlobalCluster switches only once the target has caught up: no data loss "
                    "by design (Aurora reports no LSNs to compare)",
                )
            )
            return
        if mode != "emergency" and (replay is None or not replay.reached):
            await self._unfence_and_end(
                plan, "the standby did not replay the fenced primary's last write in time"
            )
        window = await self._data_loss_window(plan, fence, replay)
        self._update(data_loss=window)
        if not window.within_rpo:
            self._note(f"RPO guard: {window.basis}")
            await self._gate("data-loss", plan.checksum, always=True)
        await self._confirm_fence(plan, fence)

    async def _confirm_fence(self, plan: MovePlan, fence: FenceResult) -> None:
        """Never promote after an unconfirmed fence without a person saying so, with a reason.

        Accepting data loss is not accepting two primaries: if the old primary may still take writes, the
        ``unfenced`` gate asks for an explicit override and the report says the promotion had no fence.
        """
        if fence.fenced or not workflow.patched(FENCE_CONFIRMED_PATCH):
            return
        why = "; ".join(fence.errors) or f"method {fence.method}: nothing stops {plan.source} taking writes"
        self._note(
            f"the fence of {plan.source} is NOT confirmed ({why}): promoting {plan.target} could leave two "
            "primaries; the unfenced gate needs an approval with a reason"
        )
        await self._gate("unfenced", plan.checksum, always=True)
        answer = self._report.approvals[-1]
        self._update(
            unfenced_promotion=f"approved by {answer.by} via {answer.channel}: {answer.reason}; "
            f"fence of {plan.source}: {why}"
        )

    async def _data_loss_window(
        self, plan: MovePlan, fence: FenceResult, replay: WaitForReplayResult | None
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
        rpo_bytes = self._require_runbook().objectives.rpo_bytes
        if lost_bytes and (not seconds or rpo_bytes is not None) and workflow.patched(RPO_BYTES_PATCH):
            return _byte_window(plan, lost_bytes, seconds, rpo, rpo_bytes)
        basis = (
            f"{plan.target} lacks {lost_bytes if lost_bytes is not None else 'an unknown amount of'} bytes"
            f" ({f'{seconds:.1f}s' if seconds is not None else 'age unknown'}) of {plan.source}'s WAL; "
            f"RPO {rpo:g}s"
        )
        return DataLossWindow(
            zero_proven=False, bytes=lost_bytes, seconds=seconds, within_rpo=within, basis=basis
        )

    async def _promote(self, plan: MovePlan) -> None:
        db = self._require_runbook().database
        assert db is not None
        name = f"promote {plan.target}"

        async def promote() -> PromoteResult:
            result: PromoteResult = await self._step(
                name,
                lambda: self._activity(
                    database.promote,
                    database.DatabasePromoteRequest(database=db, region=plan.target, mode=self._mode()),
                    f"promote {plan.target}",
                    timeout=timedelta(seconds=120),
                ),
                lambda r: (
                    ("already primary" if r.already_primary else f"promoted at {r.replay_lsn_at_promotion}")
                    + f", timeline {r.timeline}, writable {r.writable}"
                ),
            )
            self._update(promotion=result)
            return result

        promotion = await promote()
        # DNS never moves to a database that does not take writes: retry (promotion is idempotent and
        # proves writability again) or abort, which leaves DNS where it is and says so.
        while not promotion.writable and workflow.patched(WRITABLE_PATCH):
            problem = (
                f"{plan.target} is promoted but a write did not commit "
                f"({'; '.join(promotion.actions[-1:])}); DNS stays on {plan.source} until it does"
            )
            self._finish_step(name, "failed", error=problem)
            if await self._await_decision(name, problem) != "retry":
                raise Ended("aborted", f"{problem}: aborted, the database moved and DNS did not")
            promotion = await promote()

    def _past_point_of_no_return(self) -> bool:
        return self._report.promotion is not None

    async def _confirm_writable(self, plan: MovePlan) -> None:
        """The last step before "completed": the region DNS points at reaches a database that takes writes.

        Its own database, or (its app declared to follow the primary) any region's. Health checks may have
        been skipped and a database may fail after its promotion: a run that ends with DNS on a region that
        cannot write waits for a person (retry or abort) and never ends as completed.
        """
        runbook = self._require_runbook()
        db = runbook.database
        if db is None or plan.database is None or not workflow.patched(WRITABLE_AT_END_PATCH):
            return
        follows = runbook.follows_primary(plan.target)
        regions = [plan.target, *(r for r in runbook.regions if follows and r != plan.target)]
        name = f"confirm {plan.target} reaches a writable database"
        while True:
            result: database.WritableResult = await self._step(
                name,
                lambda: self._activity(
                    database.verify_writable,
                    database.WritableRequest(database=db, regions=regions),
                    f"a write through {', '.join(regions)}",
                ),
                lambda r: "; ".join(r.checks),
            )
            if result.writable:
                return
            problem = (
                f"DNS points at {plan.target}, and no database it writes to takes writes "
                f"({'; '.join(result.checks)})"
            )
            self._finish_step(name, "failed", error=problem)
            if await self._await_decision(name, problem) != "retry":
                raise Ended("aborted", f"{problem}: the run does not end as completed")

    async def _cut_over_dns(self, plan: MovePlan) -> None:
        runbook = self._require_runbook()
        if runbook.weighted_traffic is not None:
            # The weighted records are the DNS change: the failover's traffic step (target 100, others 0) or
            # the failback's canary stages move them; there is no simple record to rewrite.
            return
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
        if change.change_id is not None:
            await self._wait_for_provider(change.change_id)

    async def _wait_for_provider(self, change_id: str) -> None:
        """Providers with a change status (Route53 INSYNC, Cloud DNS done) are waited for, time recorded."""
        runbook = self._require_runbook()
        budget = runbook.dns.propagation_budget
        status = await self._step(
            f"wait for {runbook.dns.provider} to apply change {change_id}",
            lambda: self._activity(
                wait_for_change,
                DnsChangeStatusRequest(
                    dns=runbook.dns, change_id=change_id, timeout_seconds=budget.total_seconds()
                ),
                f"{runbook.dns.provider} change {change_id} live",
                timeout=budget + timedelta(seconds=30),
            ),
            lambda r: f"{r.status} after {r.waited_ms:.0f} ms",
        )
        self._update(dns_sync=status)

    async def _verify_propagation(self, plan: MovePlan) -> None:
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
            ),
            _describe_propagation,
        )
        self._update(propagation=result)

    async def _wait_out_old_ttl(self, plan: MovePlan) -> None:
        ttl = plan.dns.current.ttl or self._require_runbook().dns.ttl
        started = workflow.now()
        self._set_step(StepRecord(name=f"wait out the old TTL ({ttl}s)", started_at=started))
        await workflow.sleep(timedelta(seconds=ttl), summary="resolvers may serve the old answer this long")
        self._finish_step(f"wait out the old TTL ({ttl}s)", "ok", detail="clients moved")
        self._update(ttl_wait_seconds=(workflow.now() - started).total_seconds())

    async def _validate_health(self, plan: MovePlan) -> None:
        runbook = self._require_runbook()
        checks = {c.name: c for c in runbook.checks_for(plan.target)}
        validated = [
            ValidatedProbe(probe=p, consecutive_successes=checks[p.check].consecutive_successes,
                           interval=checks[p.check].interval)
            for p in probes(runbook, plan.target, serving=True)
        ]  # fmt: skip
        # Values only (the validation window, the start-to-close timeout): the same command as before, so
        # open runs replay unchanged. The window covers a clean streak of every check, and the activity
        # heartbeats while it waits, so any interval and timeout the runbook model accepts can pass.
        window, start_to_close = validation_budget(validated, runbook.health_minimum)
        result = await self._optional_step(
            "validate health",
            lambda: self._activity(
                validate_health,
                HealthValidationRequest(probes=validated, timeout=window),
                f"{len(validated)} health checks on {plan.target}, consecutive successes",
                timeout=start_to_close,
            ),
            _describe_health,
        )
        self._update(health=result)

    async def _unfence_and_end(self, plan: MovePlan, why: str) -> NoReturn:
        await self._compensate(plan)
        raise Ended("aborted", why)

    async def _compensate(self, plan: MovePlan) -> None:
        """Fenced but not promoted: giving the old primary its service back is safe and is done at once."""
        db = self._require_runbook().database
        fence = self._report.fence
        if db is None or fence is None or not fence.fenced or self._report.promotion is not None:
            return
        name = f"compensate: unfence {plan.source}"
        while True:
            try:
                result: UnfenceResult = await self._activity(
                    database.unfence,
                    database.DatabaseUnfenceRequest(database=db, region=plan.source),
                    name,
                )
                break
            except ActivityError as err:
                message = failure_message(err)
                if not workflow.patched(UNFENCE_STEP_PATCH):
                    self._note(f"could not unfence {plan.source}: {message}")
                    return
                # A failed unfence leaves the service without a primary: a failed step a person answers.
                self._set_step(StepRecord(name=name, started_at=workflow.now()))
                self._finish_step(name, "failed", error=message)
                if await self._await_decision(name, message) != "retry":
                    self._note(
                        f"{plan.source} is STILL FENCED and {plan.target} was not promoted: the service has "
                        f"no primary until someone unfences {plan.source} ({message})"
                    )
                    return
        self._update(compensation=result)
        self._note(f"compensated: {plan.source} serves again ({'; '.join(result.actions)})")


def weighted_dns_plan(runbook: Runbook, weights: dict[str, int], target_address: str) -> DnsChangePlan:
    """The DNS plan of a dns-weighted runbook, from the served weights (pure: the workflow builds it).

    Served now: the addresses of the regions whose weight is above 0; desired: the target's address alone,
    which is what the weighted records answer once the target holds 100 % and every other region 0.
    """
    dns = runbook.dns
    current = sorted(
        {
            normalise_value(dns.type, runbook.regions[region].address)
            for region, weight in weights.items()
            if weight > 0 and region in runbook.regions
        }
    )
    return DnsChangePlan.build(
        dns.provider,
        dns.zone,
        DnsRecordState(record=dns.record, type=dns.type, ttl=dns.ttl, values=current),
        desired_state(dns, target_address),
    )


def probes(runbook: Runbook, region: str, serving: bool) -> list[HealthProbe]:
    spec = runbook.regions[region]
    return [
        HealthProbe(
            region=region, check=c.name, url=render_url(c, region, spec), http=c.http, timeout=c.timeout
        )
        for c in runbook.checks_for(region, serving=serving)
    ]


def _describe_replay(result: WaitForReplayResult) -> str:
    return f"replayed {result.replay_lsn} in {result.waited_ms:.0f} ms" if result.reached else "not reached"


def _describe_propagation(result: PropagationResult) -> str:
    return ", ".join(f"{n.name} {n.converged_after_ms or 0:.0f} ms" for n in result.nameservers)


def _describe_health(result: HealthValidationResult) -> str:
    return ", ".join(f"{c.check} {c.required}x in {c.passed_after_ms or 0:.0f} ms" for c in result.checks)


def _byte_window(
    plan: MovePlan, lost: int, seconds: float | None, rpo: float, rpo_bytes: int | None
) -> DataLossWindow:
    """Bytes known lost decide, whatever the lag in seconds says.

    A standby that replayed everything it received reads a lag of 0 s while it lacks the primary's last
    ``lost`` bytes: their age is unknown, so they may be older than the RPO. With an RPO in bytes, the loss
    must fit it too.
    """
    age_known = bool(seconds)
    within = age_known and seconds is not None and seconds <= rpo and (rpo_bytes is None or lost <= rpo_bytes)
    age = f"{seconds:.1f}s" if age_known and seconds is not None else "age unknown: possibly above the RPO"
    objective = f"RPO {rpo:g}s" + (f" and {rpo_bytes} bytes" if rpo_bytes is not None else "")
    return DataLossWindow(
        zero_proven=False, bytes=lost, seconds=seconds if age_known else None, within_rpo=within,
        basis=f"{plan.target} lacks {lost} bytes ({age}) of {plan.source}'s WAL; {objective}",
        rpo_seconds=rpo, rpo_bytes=rpo_bytes,
    )  # fmt: skip
