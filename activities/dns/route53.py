"""Route53: a ``DnsProvider`` (simple records) and ``TrafficWeights`` (weighted records) over boto3.

Writes are conditional, like RFC2136 prerequisites: one change batch DELETEs the record set exactly as it was
read (name, type, TTL, values) and CREATEs the new one. Route53 applies a batch atomically and refuses a
DELETE whose values no longer match, so a change made by someone else between planning and applying fails the
batch (``ConcurrentChange``) instead of being overwritten, and a retried batch can never apply twice. (An
UPSERT would silently overwrite; it is used nowhere.)

``apply`` returns the change id; ``dns_wait_for_change`` polls GetChange until INSYNC (the change is on every
Route53 nameserver), then ``dns_verify_propagation`` asks the nameservers themselves.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import BotoCoreError, ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.cloud.aws import AwsClientFactory, AwsClients, aws_error, call, error_code, error_message
from activities.cloud.aws import is_throttling as _is_throttling
from activities.cloud.aws import may_have_run as _may_have_run
from activities.cloud.preflight import PreflightCheck, PreflightReport
from activities.cloud.retry import DEFAULT_BACKOFF, Backoff
from activities.dns.plan import DnsChangePlan, DnsRecordState, normalise_value
from activities.dns.reader import RecordType
from activities.dns.weights import TrafficShare, TrafficState, WeightPlan
from activities.errors import ConcurrentChange, ErrorType
from runbooks.model import Route53Dns

if TYPE_CHECKING:
    from mypy_boto3_route53.type_defs import (
        ChangeTypeDef,
        ResourceRecordSetOutputTypeDef,
        ResourceRecordSetTypeDef,
    )

# Route53 refuses a batch whose DELETE or CREATE no longer fits the zone with InvalidChangeBatch and one of
# these phrases: the record was changed by someone else since it was read.
_CONFLICT_PHRASES = ("already exists", "but it was not found", "do not match")


ZONE_QUOTA_WARN = 0.9
"""A hosted zone using this fraction of its record sets is warned about: creating one more may be refused."""


def _accelerated_recovery(zone_id: str, zone: Any, status: str | None) -> PreflightCheck:
    """Route53 accelerated recovery lets the zone accept changes (from us-west-2) within about an hour of a
    us-east-1 impairment; it must be enabled beforehand, so the time to find it off is now."""
    name = "accelerated recovery"
    if status == "ENABLED":
        return PreflightCheck(name=name, ok=True, detail="ENABLED")
    enable = (
        f"enable it beforehand: aws route53 update-hosted-zone-features --hosted-zone-id {zone_id} "
        "--enable-accelerated-recovery"
    )
    if status is None:
        private = (zone.get("Config") or {}).get("PrivateZone")
        why = "a private zone cannot have it" if private else "the zone reports no status"
        detail = f"the runbook expects it, but {why}"
        if not private:
            detail += f"; {enable}"
    else:
        reason = ((zone.get("Features") or {}).get("FailureReasons") or {}).get("AcceleratedRecovery")
        detail = f"{status}, the runbook expects ENABLED" + (f" ({reason})" if reason else "")
        if status not in ("ENABLING", "ENABLING_HOSTED_ZONE_LOCKED"):
            detail += f"; {enable}"
    return PreflightCheck(name=name, ok=False, warning="accelerated-recovery-off", detail=detail)


class Route53Provider:
    name = "route53"
    supports_weights = True
    reports_change_status = True

    def __init__(
        self, config: Route53Dns, clients: AwsClientFactory | None = None, backoff: Backoff = DEFAULT_BACKOFF
    ) -> None:
        self.config = config
        self.clients = clients or AwsClients()
        self.backoff = backoff

    @property
    def zone_label(self) -> str:
        return f"hosted zone {self.config.hosted_zone_id} ({self.config.zone})"

    # ------------------------------------------------------------------------------------ DnsProvider
    async def read(self, record: str, type: RecordType) -> DnsRecordState:
        return await asyncio.to_thread(self._read, record, type)

    async def apply(self, plan: DnsChangePlan) -> str | None:
        return await asyncio.to_thread(self._apply, plan)

    async def change_status(self, change_id: str) -> tuple[bool, str]:
        return await asyncio.to_thread(self._change_status, change_id)

    # --------------------------------------------------------------------------------- TrafficWeights
    async def read_weights(self, record: str, type: RecordType, addresses: dict[str, str]) -> TrafficState:
        return await asyncio.to_thread(self._read_weights, record, type)

    async def apply_weights(self, plan: WeightPlan, addresses: dict[str, str]) -> str | None:
        return await asyncio.to_thread(self._apply_weights, plan)

    # ------------------------------------------------------------------------------------- preflight
    def preflight(self, weighted: dict[str, str] | None = None) -> PreflightReport:
        """Credentials, the hosted zone, reading the record; writing has no dry run in Route53."""
        checks: list[PreflightCheck] = []
        try:
            identity = call(self.clients.sts().get_caller_identity, "who am I", backoff=self.backoff)
            checks.append(
                PreflightCheck(name="AWS credentials", ok=True, detail=f"valid, as {identity['Arn']}")
            )
        except (ClientError, BotoCoreError) as error:
            checks.append(
                PreflightCheck(
                    name="AWS credentials", ok=False, detail=aws_error(error, "GetCallerIdentity").message
                )
            )
            return PreflightReport.of(self.name, checks)
        try:
            zone = call(
                self.clients.route53().get_hosted_zone, "get hosted zone", backoff=self.backoff,
                Id=self.config.hosted_zone_id,
            )["HostedZone"]  # fmt: skip
            zone_name = zone["Name"].lower()
            checks.append(
                PreflightCheck(
                    name=f"hosted zone {self.config.hosted_zone_id}",
                    ok=zone_name == self.config.zone,
                    detail=f"exists, named {zone_name}"
                    + (
                        ""
                        if zone_name == self.config.zone
                        else f", but the runbook's zone is {self.config.zone}"
                    ),
                )
            )
            checks += self._zone_advice(zone)
        except (ClientError, BotoCoreError) as error:
            checks.append(
                PreflightCheck(
                    name=f"hosted zone {self.config.hosted_zone_id}",
                    ok=False,
                    detail=aws_error(error, "GetHostedZone", resource=self.config.hosted_zone_id).message,
                )
            )
            return PreflightReport.of(self.name, checks)
        try:
            served = (
                self._read(self.config.record, self.config.type).describe()
                if weighted is None
                else self._read_weights(self.config.record, self.config.type).describe()
            )
            checks.append(
                PreflightCheck(
                    name=f"read {self.config.record} {self.config.type}", ok=True, detail=f"serves {served}"
                )
            )
        except ApplicationError as error:
            checks.append(
                PreflightCheck(
                    name=f"read {self.config.record} {self.config.type}", ok=False, detail=error.message
                )
            )
        checks.append(
            PreflightCheck(
                name="route53:ChangeResourceRecordSets, route53:GetChange",
                ok=None,
                detail="not verifiable without a write (Route53 has no dry run); granted by "
                "infra/aws/iam-policy.json",
            )
        )
        return PreflightReport.of(self.name, checks)

    def _zone_advice(self, zone: Any) -> list[PreflightCheck]:
        """Advisory checks of the zone: accelerated recovery where the runbook expects it, the record-set
        quota. A failover works without either today, so they are early warnings, never blockers."""
        checks: list[PreflightCheck] = []
        features = zone.get("Features") or {}
        status = features.get("AcceleratedRecoveryStatus")
        if self.config.accelerated_recovery:
            checks.append(_accelerated_recovery(self.config.hosted_zone_id, zone, status))
        elif status is not None:
            checks.append(
                PreflightCheck(
                    name="accelerated recovery", ok=True, detail=f"{status} (the runbook does not ask for it)"
                )
            )
        checks.append(self._record_set_quota())
        return checks

    def _record_set_quota(self) -> PreflightCheck:
        name = "record-set quota"
        try:
            answer = call(
                self.clients.route53().get_hosted_zone_limit, "get hosted zone limit", backoff=self.backoff,
                Type="MAX_RRSETS_BY_ZONE", HostedZoneId=self.config.hosted_zone_id,
            )  # fmt: skip
        except Exception as error:  # advice: no answer of any shape may break the preflight
            if error_code(error) in ("AccessDenied", "AccessDeniedException"):
                detail = "not permitted: grant route53:GetHostedZoneLimit (infra/aws/iam-policy.json)"
            else:
                detail = (
                    f"could not be read: {error_code(error) or type(error).__name__}: {error_message(error)}"
                )
            return PreflightCheck(name=name, ok=None, detail=detail)
        limit, count = int(answer["Limit"]["Value"]), int(answer["Count"])
        used = count / limit if limit else 1.0
        detail = f"{count} of {limit} record sets ({used:.0%})"
        if used < ZONE_QUOTA_WARN:
            return PreflightCheck(name=name, ok=True, detail=detail)
        return PreflightCheck(
            name=name,
            ok=False,
            warning="zone-quota-near",
            detail=f"{detail}, warns from {ZONE_QUOTA_WARN:.0%}: a change that must create a record set is "
            "refused at the limit; ask for more in Service Quotas (Route 53, record sets per hosted zone)",
        )

    # ------------------------------------------------------------------------------------- internals
    def _record_sets(self, record: str, type: RecordType) -> list[ResourceRecordSetOutputTypeDef]:
        """Every record set of this name and type (simple and routing-policy ones), across pages."""
        client = self.clients.route53()
        found: list[ResourceRecordSetOutputTypeDef] = []
        kwargs: dict[str, Any] = {
            "HostedZoneId": self.config.hosted_zone_id,
            "StartRecordName": record,
            "StartRecordType": type,
            "MaxItems": "100",
        }
        while True:
            try:
                page = call(
                    client.list_resource_record_sets, f"read {record} {type}", backoff=self.backoff, **kwargs
                )
            except (ClientError, BotoCoreError) as error:
                raise self._error(error, f"reading {record} {type}") from None
            matching = [
                rs
                for rs in page["ResourceRecordSets"]
                if _same_name(rs["Name"], record) and rs["Type"] == type
            ]
            found.extend(matching)
            more = page.get("IsTruncated") and _same_name(page.get("NextRecordName", ""), record)
            if (
                not more
                or page.get("NextRecordType") != type
                or len(matching) < len(page["ResourceRecordSets"])
            ):
                return found
            kwargs["StartRecordName"] = page["NextRecordName"]
            kwargs["StartRecordType"] = page["NextRecordType"]
            if "NextRecordIdentifier" in page:
                kwargs["StartRecordIdentifier"] = page["NextRecordIdentifier"]

    def _simple(self, record: str, type: RecordType) -> ResourceRecordSetOutputTypeDef | None:
        """The simple record set a failover rewrites; a name served only by routing policies is refused."""
        sets = self._record_sets(record, type)
        simple = [rs for rs in sets if "SetIdentifier" not in rs]
        if not simple and sets:
            identifiers = ", ".join(str(rs.get("SetIdentifier")) for rs in sets)
            raise ApplicationError(
                f"{record} {type} in {self.zone_label} is served by routing-policy record sets (set "
                "identifiers "
                f"{identifiers}), not one simple record: a failover rewrites a simple record; move weights "
                "with "
                "traffic_plan_weights, or make the record simple",
                type=ErrorType.UNSUPPORTED_DNS_RECORD,
                non_retryable=True,
            )
        if simple and "AliasTarget" in simple[0]:
            target = simple[0]["AliasTarget"]["DNSName"]
            raise ApplicationError(
                f"{record} {type} in {self.zone_label} is an alias to {target}; drflow moves records that "
                "list "
                "their values (A, AAAA, CNAME), not aliases",
                type=ErrorType.UNSUPPORTED_DNS_RECORD,
                non_retryable=True,
            )
        return simple[0] if simple else None

    def _read(self, record: str, type: RecordType) -> DnsRecordState:
        simple = self._simple(record, type)
        if simple is None:
            return DnsRecordState(record=record, type=type, ttl=None, values=[])
        return DnsRecordState(record=record, type=type, ttl=simple.get("TTL"), values=_values(type, simple))

    def _apply(self, plan: DnsChangePlan) -> str | None:
        simple = self._simple(plan.record, plan.type)
        observed = (
            DnsRecordState(record=plan.record, type=plan.type, ttl=None, values=[])
            if simple is None
            else DnsRecordState(
                record=plan.record, type=plan.type, ttl=simple.get("TTL"), values=_values(plan.type, simple)
            )
        )
        if observed != plan.current:
            raise ConcurrentChange(f"Route53 now serves {observed.describe()}")
        changes: list[ChangeTypeDef] = []
        if simple is not None:
            changes.append({"Action": "DELETE", "ResourceRecordSet": _as_input(simple)})
        changes.append(
            {
                "Action": "CREATE",
                "ResourceRecordSet": {
                    "Name": plan.record,
                    "Type": plan.type,
                    "TTL": plan.desired.ttl or self.config.ttl,
                    "ResourceRecords": [{"Value": value} for value in plan.desired.values],
                },
            }
        )
        return self._submit(
            changes,
            f"drflow plan {plan.checksum[:16]}: {plan.record} -> {plan.desired.describe()}",
            plan.record,
        )

    def _submit(self, changes: list[ChangeTypeDef], comment: str, record: str) -> str:
        """One atomic change batch. Throttled attempts did not run and are retried; one that may have run
        is not repeated here: the activity's retry re-reads and finds either the old or the new state."""
        try:
            response = call(
                self.clients.route53().change_resource_record_sets,
                f"change {record}",
                backoff=self.backoff,
                safe_to_repeat=False,
                HostedZoneId=self.config.hosted_zone_id,
                ChangeBatch={"Comment": comment[:256], "Changes": changes},
            )
        except ClientError as error:
            message = error_message(error)
            if error_code(error) == "InvalidChangeBatch" and any(
                phrase in message for phrase in _CONFLICT_PHRASES
            ):
                raise ConcurrentChange(message) from None
            raise self._error(error, f"changing {record}", write=True) from None
        except BotoCoreError as error:
            raise self._error(error, f"changing {record}", write=True) from None
        change_id = response["ChangeInfo"]["Id"].removeprefix("/change/")
        if activity.in_activity():
            activity.logger.info(
                "Route53 accepted change %s for %s (%s)", change_id, record, response["ChangeInfo"]["Status"]
            )
        return change_id

    def _change_status(self, change_id: str) -> tuple[bool, str]:
        try:
            info = call(
                self.clients.route53().get_change,
                f"status of change {change_id}",
                backoff=self.backoff,
                Id=change_id,
            )
        except (ClientError, BotoCoreError) as error:
            raise self._error(error, f"reading the status of change {change_id}") from None
        status = info["ChangeInfo"]["Status"]
        return status == "INSYNC", status

    def _read_weights(self, record: str, type: RecordType) -> TrafficState:
        return self._read_weights_from(record, type, self._record_sets(record, type))

    def _apply_weights(self, plan: WeightPlan) -> str | None:
        """One batch: the plain record (if any) and each changed entry deleted as read, then created."""
        sets = self._record_sets(plan.record, plan.type)
        if self._read_weights_from(plan.record, plan.type, sets) != plan.current:
            raise ConcurrentChange("the weighted record sets changed since planning")
        by_identifier = {rs["SetIdentifier"]: rs for rs in sets if "SetIdentifier" in rs}
        current = {share.region: share for share in plan.current.shares}
        changes: list[ChangeTypeDef] = [
            {"Action": "DELETE", "ResourceRecordSet": _as_input(rs)}
            for rs in sets
            if "SetIdentifier" not in rs and "AliasTarget" not in rs
        ]
        ttl = plan.desired.ttl or self.config.ttl
        for share in plan.desired.shares:
            if current.get(share.region) == share:
                continue
            if share.region in by_identifier:
                changes.append(
                    {"Action": "DELETE", "ResourceRecordSet": _as_input(by_identifier[share.region])}
                )
            changes.append(
                {
                    "Action": "CREATE",
                    "ResourceRecordSet": {
                        "Name": plan.record,
                        "Type": plan.type,
                        "SetIdentifier": share.region,
                        "Weight": share.weight,
                        "TTL": by_identifier[share.region].get("TTL", ttl)
                        if share.region in by_identifier
                        else ttl,
                        "ResourceRecords": [{"Value": value} for value in share.values],
                    },
                }
            )
        weights = ", ".join(f"{s.region}={s.weight}" for s in plan.desired.shares)
        return self._submit(changes, f"drflow weights {plan.checksum[:16]}: {weights}", plan.record)

    def _read_weights_from(
        self, record: str, type: RecordType, sets: list[ResourceRecordSetOutputTypeDef]
    ) -> TrafficState:
        weighted = [rs for rs in sets if "Weight" in rs and "SetIdentifier" in rs]
        plain = [rs for rs in sets if "SetIdentifier" not in rs and "AliasTarget" not in rs]
        ttl = next((rs.get("TTL") for rs in [*weighted, *plain] if rs.get("TTL") is not None), None)
        return TrafficState(
            record=record,
            type=type,
            ttl=ttl,
            shares=sorted(
                (
                    TrafficShare(region=rs["SetIdentifier"], values=_values(type, rs), weight=rs["Weight"])
                    for rs in weighted
                ),
                key=lambda share: share.region,
            ),
            plain_values=_values(type, plain[0]) if plain else [],
            foreign=sorted(
                str(rs.get("SetIdentifier")) for rs in sets if "SetIdentifier" in rs and "Weight" not in rs
            ),
        )

    def _error(self, error: BaseException, doing: str, *, write: bool = False) -> ApplicationError:
        failure = aws_error(error, doing, resource=self.zone_label)
        if write and (_is_throttling(error) or _may_have_run(error)):
            return ApplicationError(
                failure.message + "; it may or may not have been applied, a retry re-reads first",
                type=ErrorType.DNS_PROVIDER_UNAVAILABLE,
            )
        if (
            failure.type in (ErrorType.CLOUD_THROTTLED, ErrorType.CLOUD_UNAVAILABLE)
            and not failure.non_retryable
        ):
            return ApplicationError(failure.message, type=ErrorType.DNS_PROVIDER_UNAVAILABLE)
        return failure


def _as_input(record_set: ResourceRecordSetOutputTypeDef) -> ResourceRecordSetTypeDef:
    """A record set exactly as Route53 listed it, to DELETE it: Route53 requires every field to match."""
    return cast("ResourceRecordSetTypeDef", record_set)


def _same_name(name: str, record: str) -> bool:
    # Route53 answers names in lower case with a trailing dot, and escapes unusual characters (\052 for *).
    return name.lower().replace("\\052", "*") == record.lower()


def _values(type: RecordType, record_set: ResourceRecordSetOutputTypeDef) -> list[str]:
    values = []
    for rr in record_set.get("ResourceRecords", []):
        value = rr["Value"]
        if type == "CNAME" and not value.endswith("."):
            value += "."  # Route53 treats CNAME targets as fully qualified whether or not they end with a dot
        values.append(normalise_value(type, value))
    return sorted(values)
