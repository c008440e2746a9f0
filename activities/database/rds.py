"""RDS: a cross-region read replica promoted to a standalone primary (``PromoteReadReplica``).

What each step means here, honestly:
- **measure**: the instances' roles from DescribeDBInstances (a replica names its source) and the replica's
  lag from CloudWatch ``ReplicaLag`` (seconds, a one-minute metric, so up to about a minute old). There is no
  byte position: ``lag_bytes`` and every LSN field stay None.
- **fence**: RDS offers no way to stop the source instance accepting writes (a replica cannot be stopped, and
  a parameter like ``read_only`` is overridable by privileged sessions). Writes stop only when DNS moves
  clients away. So a planned or drill failover, which promises zero data loss, refuses at the fence step; an
  emergency failover records method ``none`` and the data-loss gate weighs the measured ReplicaLag.
- **promote**: PromoteReadReplica unless the instance is already standalone, then wait until it is
  ``available`` with no replication source. "Writable" is the API's word: drflow holds no database
  credentials for RDS, so it cannot prove a write as it does for PostgreSQL.
- **unfence**: nothing was fenced, so nothing to undo; the result says whether the source still serves.
"""

from __future__ import annotations

import time
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
from activities.database.provider import cannot_resync, no_replay_position
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
from runbooks.model import RdsDatabase, aws_region_name

if TYPE_CHECKING:
    from mypy_boto3_rds.type_defs import DBInstanceTypeDef

# Statuses in which an instance does not serve queries (the API answers, the database does not).
_NOT_SERVING = frozenset(
    {
        "creating",
        "deleting",
        "failed",
        "stopped",
        "stopping",
        "starting",
        "storage-full",
        "restore-error",
        "insufficient-capacity",
        "inaccessible-encryption-credentials",
        "inaccessible-encryption-credentials-recoverable",
        "incompatible-network",
        "incompatible-option-group",
        "incompatible-parameters",
        "incompatible-restore",
    }
)
NO_FENCE = (
    "RDS cannot stop the source instance accepting writes (no API fences it): writes stop only when DNS "
    "moves "
    "clients away, and any write it accepts after the promotion is lost"
)


class RdsInstance:
    """One runbook region's instance: where it lives and what the APIs call it."""

    def __init__(self, region: str, reference: str) -> None:
        self.region = region
        self.reference = reference
        self.identifier = arn_resource(reference) if reference.startswith("arn:") else reference
        aws_region = arn_region(reference) if reference.startswith("arn:") else aws_region_name(region)
        if aws_region is None:
            raise ApplicationError(
                f"cannot tell the AWS region of {region}'s instance {reference!r}: give its ARN "
                "(arn:aws:rds:<region>:<account>:db:<name>) or name the runbook region after the AWS region",
                type=ErrorType.INVALID_RUNBOOK,
                non_retryable=True,
            )
        self.aws_region = aws_region

    def __str__(self) -> str:
        return f"{self.region} ({self.identifier} in {self.aws_region})"


class RdsProvider:
    name = "rds"

    def __init__(
        self,
        config: RdsDatabase,
        clients: AwsClientFactory | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        poll_seconds: float = 2.0,
    ) -> None:
        self.config = config
        self.clients = clients or AwsClients()
        self.backoff = backoff
        self.poll_seconds = poll_seconds

    def instance(self, region: str) -> RdsInstance:
        return RdsInstance(region, self.config.instances[region])

    # ------------------------------------------------------------------------------------------ measure
    def measure_replication(self, primary: str, standby: str) -> ReplicationStatus:
        """Roles from the API, lag from CloudWatch; what cannot be seen is reported in ``errors``."""
        errors: list[str] = []
        source, replica = self.instance(primary), self.instance(standby)
        src = self._describe_or_note(source, errors)
        dst = self._describe_or_note(replica, errors)
        lag: float | None = None
        if dst is not None:
            if _is_replica(dst):
                if not _replicates_from(dst, source):
                    errors.append(
                        f"{replica} replicates from {dst.get('ReadReplicaSourceDBInstanceIdentifier')}, "
                        f"not from {source}"
                    )
                lag, problem = latest_metric(
                    self.clients,
                    replica.aws_region,
                    namespace="AWS/RDS",
                    metric="ReplicaLag",
                    dimension=("DBInstanceIdentifier", replica.identifier),
                    backoff=self.backoff,
                )
                if problem:
                    errors.append(problem)
                elif lag is not None and lag < 0:
                    errors.append(f"{replica} reports ReplicaLag {lag:g}: replication is not running")
                    lag = None
            else:
                errors.append(f"{replica} is not a read replica: it is a standalone (writable) instance")
        for described, where in ((src, source), (dst, replica)):
            if described is not None and described["DBInstanceStatus"] in _NOT_SERVING:
                errors.append(f"{where} is {described['DBInstanceStatus']}")
        return ReplicationStatus(
            primary_region=primary,
            standby_region=standby,
            primary_reachable=_serving(src),
            primary_in_recovery=None if src is None else _is_replica(src),
            primary_lsn=None,
            standby_reachable=_serving(dst),
            standby_in_recovery=None if dst is None else _is_replica(dst),
            standby_receive_lsn=None,
            standby_replay_lsn=None,
            replay_paused=None,
            lag_bytes=None,
            lag_seconds=lag,
            errors=errors,
        )

    # -------------------------------------------------------------------------------------------- fence
    def fence(self, region: str, mode: FenceMode, timeout_seconds: float = 30) -> FenceResult:
        source = self.instance(region)
        if mode != "emergency":
            raise ApplicationError(
                f"cannot fence {source} for a {mode} failover: {NO_FENCE}. A {mode} failover promises zero "
                "data "
                "loss, which RDS cannot prove: stop the application's writes, then run an emergency failover "
                "(the data-loss gate shows the measured ReplicaLag)",
                type=ErrorType.FENCE_FAILED,
                non_retryable=True,
            )
        actions = [f"no fence for {source}: {NO_FENCE}"]
        errors = [f"{source} was not fenced (method none)"]
        try:
            described = self._describe(source)
            actions.append(f"{source} is {described['DBInstanceStatus']}")
        except ApplicationError as error:
            actions.append(f"{source} could not be described: {error.message}")
        return FenceResult(
            region=region,
            method="none",
            fenced=False,
            already_fenced=False,
            final_lsn=None,
            actions=actions,
            errors=errors,
        )

    # ------------------------------------------------------------------------------------------ promote
    def promote(self, region: str, timeout_seconds: float, mode: FenceMode | None = None) -> PromoteResult:
        """PromoteReadReplica unless already standalone; then wait until available without a source."""
        started = time.monotonic()
        deadline = started + timeout_seconds
        target = self.instance(region)
        actions: list[str] = []
        described = self._describe(target)
        promoted = False
        if _is_replica(described):
            source = described.get("ReadReplicaSourceDBInstanceIdentifier")
            try:
                call(
                    self.clients.rds(target.aws_region).promote_read_replica,
                    f"promote {target.identifier}",
                    backoff=self.backoff,
                    safe_to_repeat=False,
                    DBInstanceIdentifier=target.identifier,
                )
                promoted = True
                actions.append(f"PromoteReadReplica {target} (was replicating from {source})")
            except ClientError as error:
                if error_code(error) != "InvalidDBInstanceState":
                    raise self._promotion_error(error, target) from None
                actions.append(
                    f"{target} is {described['DBInstanceStatus']}: a promotion is already under way"
                )
                promoted = True
            except BotoCoreError as error:
                raise self._promotion_error(error, target) from None
        elif described["DBInstanceStatus"] == "available":
            actions.append(f"{target} is already a standalone instance: no promotion needed")
        else:
            actions.append(
                f"{target} has no replication source and is {described['DBInstanceStatus']}: waiting"
            )
        final = self._wait_standalone(target, deadline)
        actions.append(
            f"{target} is available with no replication source: writable per the RDS API (drflow holds no "
            "database credentials for RDS, so no SQL write check)"
        )
        return PromoteResult(
            region=region,
            promoted=promoted,
            already_primary=not promoted,
            replay_lsn_at_promotion=None,
            timeline=None,
            writable=not _is_replica(final) and final["DBInstanceStatus"] == "available",
            duration_ms=round((time.monotonic() - started) * 1000, 1),
            actions=actions,
        )

    def _wait_standalone(self, target: RdsInstance, deadline: float) -> DBInstanceTypeDef:
        while True:
            described = self._describe(target)
            status = described["DBInstanceStatus"]
            if not _is_replica(described) and status == "available":
                return described
            heartbeat(f"{target.identifier}: {status}")
            if time.monotonic() >= deadline:
                raise ApplicationError(
                    f"{target} is still {status}"
                    + (" and replicating" if _is_replica(described) else "")
                    + " after the promotion wait; a retry keeps waiting without promoting again",
                    type=ErrorType.PROMOTION_FAILED,
                )
            time.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))

    # ------------------------------------------------------------------------------------------ unfence
    def unfence(self, region: str) -> UnfenceResult:
        source = self.instance(region)
        described = self._describe(source)
        serving = _serving(described) and not _is_replica(described)
        return UnfenceResult(
            region=region,
            restored=serving,
            actions=[
                f"nothing to undo: {source} was not fenced (RDS has no fence)",
                f"{source} is {described['DBInstanceStatus']}"
                + (" and replicating" if _is_replica(described) else ", standalone"),
            ],
        )

    # ---------------------------------------------------------------------------- steps RDS does not have
    def wait_for_replay(self, region: str, position: str, timeout_seconds: float) -> WaitForReplayResult:
        raise no_replay_position(self.config.provider)

    def prepare_standby(self, region: str, source: str, timeout_seconds: float) -> PrepareStandbyResult:
        raise cannot_resync(self.config.provider)

    # ---------------------------------------------------------------------------------------- preflight
    def preflight(self, primary: str, standby: str) -> PreflightReport:
        """Credentials, both instances, the replica's source, CloudWatch; promotion has no dry run."""
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
        source, replica = self.instance(primary), self.instance(standby)
        described: dict[str, DBInstanceTypeDef] = {}
        for instance in (source, replica):
            try:
                described[instance.region] = self._describe(instance)
                status = described[instance.region]["DBInstanceStatus"]
                checks.append(
                    PreflightCheck(
                        name=f"instance {instance}", ok=status not in _NOT_SERVING, detail=f"is {status}"
                    )
                )
            except ApplicationError as error:
                checks.append(PreflightCheck(name=f"instance {instance}", ok=False, detail=error.message))
        if replica.region in described:
            dst = described[replica.region]
            ok = _is_replica(dst) and _replicates_from(dst, source)
            checks.append(
                PreflightCheck(
                    name=f"{replica.region} replicates from {primary}",
                    ok=ok,
                    detail="source "
                    f"{dst.get('ReadReplicaSourceDBInstanceIdentifier') or 'none (standalone)'}",
                )
            )
        lag, problem = latest_metric(
            self.clients,
            replica.aws_region,
            namespace="AWS/RDS",
            metric="ReplicaLag",
            dimension=("DBInstanceIdentifier", replica.identifier),
            backoff=self.backoff,
        )
        checks.append(
            PreflightCheck(
                name="CloudWatch ReplicaLag",
                ok=True if lag is not None else (False if problem and "denied" in problem else None),
                detail=f"{lag:g}s" if lag is not None else str(problem),
            )
        )
        checks.append(
            PreflightCheck(
                name="rds:PromoteReadReplica",
                ok=None,
                detail="not verifiable without promoting (no dry run); granted by infra/aws/iam-policy.json",
            )
        )
        return PreflightReport.of(self.name, checks)

    # ------------------------------------------------------------------------------------------ helpers
    def _describe(self, instance: RdsInstance) -> DBInstanceTypeDef:
        try:
            response = call(
                self.clients.rds(instance.aws_region).describe_db_instances,
                f"describe {instance.identifier}",
                backoff=self.backoff,
                DBInstanceIdentifier=instance.reference,
            )
        except (ClientError, BotoCoreError) as error:
            failure = aws_error(error, f"describing {instance}")
            raise ApplicationError(
                failure.message,
                type=failure.type if failure.non_retryable else ErrorType.DATABASE_UNREACHABLE,
                non_retryable=failure.non_retryable,
            ) from None
        return response["DBInstances"][0]

    def _describe_or_note(self, instance: RdsInstance, errors: list[str]) -> DBInstanceTypeDef | None:
        try:
            return self._describe(instance)
        except ApplicationError as error:
            errors.append(error.message)
            return None

    def _promotion_error(self, error: BaseException, target: RdsInstance) -> ApplicationError:
        failure = aws_error(error, f"promoting {target}")
        return ApplicationError(
            failure.message
            + ("" if failure.non_retryable else "; a retry checks the instance's state first"),
            type=failure.type if failure.non_retryable else ErrorType.PROMOTION_FAILED,
            non_retryable=failure.non_retryable,
        )


def _is_replica(instance: DBInstanceTypeDef) -> bool:
    return bool(instance.get("ReadReplicaSourceDBInstanceIdentifier"))


def _replicates_from(replica: DBInstanceTypeDef, source: RdsInstance) -> bool:
    named = str(replica.get("ReadReplicaSourceDBInstanceIdentifier", ""))
    return named in (source.reference, source.identifier) or arn_resource(named) == source.identifier


def _serving(instance: DBInstanceTypeDef | None) -> bool:
    return instance is not None and instance["DBInstanceStatus"] not in _NOT_SERVING
