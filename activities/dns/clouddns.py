"""Cloud DNS: a ``DnsProvider`` and ``TrafficWeights`` (weighted round robin) over the REST API's JSON.

google-cloud-dns keeps the credentials (application default credentials) and the authorised transport, but
its record-set objects are not used: 0.37 has no routing policies, and its ``list_resource_record_sets``
crashes (``KeyError: 'rrdatas'``) on any zone holding a routing-policy record set. So the record sets are read
and written as the API's JSON through the client's connection.

A change is conditional: its ``deletions`` carry the record set exactly as read, and Cloud DNS refuses the
whole change when a deletion no longer matches (412) or an addition already exists (409). ``apply`` returns
the change id; ``dns_wait_for_change`` polls it until ``done``, which means Cloud DNS's own servers have it,
not that every nameserver answers it: ``dns_verify_propagation`` checks that.
"""

from __future__ import annotations

import asyncio
from typing import Any

import requests
from google.api_core import exceptions as google_errors
from google.auth import exceptions as auth_errors
from google.cloud import dns as google_dns
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.cloud.preflight import PreflightCheck, PreflightReport
from activities.cloud.retry import DEFAULT_BACKOFF, Backoff, Verdict, with_backoff
from activities.dns.plan import DnsChangePlan, DnsRecordState, normalise_value
from activities.dns.reader import RecordType
from activities.dns.weights import TrafficShare, TrafficState, WeightPlan
from activities.errors import ConcurrentChange, ErrorType
from runbooks.model import CloudDns

RecordSet = dict[str, Any]

# What drflow does with a zone; preflight asks Cloud DNS which of them the worker holds (infra/gcp/role.yaml).
REQUIRED_PERMISSIONS = (
    "dns.managedZones.get",
    "dns.resourceRecordSets.list",
    "dns.resourceRecordSets.create",
    "dns.resourceRecordSets.delete",
    "dns.changes.create",
    "dns.changes.get",
)
_RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
_CONNECTION_ERRORS = (requests.ConnectionError, requests.Timeout)


class CloudDnsProvider:
    name = "clouddns"
    supports_weights = True
    reports_change_status = True

    def __init__(
        self, config: CloudDns, client: Any | None = None, backoff: Backoff = DEFAULT_BACKOFF
    ) -> None:
        self.config = config
        self._client = client
        self.backoff = backoff

    @property
    def zone_label(self) -> str:
        return f"managed zone {self.config.managed_zone} in project {self.config.project}"

    @property
    def _zone_path(self) -> str:
        return f"/projects/{self.config.project}/managedZones/{self.config.managed_zone}"

    # ------------------------------------------------------------------------------------ DnsProvider
    async def read(self, record: str, type: RecordType) -> DnsRecordState:
        return await asyncio.to_thread(self._read, record, type)

    async def apply(self, plan: DnsChangePlan) -> str | None:
        return await asyncio.to_thread(self._apply, plan)

    async def change_status(self, change_id: str) -> tuple[bool, str]:
        return await asyncio.to_thread(self._change_status, change_id)

    # --------------------------------------------------------------------------------- TrafficWeights
    async def read_weights(self, record: str, type: RecordType, addresses: dict[str, str]) -> TrafficState:
        return await asyncio.to_thread(self._read_weights, record, type, addresses)

    async def apply_weights(self, plan: WeightPlan, addresses: dict[str, str]) -> str | None:
        return await asyncio.to_thread(self._apply_weights, plan, addresses)

    # ------------------------------------------------------------------------------------- preflight
    def preflight(self, weighted: dict[str, str] | None = None) -> PreflightReport:
        """Credentials and the zone (one GET), reading the record, and the permissions Cloud DNS reports."""
        checks: list[PreflightCheck] = []
        try:
            zone = self._request("GET", self._zone_path, what="get the managed zone")
        except ApplicationError as error:
            checks.append(PreflightCheck(name=self.zone_label, ok=False, detail=error.message))
            return PreflightReport.of(self.name, checks)
        dns_name = str(zone.get("dnsName", "")).lower()
        checks.append(
            PreflightCheck(
                name=self.zone_label,
                ok=dns_name == self.config.zone,
                detail=f"exists, serving {dns_name}"
                + ("" if dns_name == self.config.zone else f", but the runbook's zone is {self.config.zone}"),
            )
        )
        try:
            served = (
                self._read(self.config.record, self.config.type).describe()
                if weighted is None
                else self._read_weights(self.config.record, self.config.type, weighted).describe()
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
        try:
            granted = self._request(
                "POST",
                f"{self._zone_path}:testIamPermissions",
                data={"permissions": list(REQUIRED_PERMISSIONS)},
                what="test permissions on the managed zone",
            ).get("permissions", [])
            missing = [permission for permission in REQUIRED_PERMISSIONS if permission not in granted]
            checks.append(
                PreflightCheck(
                    name="permissions",
                    ok=not missing,
                    detail=f"missing {', '.join(missing)} (see infra/gcp/role.yaml)"
                    if missing
                    else "all granted (testIamPermissions)",
                )
            )
        except ApplicationError as error:
            checks.append(
                PreflightCheck(name="permissions", ok=None, detail=f"could not be tested: {error.message}")
            )
        return PreflightReport.of(self.name, checks)

    # ------------------------------------------------------------------------------------- internals
    def _connection(self) -> Any:
        if self._client is None:
            try:
                self._client = google_dns.Client(project=self.config.project)
            except auth_errors.DefaultCredentialsError as error:
                raise ApplicationError(
                    f"no Google Cloud credentials for {self.zone_label}: {error} drflow uses application "
                    "default credentials (GOOGLE_APPLICATION_CREDENTIALS, workload identity, or the metadata "
                    "server)",
                    type=ErrorType.CLOUD_CREDENTIALS,
                    non_retryable=True,
                ) from None
        return self._client._connection

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        data: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
        safe_to_repeat: bool = True,
    ) -> dict[str, Any]:
        connection = self._connection()

        def classify(error: Exception) -> Verdict:
            if _is_throttling(error):
                return "retry"
            return "retry" if safe_to_repeat and _may_have_run(error) else "raise"

        try:
            response: dict[str, Any] = with_backoff(
                lambda: connection.api_request(method=method, path=path, data=data, query_params=query),
                classify,
                self.backoff,
                f"Cloud DNS: {what}",
                provider="gcp",
                throttled=_is_throttling,
            )
        except (google_errors.GoogleAPICallError, auth_errors.GoogleAuthError, *_CONNECTION_ERRORS) as error:
            raise self._error(error, what, write=not safe_to_repeat) from None
        return response

    def _record_set(self, record: str, type: RecordType) -> RecordSet | None:
        found: list[RecordSet] = []
        query = {"name": record, "type": type}
        while True:
            page = self._request(
                "GET", f"{self._zone_path}/rrsets", query=query, what=f"read {record} {type}"
            )
            found += [
                rs
                for rs in page.get("rrsets", [])
                if rs.get("name", "").lower() == record and rs.get("type") == type
            ]
            token = page.get("nextPageToken")
            if not token:
                break
            query = {**query, "pageToken": token}
        return found[0] if found else None

    def _read(self, record: str, type: RecordType) -> DnsRecordState:
        return self._state(record, type, self._record_set(record, type))

    def _state(self, record: str, type: RecordType, rrset: RecordSet | None) -> DnsRecordState:
        if rrset is None:
            return DnsRecordState(record=record, type=type, ttl=None, values=[])
        if "routingPolicy" in rrset:
            kinds = ", ".join(sorted(rrset["routingPolicy"]))
            raise ApplicationError(
                f"{record} {type} in {self.zone_label} has a routing policy ({kinds}), not plain rrdatas: a "
                "failover rewrites a plain record set; move weights with traffic_plan_weights, or make it "
                "plain",
                type=ErrorType.UNSUPPORTED_DNS_RECORD,
                non_retryable=True,
            )
        return DnsRecordState(
            record=record, type=type, ttl=rrset.get("ttl"), values=_values(type, rrset.get("rrdatas", []))
        )

    def _apply(self, plan: DnsChangePlan) -> str | None:
        rrset = self._record_set(plan.record, plan.type)
        observed = self._state(plan.record, plan.type, rrset)
        if observed != plan.current:
            raise ConcurrentChange(f"Cloud DNS now serves {observed.describe()}")
        addition = {
            "kind": "dns#resourceRecordSet",
            "name": plan.record,
            "type": plan.type,
            "ttl": plan.desired.ttl or self.config.ttl,
            "rrdatas": list(plan.desired.values),
        }
        return self._change([addition], [rrset] if rrset is not None else [], plan.record)

    def _change(self, additions: list[RecordSet], deletions: list[RecordSet], record: str) -> str:
        """One atomic change, not repeated after a failure that may have run: the activity re-reads."""
        try:
            change = self._request(
                "POST",
                f"{self._zone_path}/changes",
                data={"kind": "dns#change", "additions": additions, "deletions": deletions},
                what=f"change {record}",
                safe_to_repeat=False,
            )
        except _Conflict as conflict:
            raise ConcurrentChange(str(conflict)) from None
        change_id = str(change["id"])
        if activity.in_activity():
            activity.logger.info(
                "Cloud DNS accepted change %s for %s (%s)", change_id, record, change.get("status")
            )
        return change_id

    def _change_status(self, change_id: str) -> tuple[bool, str]:
        change = self._request(
            "GET", f"{self._zone_path}/changes/{change_id}", what=f"status of change {change_id}"
        )
        status = str(change.get("status", "unknown"))
        return status == "done", status

    def _read_weights(self, record: str, type: RecordType, addresses: dict[str, str]) -> TrafficState:
        return _weights_state(record, type, self._record_set(record, type), addresses, self.zone_label)

    def _apply_weights(self, plan: WeightPlan, addresses: dict[str, str]) -> str | None:
        rrset = self._record_set(plan.record, plan.type)
        if _weights_state(plan.record, plan.type, rrset, addresses, self.zone_label) != plan.current:
            raise ConcurrentChange("the record set changed since planning")
        kept = [item for item in _wrr_items(rrset) if _region_of(plan.type, item, addresses) is None]
        items = [
            {"weight": float(share.weight), "rrdatas": list(share.values)} for share in plan.desired.shares
        ]
        addition = {
            "kind": "dns#resourceRecordSet",
            "name": plan.record,
            "type": plan.type,
            "ttl": plan.desired.ttl or self.config.ttl,
            "routingPolicy": {"wrr": {"items": items + kept}},
        }
        return self._change([addition], [rrset] if rrset is not None else [], plan.record)

    def _error(self, error: BaseException, doing: str, *, write: bool) -> ApplicationError | _Conflict:
        where = self.zone_label
        if isinstance(error, google_errors.Conflict | google_errors.PreconditionFailed) or (
            isinstance(error, google_errors.NotFound) and "deletions" in str(error)
        ):
            return _Conflict(_message(error))
        if isinstance(error, google_errors.Unauthorized | auth_errors.GoogleAuthError):
            return ApplicationError(
                f"Google Cloud refused the credentials while {doing} ({where}): {_message(error)}",
                type=ErrorType.CLOUD_CREDENTIALS,
                non_retryable=True,
            )
        if isinstance(error, google_errors.Forbidden) and not _is_throttling(error):
            return ApplicationError(
                f"Google Cloud denied {doing} ({where}): {_message(error)}; grant the role in "
                "infra/gcp/role.yaml",
                type=ErrorType.CLOUD_PERMISSION_DENIED,
                non_retryable=True,
            )
        if isinstance(error, google_errors.NotFound):
            return ApplicationError(
                f"Cloud DNS found nothing while {doing} ({where}): {_message(error)}; check the runbook's "
                "project "
                "and managed_zone",
                type=ErrorType.CLOUD_RESOURCE_NOT_FOUND,
                non_retryable=True,
            )
        if _is_throttling(error) or _may_have_run(error):
            suffix = "; it may or may not have been applied, a retry re-reads first" if write else ""
            return ApplicationError(
                f"Cloud DNS did not complete {doing} ({where}): {_message(error)}{suffix}",
                type=ErrorType.DNS_PROVIDER_UNAVAILABLE,
            )
        return ApplicationError(
            f"Cloud DNS refused {doing} ({where}): {_message(error)}",
            type=ErrorType.DNS_UPDATE_FAILED,
            non_retryable=True,
        )


class _Conflict(ApplicationError):
    """Cloud DNS refused a change because the zone no longer holds what the change deletes (or adds)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, type=ErrorType.PLAN_STALE, non_retryable=True)


def _is_throttling(error: BaseException) -> bool:
    if isinstance(error, google_errors.TooManyRequests):
        return True
    if isinstance(error, google_errors.Forbidden):
        return any(e.get("reason") in _RATE_LIMIT_REASONS for e in error.errors or [] if isinstance(e, dict))
    return False


def _may_have_run(error: BaseException) -> bool:
    return isinstance(error, (google_errors.ServerError, *_CONNECTION_ERRORS))


def _message(error: BaseException) -> str:
    if isinstance(error, google_errors.GoogleAPICallError):
        return f"{error.code} {error.message}"
    return " ".join(str(error).split())


def _values(type: RecordType, rrdatas: list[str]) -> list[str]:
    return sorted(normalise_value(type, value) for value in rrdatas)


def _wrr_items(rrset: RecordSet | None) -> list[dict[str, Any]]:
    if rrset is None:
        return []
    items: list[dict[str, Any]] = rrset.get("routingPolicy", {}).get("wrr", {}).get("items", [])
    return items


def _region_of(type: RecordType, item: dict[str, Any], addresses: dict[str, str]) -> str | None:
    values = _values(type, item.get("rrdatas", []))
    for region, address in sorted(addresses.items()):
        if values == [normalise_value(type, address)]:
            return region
    return None


def _weights_state(
    record: str, type: RecordType, rrset: RecordSet | None, addresses: dict[str, str], zone_label: str
) -> TrafficState:
    if rrset is None:
        return TrafficState(record=record, type=type, ttl=None, shares=[])
    policy = rrset.get("routingPolicy")
    if policy is None:
        return TrafficState(
            record=record,
            type=type,
            ttl=rrset.get("ttl"),
            shares=[],
            plain_values=_values(type, rrset["rrdatas"]),
        )
    if "wrr" not in policy:
        raise ApplicationError(
            f"{record} {type} in {zone_label} has a {', '.join(sorted(policy))} routing policy; traffic "
            "weights "
            "need weighted round robin (wrr)",
            type=ErrorType.UNSUPPORTED_DNS_RECORD,
            non_retryable=True,
        )
    shares: list[TrafficShare] = []
    foreign: list[str] = []
    for item in _wrr_items(rrset):
        region = _region_of(type, item, addresses)
        values = _values(type, item.get("rrdatas", []))
        if region is None:
            foreign.append(f"{', '.join(values)} weight {item.get('weight', 0):g}")
        else:
            shares.append(
                TrafficShare(region=region, values=values, weight=round(float(item.get("weight", 0))))
            )
    return TrafficState(
        record=record,
        type=type,
        ttl=rrset.get("ttl"),
        shares=sorted(shares, key=lambda share: share.region),
        foreign=sorted(foreign),
    )
