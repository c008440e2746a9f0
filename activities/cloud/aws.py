"""AWS plumbing shared by the Route53, RDS and Aurora providers: clients, retries, typed errors.

Credentials come from boto3's standard chain (environment, profile, SSO, web identity, container or instance
role); nothing secret enters an activity's input, result or log. Endpoints come from botocore's own
settings (``AWS_ENDPOINT_URL_<SERVICE>`` or the config file), which is also how VPC endpoints are configured.
botocore's own retries are switched off: ``activities.cloud.with_backoff`` retries throttling with jitter and
decides per call whether a failed request may have run (so a write is never blindly repeated).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from temporalio.exceptions import ApplicationError

from activities.cloud.retry import DEFAULT_BACKOFF, Backoff, Verdict, with_backoff
from activities.errors import ErrorType

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_route53 import Route53Client
    from mypy_boto3_sts import STSClient

T = TypeVar("T")

THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        # Route53: another change to the zone is still being processed; nothing of this request ran.
        "PriorRequestNotComplete",
    }
)
_TRANSIENT_CODES = frozenset({"InternalFailure", "InternalError", "ServiceUnavailable", "RequestTimeout"})
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidAccessKeyId",
        "AuthFailure",
        "MissingAuthenticationToken",
    }
)
_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})
_CONNECTION_ERRORS = (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)
_ARN = re.compile(
    r"^arn:(?P<partition>[^:]+):(?P<service>[^:]+):(?P<region>[^:]*):(?P<account>[^:]*):(?P<rest>.+)$"
)


class AwsClientFactory(Protocol):
    """Where providers get their clients; tests hand in clients wired to an emulator or a botocore Stubber."""

    def route53(self) -> Route53Client: ...

    def rds(self, region: str) -> RDSClient: ...

    def cloudwatch(self, region: str) -> CloudWatchClient: ...

    def sts(self) -> STSClient: ...


class AwsClients:
    """boto3 clients from the standard credential chain, one per service and region, created once."""

    def __init__(
        self, session: boto3.session.Session | None = None, endpoints: Mapping[str, str] | None = None
    ) -> None:
        self._session = session or boto3.session.Session()
        self._endpoints = dict(endpoints or {})
        self._clients: dict[tuple[str, str], Any] = {}
        # boto3 sessions are not thread-safe when they create clients; activities run in a thread pool.
        self._lock = threading.Lock()
        self._config = Config(
            retries={"total_max_attempts": 1},
            connect_timeout=5,
            read_timeout=30,
            user_agent_extra="drflow",
        )

    def _client(self, service: str, region: str) -> Any:
        with self._lock:
            key = (service, region)
            if key not in self._clients:
                self._clients[key] = self._session.client(
                    service,  # type: ignore[call-overload]
                    region_name=region,
                    config=self._config,
                    endpoint_url=self._endpoints.get(service),
                )
            return self._clients[key]

    def route53(self) -> Route53Client:
        # Route53 is global; its API lives in us-east-1 (the aws partition).
        client: Route53Client = self._client("route53", "us-east-1")
        return client

    def rds(self, region: str) -> RDSClient:
        client: RDSClient = self._client("rds", region)
        return client

    def cloudwatch(self, region: str) -> CloudWatchClient:
        client: CloudWatchClient = self._client("cloudwatch", region)
        return client

    def sts(self) -> STSClient:
        client: STSClient = self._client("sts", self._session.region_name or "us-east-1")
        return client


def error_code(error: BaseException) -> str | None:
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def error_message(error: BaseException) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Message") or error)
    return " ".join(str(error).split())


def http_status(error: BaseException) -> int | None:
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def is_throttling(error: BaseException) -> bool:
    return error_code(error) in THROTTLING_CODES


def may_have_run(error: BaseException) -> bool:
    """The request may have reached AWS and run: a server error or a connection lost on the way back."""
    if isinstance(error, _CONNECTION_ERRORS):
        return True
    status = http_status(error)
    return error_code(error) in _TRANSIENT_CODES or (status is not None and status >= 500)


def call(
    operation: Callable[..., T],
    what: str,
    *,
    backoff: Backoff = DEFAULT_BACKOFF,
    safe_to_repeat: bool = True,
    **kwargs: Any,
) -> T:
    """One AWS API call; throttling is always retried, other transient failures only if ``safe_to_repeat``."""

    def classify(error: Exception) -> Verdict:
        if is_throttling(error):
            return "retry"
        return "retry" if safe_to_repeat and may_have_run(error) else "raise"

    return with_backoff(
        lambda: operation(**kwargs), classify, backoff, what, provider="aws", throttled=is_throttling
    )


def aws_error(error: BaseException, doing: str, *, resource: str | None = None) -> ApplicationError:
    """An AWS failure as an operator reads it: what drflow was doing, what AWS said, what to fix."""
    code = error_code(error)
    message = error_message(error)
    where = f" ({resource})" if resource else ""
    if isinstance(error, NoCredentialsError | PartialCredentialsError) or code in _CREDENTIAL_CODES:
        return ApplicationError(
            f"AWS refused the credentials while {doing}{where}: {code or type(error).__name__}: {message}. "
            "drflow uses the standard chain (AWS_PROFILE, environment, SSO, instance or task role): check "
            "which identity the worker runs as",
            type=ErrorType.CLOUD_CREDENTIALS,
            non_retryable=True,
        )
    if code in _DENIED_CODES:
        return ApplicationError(
            f"AWS denied {doing}{where}: {message}. Grant the worker the actions in "
            "infra/aws/iam-policy.json",
            type=ErrorType.CLOUD_PERMISSION_DENIED,
            non_retryable=True,
        )
    if code is not None and (
        code.startswith("NoSuch") or code.endswith("NotFound") or code.endswith("NotFoundFault")
    ):
        return ApplicationError(
            f"AWS found nothing while {doing}{where}: {code}: {message}; check the runbook",
            type=ErrorType.CLOUD_RESOURCE_NOT_FOUND,
            non_retryable=True,
        )
    if is_throttling(error):
        return ApplicationError(
            f"AWS kept throttling {doing}{where} ({code}) after every backoff; nothing was changed by the "
            "throttled calls, the activity retries later",
            type=ErrorType.CLOUD_THROTTLED,
        )
    if may_have_run(error) or isinstance(error, BotoCoreError):
        return ApplicationError(
            f"AWS did not answer {doing}{where}: {code or type(error).__name__}: {message}",
            type=ErrorType.CLOUD_UNAVAILABLE,
        )
    return ApplicationError(
        f"AWS refused {doing}{where}: {code}: {message}",
        type=ErrorType.CLOUD_UNAVAILABLE,
        non_retryable=True,
    )


def arn_region(arn: str) -> str | None:
    match = _ARN.match(arn)
    return match.group("region") or None if match else None


def arn_resource(arn: str) -> str:
    """``arn:aws:rds:us-west-2:123:cluster:name`` -> ``name``; anything else is returned as it is."""
    match = _ARN.match(arn)
    return match.group("rest").split(":")[-1].split("/")[-1] if match else arn


def latest_metric(
    clients: AwsClientFactory,
    region: str,
    *,
    namespace: str,
    metric: str,
    dimension: tuple[str, str],
    backoff: Backoff = DEFAULT_BACKOFF,
    window_minutes: int = 5,
) -> tuple[float | None, str | None]:
    """The most recent one-minute maximum of a metric within the window: (value, None) or (None, why not)."""
    now = datetime.now(UTC)
    try:
        response = call(
            clients.cloudwatch(region).get_metric_statistics,
            f"read {metric}",
            backoff=backoff,
            Namespace=namespace,
            MetricName=metric,
            Dimensions=[{"Name": dimension[0], "Value": dimension[1]}],
            StartTime=now - timedelta(minutes=window_minutes),
            # A minute ahead: a datapoint stamped "now" (or by a clock slightly ahead of ours) is included.
            EndTime=now + timedelta(minutes=1),
            Period=60,
            Statistics=["Maximum"],
        )
    except (ClientError, BotoCoreError) as error:
        return None, aws_error(error, f"reading {metric} for {dimension[1]}").message
    points = sorted(response.get("Datapoints", []), key=lambda point: point["Timestamp"])
    if not points or "Maximum" not in points[-1]:
        return (
            None,
            f"CloudWatch has no {metric} datapoint for {dimension[1]} in the last {window_minutes} minutes",
        )
    return float(points[-1]["Maximum"]), None
