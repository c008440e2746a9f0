"""Aurora Global Database: move the writer to another region's member cluster.

What each step means here:
- **measure**: roles from DescribeGlobalClusters (the member with ``IsWriter``), each member cluster's status,
  and the secondary's lag from CloudWatch: ``AuroraGlobalDBReplicationLag`` and, where the engine publishes
  it (Aurora PostgreSQL), ``AuroraGlobalDBRPOLag``; ``lag_seconds`` is the larger, in seconds. No LSNs.
- **fence**: there is no separate fence. A planned switchover (``SwitchoverGlobalCluster``) demotes the old
  writer itself, and only once the target has caught up: zero data loss is the API's contract, not something
  drflow observes. An emergency failover (``FailoverGlobalCluster`` with ``AllowDataLoss``) leaves the old
  writer to be demoted by Aurora when its region answers again. The fence step therefore only records which
  of these applies (method ``none``), or that the source already is a secondary (fenced).
- **promote**: planned and drill (and an unknown mode) use the switchover; emergency uses the failover with
  ``AllowDataLoss``, which the workflow only reaches after its RPO guard passed or an approver accepted the
  data loss at the ``data-loss`` gate. Then wait until the target is the writer, the global cluster is
  available and no failover is pending. Calls go to the target's region: in an emergency the old one may be
  gone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError
from temporalio.exceptions import ApplicationError

from activities.cloud.aws import (
    AwsClientFactory,
    AwsClients,
    arn_region,
    arn_resource,
    aws_error,
    call,
    error_code,
    latest_metric,
)
from activities.cloud.preflight import PreflightCheck, PreflightReport
from activities.cloud.retry import DEFAULT_BACKOFF, Backoff, heartbeat
from activities.database.provider import no_replay_position
from activities.database.results import (
    FenceMode,
    FenceResult,
    PrepareStandbyResult,
    PromoteResult,
    ReplicationStatus,
    UnfenceResult,
    WaitForReplayResult,
)
from activities.errors import ErrorType
from runbooks.model import AuroraGlobalDatabase

if TYPE_CHECKING:
    from mypy_boto3_rds.type_defs import DBClusterTypeDef, GlobalClusterMemberTypeDef, GlobalClusterTypeDef

LAG_METRICS = ("AuroraGlobalDBReplicationLag", "AuroraGlobalDBRPOLag")
_SERVING = frozenset(
    {"available", "backing-up", "modifying", "maintenance", "upgrading", "resetting-master-credentials"}
)


class AuroraProvider:
    name = "aurora-global"

    def __init__(
        self,
        config: AuroraGlobalDatabase,
        clients: AwsClientFactory | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        poll_seconds: float = 2.0,
    ) -> None:
        self.config = config
        self.clients = clients or AwsClients()
        self.backoff = backoff
        self.poll_seconds = poll_seconds

    def arn(self, region: str) -> str:
        return self.config.clusters[region]

    def aws_region(self, region: str) -> str:
        found = arn_region(self.arn(region))
        if found is None:
            raise ApplicationError(
                f"the cluster ARN of {region} names no AWS region: {self.arn(region)}",
                type=ErrorType.INVALID_RUNBOOK,
                non_retryable=True,
            )
        return found

    def label(self, region: str) -> str:
        return f"{region} ({arn_resource(self.arn(region))} in {self.aws_region(region)})"

    # ------------------------------------------------------------------------------------------ measure
    def measure_replication(self, primary: str, standby: str) -> ReplicationStatus:
        errors: list[str] = []
        try:
            global_cluster = self._global_cluster(prefer=(standby, primary))
        except ApplicationError as error:
            global_cluster = None
            errors.append(error.message)
        members = _members(global_cluster)
        clusters = {region: self._cluster_or_note(region, errors) for region in (primary, standby)}
        roles: dict[str, bool | None] = {}
        for region in (primary, standby):
            member = members.get(self.arn(region))
            if global_cluster is not None and member is None:
                errors.append(
                    f"{self.label(region)} is not a member of global cluster {self.config.global_cluster}"
                )
            roles[region] = None if member is None else not member.get("IsWriter", False)
            if member is not None and member.get("SynchronizationStatus", "connected") != "connected":
                errors.append(
                    f"{self.label(region)} synchronization is {member.get('SynchronizationStatus')}"
                )
        if global_cluster is not None and "FailoverState" in global_cluster:
            state = global_cluster["FailoverState"]
            errors.append(
                f"a {state.get('Status')} switchover or failover from {state.get('FromDbClusterArn')} to "
                f"{state.get('ToDbClusterArn')} is under way"
            )
        lag: float | None = None
        if roles.get(standby):
            lag = self._lag_seconds(standby, errors)
        elif roles.get(standby) is False:
            errors.append(
                f"{self.label(standby)} is the writer of {self.config.global_cluster}, not a secondary"
            )
        return ReplicationStatus(
            primary_region=primary,
            standby_region=standby,
            primary_reachable=_serving(clusters[primary]),
            primary_in_recovery=roles[primary],
            primary_lsn=None,
            standby_reachable=_serving(clusters[standby]),
            standby_in_recovery=roles[standby],
            standby_receive_lsn=None,
            standby_replay_lsn=None,
            replay_paused=None,
            lag_bytes=None,
            lag_seconds=lag,
            errors=errors,
        )

    def _lag_seconds(self, standby: str, errors: list[str]) -> float | None:
        values: list[float] = []
        notes: list[str] = []
        for metric in LAG_METRICS:
            value, problem = latest_metric(
                self.clients,
                self.aws_region(standby),
                namespace="AWS/RDS",
                metric=metric,
                dimension=("DBClusterIdentifier", arn_resource(self.arn(standby))),
                backoff=self.backoff,
            )
            if value is not None:
                values.append(value / 1000)  # both metrics are in milliseconds
            elif problem:
                notes.append(problem)
        if not values:
            errors.extend(notes)
            return None
        return max(values)

    # -------------------------------------------------------------------------------------------- fence
    def fence(self, region: str, mode: FenceMode, timeout_seconds: float = 30) -> FenceResult:
        """Record how the old writer stops writing: Aurora does it at promotion, so nothing changes here."""
        global_cluster = self._global_cluster(prefer=(region,), fallback=True)
        member = _members(global_cluster).get(self.arn(region))
        if member is None:
            raise ApplicationError(
                f"{self.label(region)} is not a member of global cluster {self.config.global_cluster}",
                type=ErrorType.DATABASE_STATE_CONFLICT,
                non_retryable=True,
            )
        label = self.label(region)
        if not member.get("IsWriter", False):
            return FenceResult(
                region=region, method="none", fenced=True, already_fenced=True, final_lsn=None,
                actions=[f"{label} is a secondary of {self.config.global_cluster}: it cannot accept writes"],
                errors=[],
            )  # fmt: skip
        if mode == "emergency":
            return FenceResult(
                region=region, method="none", fenced=False, already_fenced=False, final_lsn=None,
                actions=[
                    "no separate fence: FailoverGlobalCluster (at promotion) moves the writer away from "
                    f"{label}; "
                    "Aurora demotes it to a secondary when its region answers again"
                ],
                errors=[f"{label} keeps accepting writes until the failover; those writes are lost"],
            )  # fmt: skip
        return FenceResult(
            region=region, method="none", fenced=False, already_fenced=False, final_lsn=None,
            actions=[
                f"no separate fence: SwitchoverGlobalCluster (at promotion) demotes {label} itself, only "
                "after "
                "the target has caught up (zero data loss is the API's contract)"
            ],
            errors=[],
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------ promote
    def promote(self, region: str, timeout_seconds: float, mode: FenceMode | None = None) -> PromoteResult:
        started = time.monotonic()
        deadline = started + timeout_seconds
        target_arn = self.arn(region)
        label = self.label(region)
        actions: list[str] = []
        global_cluster = self._global_cluster(prefer=(region,), fallback=True)
        member = _members(global_cluster).get(target_arn)
        if member is None:
            raise ApplicationError(
                f"{label} is not a member of global cluster {self.config.global_cluster}; nothing was "
                "changed",
                type=ErrorType.DATABASE_STATE_CONFLICT,
                non_retryable=True,
            )
        pending = global_cluster.get("FailoverState")
        promoted = False
        if pending is not None and pending.get("ToDbClusterArn") != target_arn:
            raise ApplicationError(
                f"global cluster {self.config.global_cluster} is already moving its writer to "
                f"{pending.get('ToDbClusterArn')} ({pending.get('Status')}); wait for it to finish, then "
                "re-plan",
                type=ErrorType.DATABASE_STATE_CONFLICT,
                non_retryable=True,
            )
        if pending is not None:
            promoted = True
            actions.append(f"a move of the writer to {label} is already under way ({pending.get('Status')})")
        elif member.get("IsWriter", False):
            actions.append(
                f"{label} is already the writer of {self.config.global_cluster}: no promotion needed"
            )
        else:
            promoted = True
            actions.append(self._move_writer(region, mode))
        self._wait_for_writer(region, deadline)
        actions.append(f"{label} is the writer and available: writable per the RDS API")
        return PromoteResult(
            region=region,
            promoted=promoted,
            already_primary=not promoted,
            replay_lsn_at_promotion=None,
            timeline=None,
            writable=True,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
            actions=actions,
        )

    def _move_writer(self, region: str, mode: FenceMode | None) -> str:
        client = self.clients.rds(self.aws_region(region))
        target_arn = self.arn(region)
        name = self.config.global_cluster
        try:
            if mode == "emergency":
                call(
                    client.failover_global_cluster, f"fail over {name}", backoff=self.backoff,
                    safe_to_repeat=False, GlobalClusterIdentifier=name, TargetDbClusterIdentifier=target_arn,
                    AllowDataLoss=True,
                )  # fmt: skip
                return (
                    f"FailoverGlobalCluster {name} to {self.label(region)} with AllowDataLoss (emergency, "
                    "past "
                    "the RPO guard or the data-loss gate)"
                )
            call(
                client.switchover_global_cluster, f"switch over {name}", backoff=self.backoff,
                safe_to_repeat=False, GlobalClusterIdentifier=name, TargetDbClusterIdentifier=target_arn,
            )  # fmt: skip
            return (
                f"SwitchoverGlobalCluster {name} to {self.label(region)} ({mode or 'planned'}: no data loss)"
            )
        except ClientError as error:
            if error_code(error) == "InvalidGlobalClusterStateFault":
                raise ApplicationError(
                    f"global cluster {name} refused to move its writer to {self.label(region)}: "
                    f"{aws_error(error, 'moving the writer').message}; a retry reads its state first",
                    type=ErrorType.PROMOTION_FAILED,
                ) from None
            raise self._promotion_error(error, region) from None
        except BotoCoreError as error:
            raise self._promotion_error(error, region) from None

    def _wait_for_writer(self, region: str, deadline: float) -> None:
        target_arn = self.arn(region)
        while True:
            global_cluster = self._global_cluster(prefer=(region,), fallback=True)
            member = _members(global_cluster).get(target_arn)
            settled = (
                member is not None
                and member.get("IsWriter", False)
                and global_cluster.get("Status") == "available"
                and "FailoverState" not in global_cluster
            )
            if settled and _serving(self._cluster_or_note(region, [])):
                return
            status = global_cluster.get("Status")
            heartbeat(f"{self.config.global_cluster}: {status}")
            if time.monotonic() >= deadline:
                raise ApplicationError(
                    f"{self.config.global_cluster} is still {status} and {self.label(region)} is "
                    f"{'the writer' if member and member.get('IsWriter') else 'not yet the writer'}; a "
                    "retry keeps "
                    "waiting without starting another switchover",
                    type=ErrorType.PROMOTION_FAILED,
                )
            time.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))

    # ------------------------------------------------------------------------------------------ unfence
    def unfence(self, region: str) -> UnfenceResult:
        global_cluster = self._global_cluster(prefer=(region,), fallback=True)
        member = _members(global_cluster).get(self.arn(region))
        writer = bool(member and member.get("IsWriter", False))
        return UnfenceResult(
            region=region,
            restored=writer,
            actions=[
                f"nothing to undo: {self.label(region)} was not fenced (Aurora fences at promotion)",
                f"{self.label(region)} {'is' if writer else 'is not'} the writer of "
                f"{self.config.global_cluster}",
            ],
        )

    # ---------------------------------------------------------------------------- steps Aurora does not have
    def wait_for_replay(self, region: str, position: str, timeout_seconds: float) -> WaitForReplayResult:
        raise no_replay_position(self.config.provider)

    # ---------------------------------------------------------------------------------------- re-sync
    def prepare_standby(self, region: str, source: str, timeout_seconds: float) -> PrepareStandbyResult:
        """Aurora re-syncs the old writer itself: confirm it is a settled secondary, waiting until it is.

        A switchover demotes the old writer at once; after an emergency failover Aurora rejoins it as a
        secondary when its region answers again (wait), unless it was detached (``RemoveFromGlobalCluster``,
        or Aurora could not rejoin it): then it is a standalone cluster drflow will not touch (its writes may
        have diverged) and the answer says what to do. Nothing is changed, so every call is a safe retry.
        """
        deadline = time.monotonic() + timeout_seconds
        label, name = self.label(region), self.config.global_cluster
        actions: list[str] = []
        waited = False
        while True:
            global_cluster = self._global_cluster(prefer=(source, region), fallback=True)
            members = _members(global_cluster)
            member, writer = members.get(self.arn(region)), members.get(self.arn(source))
            pending = global_cluster.get("FailoverState")
            notes: list[str] = []
            cluster = self._cluster_or_note(region, notes)
            if member is None and pending is None:
                raise self._detached(region, source, cluster, notes)
            if member is not None and member.get("IsWriter", False) and pending is None:
                raise ApplicationError(
                    f"{label} is still the writer of {name}: the switch to {self.label(source)} did not "
                    "happen, so there is nothing to re-sync; check the global cluster before going on",
                    type=ErrorType.DATABASE_STATE_CONFLICT,
                    non_retryable=True,
                )
            waiting_for = _secondary_not_settled(global_cluster, member, writer, cluster)
            if not waiting_for:
                sync = member.get("SynchronizationStatus", "connected") if member else "?"
                actions.append(
                    f"{label} is a secondary of {name} (IsWriter false, synchronization {sync}), its "
                    f"cluster is {cluster.get('Status') if cluster else '?'}; {self.label(source)} is the "
                    "writer: Aurora replicates to it, drflow changed nothing"
                )
                return PrepareStandbyResult(
                    region=region,
                    source_region=source,
                    already_standby=not waited,
                    rewound=False,
                    diverged=None,
                    streaming=True,
                    actions=actions,
                )
            if not waited:
                actions.append(f"waiting: {waiting_for}")
                waited = True
            heartbeat(f"{name}: {waiting_for}")
            if time.monotonic() >= deadline:
                raise ApplicationError(
                    f"{label} is not yet a settled secondary of {name} after {timeout_seconds:g}s: "
                    f"{waiting_for}; a retry keeps waiting (Aurora rejoins an old writer when its region "
                    "answers again)",
                    type=ErrorType.STANDBY_RESYNC_FAILED,
                )
            time.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))

    def _detached(
        self, region: str, source: str, cluster: DBClusterTypeDef | None, notes: list[str]
    ) -> ApplicationError:
        """The old writer left the global cluster: only a person can decide what happens to its data."""
        label, name = self.label(region), self.config.global_cluster
        seen = (
            f"its cluster still exists ({cluster.get('Status')}, standalone, may hold writes {name} never "
            "received)"
            if cluster is not None
            else f"its cluster is gone ({'; '.join(notes) or 'not found'})"
        )
        return ApplicationError(
            f"{label} is no longer a member of global cluster {name} ({seen}): it was detached "
            f"(RemoveFromGlobalCluster, or an emergency failover Aurora could not rejoin it), and drflow "
            f"does not add a detached cluster back. To give {self.label(source)} a secondary in "
            f"{self.aws_region(region)}: keep or snapshot the detached cluster for its data, add a new "
            f"secondary cluster to {name} in {self.aws_region(region)} (CreateDBCluster with "
            f"GlobalClusterIdentifier={name}, then a DB instance in it), set clusters.{region} in the "
            "runbook to its ARN, and retry this step (or skip it to finish without a secondary)",
            type=ErrorType.STANDBY_RESYNC_FAILED,
            non_retryable=True,
        )

    # ---------------------------------------------------------------------------------------- preflight
    def preflight(self, primary: str, standby: str) -> PreflightReport:
        """Credentials, the global cluster and its members, CloudWatch; the switchover has no dry run."""
        checks: list[PreflightCheck] = []
        try:
            identity = call(self.clients.sts().get_caller_identity, "who am I", backoff=self.backoff)
            checks.append(
                PreflightCheck(name="AWS credentials", ok=True, detail=f"valid, as {identity['Arn']}")
            )
        except (ClientError, BotoCoreError) as error:
            detail = aws_error(error, "GetCallerIdentity").message
            return PreflightReport.of(
                self.name, [PreflightCheck(name="AWS credentials", ok=False, detail=detail)]
            )
        try:
            global_cluster = self._global_cluster(prefer=(standby, primary), fallback=True)
        except ApplicationError as error:
            checks.append(
                PreflightCheck(
                    name=f"global cluster {self.config.global_cluster}", ok=False, detail=error.message
                )
            )
            return PreflightReport.of(self.name, checks)
        checks.append(
            PreflightCheck(
                name=f"global cluster {self.config.global_cluster}",
                ok=global_cluster.get("Status") == "available",
                detail=f"is {global_cluster.get('Status')}, engine {global_cluster.get('Engine')} "
                f"{global_cluster.get('EngineVersion')}",
            )
        )
        members = _members(global_cluster)
        for region, expect_writer in ((primary, True), (standby, False)):
            member = members.get(self.arn(region))
            role = "writer" if expect_writer else "secondary"
            if member is None:
                checks.append(
                    PreflightCheck(
                        name=f"{self.label(region)}", ok=False, detail="not a member of the global cluster"
                    )
                )
                continue
            is_writer = bool(member.get("IsWriter", False))
            notes: list[str] = []
            cluster = self._cluster_or_note(region, notes)
            checks.append(
                PreflightCheck(
                    name=f"{self.label(region)} is the {role}",
                    ok=is_writer == expect_writer and _serving(cluster),
                    detail=f"{'writer' if is_writer else 'secondary'}, cluster "
                    + (cluster.get("Status", "?") if cluster else "; ".join(notes)),
                )
            )
        errors: list[str] = []
        lag = self._lag_seconds(standby, errors)
        checks.append(
            PreflightCheck(
                name="CloudWatch global database lag",
                ok=True if lag is not None else None,
                detail=f"{lag:g}s" if lag is not None else "; ".join(errors),
            )
        )
        checks.append(
            PreflightCheck(
                name="rds:SwitchoverGlobalCluster, rds:FailoverGlobalCluster",
                ok=None,
                detail="not verifiable without moving the writer (no dry run); granted by "
                "infra/aws/iam-policy.json",
            )
        )
        return PreflightReport.of(self.name, checks)

    # ------------------------------------------------------------------------------------------ helpers
    def _global_cluster(self, prefer: Iterable[str], fallback: bool = True) -> GlobalClusterTypeDef:
        """Described from the first region that answers: in an emergency the writer's region may be down."""
        order = list(dict.fromkeys([*prefer, *(self.config.clusters if fallback else [])]))
        failure: ApplicationError | None = None
        for region in order:
            try:
                response = call(
                    self.clients.rds(self.aws_region(region)).describe_global_clusters,
                    f"describe {self.config.global_cluster}",
                    backoff=self.backoff,
                    GlobalClusterIdentifier=self.config.global_cluster,
                )
                return response["GlobalClusters"][0]
            except (ClientError, BotoCoreError) as error:
                failure = aws_error(error, f"describing global cluster {self.config.global_cluster}")
                if failure.non_retryable:
                    raise failure from None
        assert failure is not None
        raise ApplicationError(failure.message, type=ErrorType.DATABASE_UNREACHABLE) from None

    def _cluster_or_note(self, region: str, errors: list[str]) -> DBClusterTypeDef | None:
        try:
            response = call(
                self.clients.rds(self.aws_region(region)).describe_db_clusters,
                f"describe {self.arn(region)}",
                backoff=self.backoff,
                DBClusterIdentifier=self.arn(region),
            )
            return response["DBClusters"][0]
        except (ClientError, BotoCoreError) as error:
            errors.append(aws_error(error, f"describing {self.label(region)}").message)
            return None

    def _promotion_error(self, error: BaseException, region: str) -> ApplicationError:
        failure = aws_error(error, f"moving the writer to {self.label(region)}")
        return ApplicationError(
            failure.message
            + ("" if failure.non_retryable else "; a retry reads the global cluster's state first"),
            type=failure.type if failure.non_retryable else ErrorType.PROMOTION_FAILED,
            non_retryable=failure.non_retryable,
        )


def _members(global_cluster: GlobalClusterTypeDef | None) -> dict[str, GlobalClusterMemberTypeDef]:
    if global_cluster is None:
        return {}
    return {member["DBClusterArn"]: member for member in global_cluster.get("GlobalClusterMembers", [])}


def _secondary_not_settled(
    global_cluster: GlobalClusterTypeDef,
    member: GlobalClusterMemberTypeDef | None,
    writer: GlobalClusterMemberTypeDef | None,
    cluster: DBClusterTypeDef | None,
) -> str:
    """What still keeps the old writer from being a settled secondary ("" when nothing does)."""
    pending = global_cluster.get("FailoverState")
    if pending is not None:
        return f"a {pending.get('Status')} move of the writer to {pending.get('ToDbClusterArn')} is under way"
    if writer is None or not writer.get("IsWriter", False):
        return "the source is not (yet) the writer of the global cluster"
    if member is None or member.get("IsWriter", False):
        return "the old writer is not (yet) a secondary"
    if global_cluster.get("Status") != "available":
        return f"the global cluster is {global_cluster.get('Status')}"
    sync = member.get("SynchronizationStatus", "connected")
    if sync != "connected":
        return f"the old writer's synchronization is {sync}"
    if cluster is None or cluster.get("Status") != "available":
        return f"the old writer's cluster is {cluster.get('Status') if cluster else 'not described'}"
    return ""


def _serving(cluster: DBClusterTypeDef | None) -> bool:
    return cluster is not None and cluster.get("Status") in _SERVING
