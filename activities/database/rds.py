"""RDS: a cross-region read replica promoted to a standalone primary (``PromoteReadReplica``).

What each step means here, honestly:
- **measure**: the instances' roles from DescribeDBInstances (a replica names its source) and the replica's
  lag from CloudWatch ``ReplicaLag`` (seconds, a one-minute metric, so up to about a minute old). There is no
  byte position: ``lag_bytes`` and every LSN field stay None.
- **fence**: only with a fence security group for the source region (``fence_security_groups``): the source
  instance gets that group (no ingress) as its only VPC security group, the groups it had are kept in a tag
  for the unfence, and a reboot ends the sessions opened before (a security group does not cut established
  connections). Without one nothing stops the source accepting writes until DNS moves clients away: a
  planned or drill failover refuses at the fence; an emergency one records method ``none``.
- **wait for replay**: the fence's position is ``<region>@<time>``; the wait ends once the source is up
  behind the fence and CloudWatch shows ``ReplicaLag`` 0 in consecutive whole periods after that.
- **promote**: PromoteReadReplica unless the instance is already standalone, then wait until it is
  ``available`` with no replication source. "Writable" is the API's word: drflow holds no database
  credentials for RDS, so it cannot prove a write as it does for PostgreSQL.
- **unfence**: the tagged security groups back, or nothing to undo when nothing was fenced.
- **re-sync** (failback): an ex-primary cannot become a replica, so it is renamed out of the way
  (``<id>-drflow-retired-<time>``, kept with its data) and a new cross-region read replica of the current
  primary is created under the runbook's identifier, with the retired instance's class, network, parameter
  group and KMS key.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

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
    error_message,
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
from runbooks.model import RdsDatabase, aws_region_name

if TYPE_CHECKING:
    from mypy_boto3_rds.type_defs import DBInstanceTypeDef, TagTypeDef

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
    "without a fence security group nothing stops the source instance accepting writes: they stop only when "
    "DNS moves clients away, and any write it accepts after the promotion is lost"
)
# Tags on the fenced instance: what the unfence (and a later re-sync) needs, kept with the instance itself.
PREVIOUS_GROUPS_TAG = "drflow:pre-fence-security-groups"
FENCED_AT_TAG = "drflow:fenced-at"
RETIRED_MARK = "-drflow-retired-"
_IDENTIFIER_LIMIT = 63
# A new replica in one of these will not become one by waiting.
_BROKEN = frozenset(
    {"failed", "incompatible-parameters", "incompatible-network", "storage-full", "restore-error",
     "inaccessible-encryption-credentials"}
)  # fmt: skip


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
    # ReplicaLag is a one-minute metric; the replay wait needs this many whole periods of 0 after the fence.
    LAG_PERIOD_SECONDS = 60
    LAG_SAMPLES = 2

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
        group = self.config.fence_security_groups.get(region)
        if group is None:
            if mode != "emergency":
                raise ApplicationError(
                    f"cannot fence {source} for a {mode} failover: database.fence_security_groups.{region} "
                    f"is not set, and {NO_FENCE}. A {mode} failover promises zero data loss: set it to a "
                    "security group of the instance's VPC with no ingress rule, or stop the application's "
                    "writes and run an emergency failover (the data-loss gate shows the measured ReplicaLag)",
                    type=ErrorType.FENCE_FAILED,
                    non_retryable=True,
                )
            return self._no_fence(source, [])
        try:
            return self._fence_with_group(source, group, timeout_seconds)
        except ApplicationError as error:
            if mode != "emergency":
                raise
            # An emergency goes on without the fence (its region may be down); the unfenced gate decides.
            return self._no_fence(source, [f"the fence with {group} failed: {error.message}"])

    def _no_fence(self, source: RdsInstance, errors: list[str]) -> FenceResult:
        actions = [f"no fence for {source}: {NO_FENCE}"]
        try:
            described = self._describe(source)
            actions.append(f"{source} is {described['DBInstanceStatus']}")
        except ApplicationError as error:
            actions.append(f"{source} could not be described: {error.message}")
        return FenceResult(
            region=source.region,
            method="none",
            fenced=False,
            already_fenced=False,
            final_lsn=None,
            actions=actions,
            errors=[*errors, f"{source} was not fenced (method none)"],
        )

    def _fence_with_group(self, source: RdsInstance, group: str, timeout_seconds: float) -> FenceResult:
        """The fence group as the only security group, then a reboot; a part already done is not redone."""
        deadline = time.monotonic() + timeout_seconds
        client = self.clients.rds(source.aws_region)
        described = self._describe(source)
        arn = described["DBInstanceArn"]
        groups = _security_groups(described)
        tags = self._tags(arn)
        actions: list[str] = []
        swapped_before = groups == [group]
        if swapped_before:
            actions.append(
                f"{source} already has only the fence security group {group} (before the fence: "
                f"{tags.get(PREVIOUS_GROUPS_TAG) or 'not recorded'})"
            )
        else:
            previous = [g for g in groups if g != group]
            self._tag(arn, {PREVIOUS_GROUPS_TAG: " ".join(previous)})
            self._modify(source, ErrorType.FENCE_FAILED, VpcSecurityGroupIds=[group])
            actions.append(
                f"ModifyDBInstance {source}: security groups {', '.join(previous) or 'none'} -> {group} (no "
                f"ingress), ApplyImmediately; the previous groups are kept in tag {PREVIOUS_GROUPS_TAG}"
            )
        self._wait_for_groups(source, [group], deadline, ErrorType.FENCE_FAILED)
        actions.append(f"{group} is {source}'s only active security group: no new connection reaches it")
        fenced_at = tags.get(FENCED_AT_TAG) if swapped_before else None
        if fenced_at:
            actions.append(f"rebooted at {fenced_at} already: the sessions open before the fence ended then")
        else:
            actions.append(self._reboot(client, source))
            fenced_at = datetime.now(UTC).isoformat(timespec="seconds")
            self._tag(arn, {FENCED_AT_TAG: fenced_at})
        return FenceResult(
            region=source.region,
            method="connections-cut",
            fenced=True,
            already_fenced=swapped_before and bool(tags.get(FENCED_AT_TAG)),
            final_lsn=f"{source.region}@{fenced_at}",
            actions=actions,
            errors=[],
        )

    def _reboot(self, client: Any, source: RdsInstance) -> str:
        try:
            rebooted = call(
                client.reboot_db_instance, f"reboot {source.identifier}", backoff=self.backoff,
                safe_to_repeat=False, DBInstanceIdentifier=source.identifier,
            )  # fmt: skip
            status = rebooted["DBInstance"].get("DBInstanceStatus", "?")
        except ClientError as error:
            if error_code(error) != "InvalidDBInstanceState":
                raise self._step_error(error, f"rebooting {source}", ErrorType.FENCE_FAILED) from None
            status = "already rebooting"
        except BotoCoreError as error:
            raise self._step_error(error, f"rebooting {source}", ErrorType.FENCE_FAILED) from None
        return (
            f"RebootDBInstance {source} ({status}): ends the sessions opened before the fence, which a "
            "security group does not cut"
        )

    def _wait_for_groups(
        self, instance: RdsInstance, wanted: list[str], deadline: float, error_type: str
    ) -> DBInstanceTypeDef:
        while True:
            described = self._describe(instance)
            memberships = described.get("VpcSecurityGroups", [])
            if sorted(_security_groups(described)) == sorted(wanted) and all(
                m.get("Status", "active") == "active" for m in memberships
            ):
                return described
            seen = ", ".join(f"{m.get('VpcSecurityGroupId')} {m.get('Status')}" for m in memberships)
            heartbeat(f"{instance.identifier}: {seen}")
            if time.monotonic() >= deadline:
                raise ApplicationError(
                    f"{instance}'s security groups are {seen or 'none'}, not yet only {', '.join(wanted)} "
                    "(active); a retry checks them first and does not modify the instance again",
                    type=error_type,
                )
            time.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))

    # ---------------------------------------------------------------------------------- wait for replay
    def wait_for_replay(self, region: str, position: str, timeout_seconds: float) -> WaitForReplayResult:
        """``position`` is the fence's ``<source region>@<time>``: wait for ReplicaLag 0 after the fence.

        Counting starts when the source is seen available again behind the fence (its reboot ended every
        session that could still write), and needs ``LAG_SAMPLES`` consecutive whole periods of maximum 0.
        A timeout is an answer (``reached=False``), as for PostgreSQL.
        """
        started = time.monotonic()
        deadline = started + timeout_seconds
        source_region, _, stamp = position.partition("@")
        if source_region not in self.config.instances or not stamp:
            raise no_replay_position(self.config.provider)
        source, replica = self.instance(source_region), self.instance(region)
        counting_from: datetime | None = None
        while True:
            if counting_from is None:
                try:
                    status = self._describe(source)["DBInstanceStatus"]
                except ApplicationError as error:
                    status = f"not described ({error.message})"
                if status == "available":
                    counting_from = datetime.now(UTC)
                seen = f"{source} is {status} behind the fence"
            if counting_from is not None:
                zeros, seen = self._zero_lag_periods(replica, counting_from)
                if zeros >= self.LAG_SAMPLES:
                    return WaitForReplayResult(
                        reached=True,
                        replay_lsn=f"ReplicaLag 0 in {zeros} periods of {self.LAG_PERIOD_SECONDS}s from "
                        f"{counting_from.isoformat(timespec='seconds')} (fenced at {stamp})",
                        waited_ms=round((time.monotonic() - started) * 1000, 1),
                    )
            heartbeat(seen)
            if time.monotonic() >= deadline:
                return WaitForReplayResult(
                    reached=False, replay_lsn=None, waited_ms=round((time.monotonic() - started) * 1000, 1)
                )
            time.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))

    def _zero_lag_periods(self, replica: RdsInstance, since: datetime) -> tuple[int, str]:
        """How many consecutive latest whole periods, all after ``since``, had a ReplicaLag maximum of 0."""
        period = self.LAG_PERIOD_SECONDS
        try:
            response = call(
                self.clients.cloudwatch(replica.aws_region).get_metric_statistics,
                "read ReplicaLag",
                backoff=self.backoff,
                Namespace="AWS/RDS",
                MetricName="ReplicaLag",
                Dimensions=[{"Name": "DBInstanceIdentifier", "Value": replica.identifier}],
                StartTime=since,
                EndTime=datetime.now(UTC) + timedelta(minutes=1),
                Period=period,
                Statistics=["Maximum"],
            )
        except (ClientError, BotoCoreError) as error:
            return 0, aws_error(error, f"reading ReplicaLag for {replica}").message
        # CloudWatch rounds StartTime down to the period: a period that began before ``since`` does not count,
        # nor one still open (its maximum so far says nothing about the rest of it).
        ended = datetime.now(UTC) - timedelta(seconds=period)
        points = sorted(
            (p for p in response.get("Datapoints", []) if since <= p["Timestamp"] <= ended),
            key=lambda p: p["Timestamp"],
            reverse=True,
        )
        zeros = 0
        for index, point in enumerate(points):
            if point.get("Maximum") != 0:
                break
            if index and (points[index - 1]["Timestamp"] - point["Timestamp"]).total_seconds() > period * 1.5:
                break  # a gap: no datapoint for a period, so nothing says the lag was 0 then
            zeros += 1
        latest = f"{points[0].get('Maximum')}s" if points else "no datapoint yet"
        return zeros, f"ReplicaLag of {replica} since {since.isoformat(timespec='seconds')}: {latest}"

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
        """Give back the security groups the fence tagged; with no fence group in place, nothing to undo."""
        source = self.instance(region)
        described = self._describe(source)
        group = self.config.fence_security_groups.get(region)
        actions: list[str] = []
        if group is not None and _security_groups(described) == [group]:
            arn = described["DBInstanceArn"]
            previous = self._tags(arn).get(PREVIOUS_GROUPS_TAG, "").split()
            if not previous:
                raise ApplicationError(
                    f"{source} has only the fence security group {group} and no record of the groups it "
                    f"had (tag {PREVIOUS_GROUPS_TAG} is missing): give it its security groups back by hand",
                    type=ErrorType.UNFENCE_FAILED,
                    non_retryable=True,
                )
            self._modify(source, ErrorType.UNFENCE_FAILED, VpcSecurityGroupIds=previous)
            actions.append(f"ModifyDBInstance {source}: security groups {group} -> {', '.join(previous)}")
            described = self._wait_for_groups(
                source, previous, time.monotonic() + 45, ErrorType.UNFENCE_FAILED
            )
            self._untag(arn, [PREVIOUS_GROUPS_TAG, FENCED_AT_TAG])
            actions.append(f"{', '.join(previous)} active again: clients reach {source}")
        else:
            actions.append(
                f"nothing to undo: {source} was not fenced"
                + (" (RDS has no fence without a fence security group)" if group is None else "")
            )
        serving = _serving(described) and not _is_replica(described)
        actions.append(
            f"{source} is {described['DBInstanceStatus']}"
            + (" and replicating" if _is_replica(described) else ", standalone")
        )
        return UnfenceResult(region=region, restored=serving, actions=actions)

    # ------------------------------------------------------------------------------------------ re-sync
    def prepare_standby(self, region: str, source: str, timeout_seconds: float) -> PrepareStandbyResult:
        """Make ``region`` a cross-region read replica of ``source`` again, keeping the ex-primary's data.

        An ex-primary cannot become a replica, so it is renamed ``<id>-drflow-retired-<time>`` and kept; a
        new replica takes the runbook's identifier. Each part is checked first, so a retry after a lost
        answer neither renames twice nor creates a second replica: it waits for the one under way.
        """
        deadline = time.monotonic() + timeout_seconds
        home, current = self.instance(region), self.instance(source)
        primary = self._describe(current)
        existing = self._describe_if_exists(home)
        actions: list[str] = []
        if existing is not None and _is_replica(existing):
            if not _replicates_from(existing, current):
                raise ApplicationError(
                    f"{home} is a read replica of {existing.get('ReadReplicaSourceDBInstanceIdentifier')}, "
                    f"not of {current}: drflow does not re-point it; check which instance is the primary",
                    type=ErrorType.DATABASE_STATE_CONFLICT,
                    non_retryable=True,
                )
            if _replicating(existing):
                return PrepareStandbyResult(
                    region=region, source_region=source, already_standby=True, rewound=False, diverged=None,
                    streaming=True,
                    actions=[f"{home} is an available read replica of {current}: nothing to do"],
                )  # fmt: skip
            actions.append(
                f"{home} is a read replica of {current} being set up ({existing['DBInstanceStatus']}): "
                "waiting"
            )
        else:
            _check_replica_source(current, primary)
            template, template_tags = self._template(home, existing, actions)
            settings = self._replica_settings(home, template, template_tags, primary, actions)
            if existing is not None:
                self._retire(home, existing, deadline, actions)
            self._create_replica(home, primary, settings, actions)
        final = self._wait_for_replica(home, current, deadline)
        actions.append(
            f"{home} is available and replicates from {current} "
            f"({_replication_state(final) or 'no replication status reported'})"
        )
        return PrepareStandbyResult(
            region=region, source_region=source, already_standby=False, rewound=False, diverged=None,
            streaming=True, actions=actions,
        )  # fmt: skip

    def _template(
        self, home: RdsInstance, existing: DBInstanceTypeDef | None, actions: list[str]
    ) -> tuple[DBInstanceTypeDef, dict[str, str]]:
        """The instance whose settings the new replica copies: the ex-primary, before or after its rename."""
        if existing is not None:
            return existing, self._tags(existing["DBInstanceArn"])
        retired = self._find_retired(home)
        if retired is None:
            raise ApplicationError(
                f"{home.aws_region} has no instance {home.identifier} and none renamed {home.identifier}"
                f"{RETIRED_MARK}*: drflow copies the new replica's class and network from the old primary, "
                f"so without one it creates nothing; create the read replica {home.identifier} of the "
                "current primary by hand, then retry",
                type=ErrorType.STANDBY_RESYNC_FAILED,
                non_retryable=True,
            )
        actions.append(
            f"{home.identifier} was renamed {retired['DBInstanceIdentifier']} already (kept, with its data)"
        )
        return retired, self._tags(retired["DBInstanceArn"])

    def _replica_settings(
        self,
        home: RdsInstance,
        template: DBInstanceTypeDef,
        tags: dict[str, str],
        primary: DBInstanceTypeDef,
        actions: list[str],
    ) -> dict[str, Any]:
        """What the new replica copies from its region's old primary: the regional settings a source lacks.

        Class, subnet group, security groups (those from before a fence), parameter group (only for the same
        engine version), Multi-AZ, storage type, public access, deletion protection, and, for an encrypted
        source, the old primary's KMS key (a key of this region). Engine, version, storage and the data
        come from the source, as for any replica.
        """
        settings: dict[str, Any] = {"DBInstanceClass": template["DBInstanceClass"]}
        copied = [f"class {template['DBInstanceClass']}"]
        subnet_group = template.get("DBSubnetGroup", {}).get("DBSubnetGroupName")
        if subnet_group:
            settings["DBSubnetGroupName"] = subnet_group
            copied.append(f"subnet group {subnet_group}")
        groups = _security_groups(template)
        fence = self.config.fence_security_groups.get(home.region)
        if fence is not None and groups == [fence]:
            groups = tags.get(PREVIOUS_GROUPS_TAG, "").split()
            if not groups:
                raise ApplicationError(
                    f"the old primary {home} is fenced ({fence}) with no record of its security groups (tag "
                    f"{PREVIOUS_GROUPS_TAG}): drflow will not give the new replica the fence group; nothing "
                    "was changed",
                    type=ErrorType.STANDBY_RESYNC_FAILED,
                    non_retryable=True,
                )
            copied.append(f"security groups {', '.join(groups)} (from before the fence)")
        elif groups:
            copied.append(f"security groups {', '.join(groups)}")
        if groups:
            settings["VpcSecurityGroupIds"] = groups
        parameter_groups = [g["DBParameterGroupName"] for g in template.get("DBParameterGroups", [])]
        if parameter_groups and template.get("EngineVersion") == primary.get("EngineVersion"):
            settings["DBParameterGroupName"] = parameter_groups[0]
            copied.append(f"parameter group {parameter_groups[0]}")
        elif parameter_groups:
            actions.append(
                f"parameter group {parameter_groups[0]} not copied: the old primary ran "
                f"{template.get('EngineVersion')}, the source runs {primary.get('EngineVersion')} (the "
                "replica gets the region's default for its version)"
            )
        for key in ("MultiAZ", "StorageType", "PubliclyAccessible", "DeletionProtection"):
            if key in template:
                settings[key] = template[key]
        if primary.get("StorageEncrypted"):
            key_id = template.get("KmsKeyId") if template.get("StorageEncrypted") else None
            if not key_id:
                raise ApplicationError(
                    f"{primary['DBInstanceIdentifier']} is encrypted, and its replica in {home.aws_region} "
                    "needs a KMS key of that region, which the unencrypted old primary cannot lend: create "
                    "the replica by hand with a KMS key; nothing was changed",
                    type=ErrorType.STANDBY_RESYNC_FAILED,
                    non_retryable=True,
                )
            settings["KmsKeyId"] = key_id
            copied.append(f"KMS key {key_id}")
        actions.append(f"the new replica copies from the old primary: {'; '.join(copied)}")
        return settings

    def _retire(
        self, home: RdsInstance, existing: DBInstanceTypeDef, deadline: float, actions: list[str]
    ) -> None:
        """Rename the ex-primary away from the runbook's name (never delete it); wait for the name to free."""
        pending = existing.get("PendingModifiedValues", {}).get("DBInstanceIdentifier")
        if pending or existing["DBInstanceStatus"] == "renaming":
            actions.append(f"{home} is being renamed already ({pending or 'renaming'}): waiting")
        else:
            new_name = retired_name(home.identifier, datetime.now(UTC))
            self._modify(home, ErrorType.STANDBY_RESYNC_FAILED, NewDBInstanceIdentifier=new_name)
            actions.append(
                f"ModifyDBInstance {home}: renamed {new_name}, ApplyImmediately. The ex-primary is kept with "
                "its data (writes it took that the source never received live only there) and its security "
                "groups"
            )
        while self._describe_if_exists(home) is not None:
            heartbeat(f"{home.identifier}: renaming")
            if time.monotonic() >= deadline:
                raise ApplicationError(
                    f"{home} still has its name after the rename wait; a retry waits, never renames again",
                    type=ErrorType.STANDBY_RESYNC_FAILED,
                )
            time.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))

    def _create_replica(
        self, home: RdsInstance, primary: DBInstanceTypeDef, settings: dict[str, Any], actions: list[str]
    ) -> None:
        source_arn = primary["DBInstanceArn"]
        extra: dict[str, Any] = {}
        if "KmsKeyId" in settings and arn_region(source_arn) != home.aws_region:
            extra["SourceRegion"] = arn_region(source_arn)  # botocore presigns the encrypted copy
        tags: list[TagTypeDef] = [{"Key": "drflow:replica-of", "Value": source_arn}]
        try:
            call(
                self.clients.rds(home.aws_region).create_db_instance_read_replica,
                f"create {home.identifier}", backoff=self.backoff, safe_to_repeat=False,
                DBInstanceIdentifier=home.identifier, SourceDBInstanceIdentifier=source_arn, Tags=tags,
                **settings, **extra,
            )  # fmt: skip
            actions.append(f"CreateDBInstanceReadReplica {home} from {source_arn}")
        except ClientError as error:
            if error_code(error) != "DBInstanceAlreadyExists":
                raise self._step_error(error, f"creating {home}", ErrorType.STANDBY_RESYNC_FAILED) from None
            actions.append(f"{home} exists already (an earlier attempt created it): waiting")
        except BotoCoreError as error:
            raise self._step_error(error, f"creating {home}", ErrorType.STANDBY_RESYNC_FAILED) from None

    def _wait_for_replica(
        self, home: RdsInstance, current: RdsInstance, deadline: float
    ) -> DBInstanceTypeDef:
        while True:
            described = self._describe_if_exists(home)
            status = "not listed yet" if described is None else described["DBInstanceStatus"]
            if described is not None:
                if _is_replica(described) and not _replicates_from(described, current):
                    raise ApplicationError(
                        f"{home} replicates from {described.get('ReadReplicaSourceDBInstanceIdentifier')}, "
                        f"not {current}",
                        type=ErrorType.DATABASE_STATE_CONFLICT,
                        non_retryable=True,
                    )
                if _replicating(described):
                    return described
                replication = _replication_state(described)
                if status in _BROKEN or replication in ("error", "terminated", "stopped"):
                    raise ApplicationError(
                        f"the new replica {home} is {status}, replication {replication or 'unknown'}: RDS "
                        "could not set it up; see its events, fix the cause, delete the new replica and "
                        "retry (the ex-primary is kept under its retired name)",
                        type=ErrorType.STANDBY_RESYNC_FAILED,
                        non_retryable=True,
                    )
            heartbeat(f"{home.identifier}: {status}")
            if time.monotonic() >= deadline:
                raise ApplicationError(
                    f"the new replica {home} is still {status} after the re-sync wait (a cross-region "
                    "replica first copies the whole database); a retry keeps waiting, creating no other",
                    type=ErrorType.STANDBY_RESYNC_FAILED,
                )
            time.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))

    def _find_retired(self, home: RdsInstance) -> DBInstanceTypeDef | None:
        """The most recently retired ex-primary of this name (the names end in a sortable UTC time)."""
        prefix = _retired_prefix(home.identifier)
        found: list[DBInstanceTypeDef] = []
        marker: dict[str, Any] = {}
        while True:
            page = call(
                self.clients.rds(home.aws_region).describe_db_instances, "list instances",
                backoff=self.backoff, **marker,
            )  # fmt: skip
            found += [i for i in page["DBInstances"] if i["DBInstanceIdentifier"].startswith(prefix)]
            marker = {"Marker": page["Marker"]} if page.get("Marker") else {}
            if not marker:
                return max(found, key=lambda i: i["DBInstanceIdentifier"], default=None)

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
        if source.region in described:
            checks.extend(self._resync_checks(source, replica, described))
            checks.append(self._instance_quota(source))
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
                name="rds:PromoteReadReplica, ModifyDBInstance, RebootDBInstance, "
                "CreateDBInstanceReadReplica",
                ok=None,
                detail="not verifiable without changing an instance (no dry run); granted by "
                "infra/aws/iam-policy.json",
            )
        )
        return PreflightReport.of(self.name, checks)

    def _instance_quota(self, source: RdsInstance) -> PreflightCheck:
        """The re-sync after a failover creates one instance in the source's region and keeps the old
        primary beside it (renamed), so that region needs room for one more DB instance. Advice: the
        failover itself creates nothing."""
        name = f"DB instance quota in {source.aws_region}"
        try:
            answer = call(
                self.clients.rds(source.aws_region).describe_account_attributes,
                "describe account attributes", backoff=self.backoff,
            )  # fmt: skip
        except Exception as error:  # advice: no answer of any shape may break the preflight
            code = error_code(error)
            if code in ("AccessDenied", "AccessDeniedException"):
                detail = "not permitted: grant rds:DescribeAccountAttributes (infra/aws/iam-policy.json)"
            else:
                detail = f"could not be read: {code or type(error).__name__}: {error_message(error)}"
            return PreflightCheck(name=name, ok=None, detail=detail)
        quota = next(
            (q for q in answer.get("AccountQuotas", []) if q.get("AccountQuotaName") == "DBInstances"), None
        )
        if quota is None:
            return PreflightCheck(name=name, ok=None, detail="RDS reports no DBInstances quota")
        used, limit = int(quota.get("Used", 0)), int(quota.get("Max", 0))
        detail = f"{used} of {limit} DB instances"
        if used + 1 <= limit and used < INSTANCE_QUOTA_WARN * limit:
            return PreflightCheck(name=name, ok=True, detail=detail)
        room = "no room" if used + 1 > limit else f"{limit - used} left, warns from {INSTANCE_QUOTA_WARN:.0%}"
        return PreflightCheck(
            name=name,
            ok=False,
            warning="instance-quota-near",
            detail=f"{detail} ({room}): the re-sync after a failover creates one more here while it keeps "
            "the old primary; ask for more in Service Quotas (Amazon RDS, DB instances)",
        )

    def _resync_checks(
        self, source: RdsInstance, replica: RdsInstance, described: dict[str, DBInstanceTypeDef]
    ) -> list[PreflightCheck]:
        """What the fence and a later failback's re-sync need, read now so a gap shows before a change."""
        src = described[source.region]
        checks: list[PreflightCheck] = []
        group = self.config.fence_security_groups.get(source.region)
        groups = _security_groups(src)
        if group is None:
            checks.append(
                PreflightCheck(
                    name=f"fence of {source}",
                    ok=None,
                    detail=f"database.fence_security_groups.{source.region} is not set: a planned or drill "
                    "failover refuses at the fence, an emergency one goes on unfenced",
                )
            )
        else:
            checks.append(
                PreflightCheck(
                    name=f"fence of {source}",
                    ok=groups != [group],
                    detail=f"would swap {', '.join(groups) or 'no groups'} for {group} and reboot"
                    if groups != [group]
                    else f"it already has only the fence group {group}: clients cannot reach it",
                )
            )
        retention = src.get("BackupRetentionPeriod", 0)
        checks.append(
            PreflightCheck(
                name=f"{source} can be a read replica source",
                ok=retention > 0,
                detail=f"automated backups kept {retention} days"
                if retention > 0
                else "automated backups are off (BackupRetentionPeriod 0): RDS makes read replicas only of "
                "an instance with backups, so a failback could not re-sync the old primary from it",
            )
        )
        dst = described.get(replica.region)
        if dst is not None:
            replica_retention = dst.get("BackupRetentionPeriod", 0)
            checks.append(
                PreflightCheck(
                    name=f"{replica} can be a read replica source once promoted",
                    ok=True,
                    detail=f"automated backups kept {replica_retention} days"
                    if replica_retention
                    else "PromoteReadReplica turns automated backups on (1 day), which the failback "
                    f"re-sync of {source.region} from it needs",
                )
            )
            if dst.get("StorageEncrypted") and not (src.get("StorageEncrypted") and src.get("KmsKeyId")):
                checks.append(
                    PreflightCheck(
                        name=f"KMS key for a new replica in {source.aws_region}",
                        ok=False,
                        detail=f"{replica} is encrypted and {source} has no KMS key the re-sync could reuse",
                    )
                )
        checks.append(
            PreflightCheck(
                name=f"what a re-sync of {source.region} copies",
                ok=True,
                detail=f"class {src.get('DBInstanceClass')}, subnet group "
                f"{src.get('DBSubnetGroup', {}).get('DBSubnetGroupName') or 'none'}, security groups "
                f"{', '.join(groups) or 'none'}; the old primary is renamed "
                f"{_retired_prefix(source.identifier)}<time> and kept",
            )
        )
        return checks

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

    def _describe_if_exists(self, instance: RdsInstance) -> DBInstanceTypeDef | None:
        try:
            return self._describe(instance)
        except ApplicationError as error:
            if error.type == ErrorType.CLOUD_RESOURCE_NOT_FOUND:
                return None
            raise

    def _modify(self, instance: RdsInstance, error_type: str, **changes: Any) -> None:
        """ModifyDBInstance, applied now; a rename is never sent twice (the name is gone once it ran)."""
        try:
            call(
                self.clients.rds(instance.aws_region).modify_db_instance,
                f"modify {instance.identifier}",
                backoff=self.backoff,
                safe_to_repeat="NewDBInstanceIdentifier" not in changes,
                DBInstanceIdentifier=instance.identifier,
                ApplyImmediately=True,
                **changes,
            )
        except (ClientError, BotoCoreError) as error:
            raise self._step_error(error, f"modifying {instance}", error_type) from None

    def _tags(self, arn: str) -> dict[str, str]:
        try:
            response = call(
                self.clients.rds(arn_region(arn) or "us-east-1").list_tags_for_resource,
                "list tags", backoff=self.backoff, ResourceName=arn,
            )  # fmt: skip
        except (ClientError, BotoCoreError) as error:
            raise self._step_error(error, f"reading tags of {arn}", ErrorType.DATABASE_UNREACHABLE) from None
        listed = response.get("TagList", [])
        return {tag["Key"]: tag["Value"] for tag in listed if "Key" in tag and "Value" in tag}

    def _tag(self, arn: str, tags: dict[str, str]) -> None:
        try:
            call(
                self.clients.rds(arn_region(arn) or "us-east-1").add_tags_to_resource,
                "tag", backoff=self.backoff, ResourceName=arn,
                Tags=[{"Key": key, "Value": value} for key, value in tags.items()],
            )  # fmt: skip
        except (ClientError, BotoCoreError) as error:
            raise self._step_error(error, f"tagging {arn}", ErrorType.DATABASE_UNREACHABLE) from None

    def _untag(self, arn: str, keys: list[str]) -> None:
        try:
            call(
                self.clients.rds(arn_region(arn) or "us-east-1").remove_tags_from_resource,
                "untag", backoff=self.backoff, ResourceName=arn, TagKeys=keys,
            )  # fmt: skip
        except (ClientError, BotoCoreError) as error:
            raise self._step_error(error, f"untagging {arn}", ErrorType.DATABASE_UNREACHABLE) from None

    def _step_error(self, error: BaseException, doing: str, error_type: str) -> ApplicationError:
        failure = aws_error(error, doing)
        return ApplicationError(
            failure.message
            + ("" if failure.non_retryable else "; a retry checks the instance's state first"),
            type=failure.type if failure.non_retryable else error_type,
            non_retryable=failure.non_retryable,
        )

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


INSTANCE_QUOTA_WARN = 0.9
"""A region using this fraction of its DB instance quota is warned about: a re-sync needs one more."""


def _is_replica(instance: DBInstanceTypeDef) -> bool:
    return bool(instance.get("ReadReplicaSourceDBInstanceIdentifier"))


def _replicates_from(replica: DBInstanceTypeDef, source: RdsInstance) -> bool:
    named = str(replica.get("ReadReplicaSourceDBInstanceIdentifier", ""))
    return named in (source.reference, source.identifier) or arn_resource(named) == source.identifier


def _serving(instance: DBInstanceTypeDef | None) -> bool:
    return instance is not None and instance["DBInstanceStatus"] not in _NOT_SERVING


def _security_groups(instance: DBInstanceTypeDef) -> list[str]:
    memberships = instance.get("VpcSecurityGroups", [])
    return [g["VpcSecurityGroupId"] for g in memberships if "VpcSecurityGroupId" in g]


def _replication_state(instance: DBInstanceTypeDef) -> str | None:
    """The "read replication" status RDS reports for a replica (replicating, error, ...), if any."""
    for info in instance.get("StatusInfos", []):
        if info.get("StatusType") == "read replication":
            return info.get("Status")
    return None


def _replicating(instance: DBInstanceTypeDef) -> bool:
    return (
        _is_replica(instance)
        and instance["DBInstanceStatus"] == "available"
        and _replication_state(instance) in (None, "replicating")
    )


def _check_replica_source(source: RdsInstance, described: DBInstanceTypeDef) -> None:
    """Before anything is renamed: the current primary must be able to have a read replica."""
    problem = None
    if _is_replica(described):
        problem = f"it is itself a read replica of {described.get('ReadReplicaSourceDBInstanceIdentifier')}"
    elif described["DBInstanceStatus"] in _NOT_SERVING:
        problem = f"it is {described['DBInstanceStatus']}"
    elif not described.get("BackupRetentionPeriod"):
        problem = (
            "its automated backups are off (BackupRetentionPeriod 0), and RDS makes read replicas only of an "
            "instance with backups: turn them on (ModifyDBInstance --backup-retention-period 1 or more)"
        )
    if problem is not None:
        raise ApplicationError(
            f"cannot re-sync from {source}: {problem}; nothing was changed",
            type=ErrorType.STANDBY_RESYNC_FAILED,
            non_retryable=True,
        )


def _retired_prefix(identifier: str) -> str:
    suffix = len("20260101120000")
    return identifier.lower()[: _IDENTIFIER_LIMIT - len(RETIRED_MARK) - suffix].rstrip("-") + RETIRED_MARK


def retired_name(identifier: str, when: datetime) -> str:
    """``orders-use1`` -> ``orders-use1-drflow-retired-20261202003318``: within RDS's 63 characters."""
    return _retired_prefix(identifier) + when.strftime("%Y%m%d%H%M%S")
