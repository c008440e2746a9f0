"""HTTP health checks, run concurrently, each bounded by its own timeout.

A failing check is a result, not an error: the activity returns what it saw (status, latency, why it failed)
and the workflow decides what it means. Only a broken worker (or a header secret it cannot read) makes this
activity fail.

Header values are secret references (``env:``/``file:``), resolved here at the moment of each request: the
value is handed to httpx and nowhere else, and any error text that could carry it back (an echoed body, a
protocol error quoting the header) is scrubbed before it becomes part of a result.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine, Iterable
from datetime import timedelta
from typing import Any, TypeVar

import httpx
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import ErrorType
from activities.heartbeat import beating_async
from activities.secrets import resolve_secret
from runbooks.durations import Duration
from runbooks.model import HttpCheck, StrictModel, drop_unset

BODY_EXCERPT = 200
VERSION_LENGTH = 100
HEARTBEAT_EVERY = 2.0
"""Seconds between heartbeats while validation waits, for an answer or for the next probe: far inside the
workflow's 10 s heartbeat timeout, whatever intervals and timeouts the runbook gives its checks."""
VALIDATION_FLOOR = timedelta(seconds=30)
VALIDATION_SLACK = timedelta(seconds=30)
SCRUBBED = "[secret header value]"
T = TypeVar("T")


class HealthProbe(StrictModel):
    region: str
    check: str
    url: str
    http: HttpCheck
    timeout: Duration


class HealthProbeRequest(StrictModel):
    probes: list[HealthProbe]


class HealthProbeResult(StrictModel):
    region: str
    check: str
    url: str
    ok: bool
    status: int | None
    latency_ms: float
    error: str | None = None
    version: str | None = Field(
        default=None, description="what the body holds at the check's version_path, when it has one"
    )

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        """No version, no field: workers of the previous release still decode the result."""
        return drop_unset(handler(self), "version")


class HealthProbeResults(StrictModel):
    results: list[HealthProbeResult]


@activity.defn(name="probe_health")
async def probe_health(request: HealthProbeRequest) -> HealthProbeResults:
    async with beating_async():
        # Health checks go straight to the service: a proxy from the worker's environment is not the path
        # users take, and would make the result depend on where the worker runs.
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as client:
            results = await _all(_probe(client, probe) for probe in request.probes)
        return HealthProbeResults(results=results)


async def _all(coroutines: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Like ``gather``, but when one fails (a header secret the worker cannot read) the others are cancelled
    and awaited, so no probe runs on after the activity failed and closed its HTTP client."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _probe(client: httpx.AsyncClient, probe: HealthProbe) -> HealthProbeResult:
    timeout = probe.timeout.total_seconds()
    headers = resolve_headers(probe.http)
    started = time.monotonic()

    def result(
        ok: bool, status: int | None, error: str | None, version: str | None = None
    ) -> HealthProbeResult:
        latency = round((time.monotonic() - started) * 1000, 1)
        return HealthProbeResult(
            region=probe.region,
            check=probe.check,
            url=probe.url,
            ok=ok,
            status=status,
            latency_ms=latency,
            error=None if error is None else scrub(error, headers.values()),
            version=version,
        )

    try:
        async with asyncio.timeout(timeout):
            response = await client.request(probe.http.method, probe.url, headers=headers, timeout=timeout)
    except (TimeoutError, httpx.TimeoutException):
        return result(False, None, f"no answer within {timeout:g}s")
    except httpx.HTTPError as err:
        return result(False, None, f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)
    problem = _expectation_problem(probe.http, response, headers.values())
    version = None
    if probe.http.version_path is not None:
        version = reported_version(response.text, probe.http.version_path, headers.values())
    return result(problem is None, response.status_code, problem, version)


def reported_version(body: str, path: str, secrets: Iterable[str]) -> str | None:
    """The value at ``path`` (dotted keys, a number indexes a list) in a JSON body, as short text; None
    when the body is not JSON or has nothing there. Scrubbed: a body may echo a header back."""
    try:
        node: Any = json.loads(body)
    except ValueError:
        return None
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    if node is None or isinstance(node, dict | list):
        return None
    text = scrub(str(node), secrets)
    return text[:VERSION_LENGTH]


def resolve_headers(check: HttpCheck) -> dict[str, str]:
    """The check's headers with their secret references resolved: for the request only, never returned."""
    headers: dict[str, str] = {}
    for name, reference in check.headers.items():
        value = resolve_secret(reference).strip()
        if not value or any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
            raise ApplicationError(
                f"header {name} from {reference} is empty or holds a line break or control character, "
                "which an HTTP header cannot carry",
                type=ErrorType.SECRET_UNAVAILABLE,
            )
        headers[name] = value
    return headers


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` without any of the secret values (a body or an httpx error may quote a header back)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, SCRUBBED)
    return text


def _expectation_problem(check: HttpCheck, response: httpx.Response, secrets: Iterable[str]) -> str | None:
    # scrubbed before the excerpt is cut: a truncated secret would no longer match, and leak in part
    shown = scrub(response.text, secrets)
    if response.status_code not in check.expect_status:
        expected = " or ".join(str(s) for s in check.expect_status)
        return f"status {response.status_code}, expected {expected}{_excerpt(shown)}"
    if check.expect_body_contains is not None and check.expect_body_contains not in response.text:
        return f"body does not contain {check.expect_body_contains!r}{_excerpt(shown)}"
    if check.expect_json is not None:
        try:
            body: Any = json.loads(response.text)
        except ValueError:
            return f"body is not JSON{_excerpt(shown)}"
        if not isinstance(body, dict):
            return "JSON body is not an object"
        for key, expected in check.expect_json.items():
            if body.get(key) != expected:
                return f"JSON {key!r} is {body.get(key)!r}, expected {expected!r}"
    return None


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        return ""
    return f": {text[:BODY_EXCERPT]}{'...' if len(text) > BODY_EXCERPT else ''}"


def probe_budget(probes: list[HealthProbe]) -> timedelta:
    """How long the activity may take: the slowest probe plus connection set-up slack."""
    longest = max((p.timeout for p in probes), default=timedelta(seconds=5))
    return longest + timedelta(seconds=5)


class ValidatedProbe(StrictModel):
    probe: HealthProbe
    consecutive_successes: int
    interval: Duration

    @property
    def clean_streak(self) -> timedelta:
        """The longest N consecutive successes can take: N probes, each up to its timeout, with the
        intervals between them (and one to spare): ``consecutive_successes * (interval + timeout)``."""
        return self.consecutive_successes * (self.interval + self.probe.timeout)


def validation_budget(probes: list[ValidatedProbe], minimum: timedelta) -> tuple[timedelta, timedelta]:
    """The validation window and the activity's start-to-close timeout, for any intervals and timeouts.

    The window (how long validation keeps probing) is three times the runbook's health minimum, room for a
    target that warms up slowly; at least 30 s; and at least the clean streak of every check, so a check
    whose probes each take their whole timeout can still pass. The activity may take the window, plus the
    longest probe timeout (the last probe may start just as the window closes), plus 30 s of slack.
    """
    streak = max((p.clean_streak for p in probes), default=timedelta(0))
    window = max(minimum * 3, VALIDATION_FLOOR, streak)
    longest = max((p.probe.timeout for p in probes), default=timedelta(0))
    return window, window + longest + VALIDATION_SLACK


class HealthValidationRequest(StrictModel):
    probes: list[ValidatedProbe]
    timeout: Duration


class CheckValidation(StrictModel):
    region: str
    check: str
    url: str
    required: int
    passed: bool
    attempts: int
    passed_after_ms: float | None
    last: HealthProbeResult | None


class HealthValidationResult(StrictModel):
    passed: bool
    elapsed_ms: float
    checks: list[CheckValidation]


@activity.defn(name="validate_health")
async def validate_health(request: HealthValidationRequest) -> HealthValidationResult:
    """Each check must pass N consecutive times, probed at its interval, within the timeout.

    A pure read, so a retry after a worker crash simply starts counting again. Heartbeats carry the progress:
    one after every probe, and one every ``HEARTBEAT_EVERY`` seconds while the checks wait (for an answer
    or for their next probe), so an interval or a timeout longer than the heartbeat timeout is no silence.
    """
    started = time.monotonic()
    deadline = started + request.timeout.total_seconds()
    progress: dict[str, str] = {}
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as client:
        beating = asyncio.create_task(_heartbeat_while_waiting(progress))
        try:
            checks = await _all(
                _validate(client, item, started, deadline, progress) for item in request.probes
            )
        finally:
            beating.cancel()
    result = HealthValidationResult(
        passed=all(c.passed for c in checks), elapsed_ms=_ms_since(started), checks=list(checks)
    )
    if not result.passed:
        failing = "; ".join(
            f"{c.check} on {c.region}: {c.last.error if c.last and c.last.error else 'not enough successes'}"
            for c in checks
            if not c.passed
        )
        raise ApplicationError(
            f"health validation failed after {request.timeout.total_seconds():g}s: {failing}",
            result,
            type=ErrorType.HEALTH_VALIDATION_FAILED,
            non_retryable=True,
        )
    return result


async def _validate(
    client: httpx.AsyncClient, item: ValidatedProbe, started: float, deadline: float, progress: dict[str, str]
) -> CheckValidation:
    streak = attempts = 0
    last: HealthProbeResult | None = None
    key = f"{item.probe.region}/{item.probe.check}"
    while True:
        attempts += 1
        last = await _probe(client, item.probe)
        streak = streak + 1 if last.ok else 0
        progress[key] = f"{streak}/{item.consecutive_successes}"
        activity.heartbeat(dict(progress))
        if streak >= item.consecutive_successes:
            return _validation(item, True, attempts, _ms_since(started), last)
        if time.monotonic() + item.interval.total_seconds() > deadline:
            return _validation(item, False, attempts, None, last)
        await asyncio.sleep(item.interval.total_seconds())


async def _heartbeat_while_waiting(progress: dict[str, str]) -> None:
    """Sleep in slices of ``HEARTBEAT_EVERY`` seconds, heartbeat the progress after each; until cancelled."""
    while True:
        await asyncio.sleep(HEARTBEAT_EVERY)
        activity.heartbeat(dict(progress))


def _validation(
    item: ValidatedProbe, passed: bool, attempts: int, after: float | None, last: HealthProbeResult | None
) -> CheckValidation:
    return CheckValidation(
        region=item.probe.region,
        check=item.probe.check,
        url=item.probe.url,
        required=item.consecutive_successes,
        passed=passed,
        attempts=attempts,
        passed_after_ms=after,
        last=last,
    )


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
