"""HAProxy in the sandbox: weights move through its runtime API, and the canary measures the split it really got."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.errors import ErrorType
from activities.traffic.activities import (
    ReadWeightsRequest,
    SetWeightsRequest,
    SetWeightsResult,
    read_weights,
    set_weights,
)
from activities.traffic.analysis import CanaryRequest, CanaryResult, analyse, expected_share
from activities.traffic.haproxy import HaproxyRuntime
from activities.traffic.provider import TrafficWeightsState
from runbooks.model import CanaryAnalysis, HaproxyTraffic
from tests.support.sandbox import sandbox_world
from workers.sandbox.processes import stop_process

A, B = "region-a", "region-b"
ANALYSIS = CanaryAnalysis(
    path="/",
    requests=100,
    duration=timedelta(seconds=1),
    max_error_rate=0.01,
    # Generous: the suite's 2 shared cores stall now and then, and the latency is not what this measures.
    max_p95_latency=timedelta(seconds=3),
    split_tolerance=0.1,
)


async def read(traffic: HaproxyTraffic) -> TrafficWeightsState:
    state: TrafficWeightsState = await ActivityEnvironment().run(
        read_weights, ReadWeightsRequest(traffic=traffic)
    )
    return state


async def set_to(traffic: HaproxyTraffic, weights: dict[str, int]) -> SetWeightsResult:
    result: SetWeightsResult = await ActivityEnvironment().run(
        set_weights, SetWeightsRequest(traffic=traffic, weights=weights)
    )
    return result


async def canary(traffic: HaproxyTraffic, weights: dict[str, int]) -> CanaryResult:
    request = CanaryRequest(
        url=traffic.frontend_url, analysis=ANALYSIS, expected_share=expected_share(weights)
    )
    result: CanaryResult = await ActivityEnvironment().run(analyse, request)
    return result


async def test_weights_move_through_the_runtime_api_and_the_canary_measures_the_split() -> None:
    with sandbox_world() as world:
        traffic = world.runbook.traffic
        assert isinstance(traffic, HaproxyTraffic)
        sandbox = world.sandbox
        assert traffic.runtime_api == f"unix:{sandbox.haproxy_dir / 'admin.sock'}"
        assert traffic.frontend_url == f"http://127.0.0.1:{sandbox.ports.haproxy}"
        component = sandbox.status().component("haproxy")
        assert (component.state, component.kind, component.address) == (
            "running",
            "haproxy",
            f"127.0.0.1:{sandbox.ports.haproxy}",
        )
        assert component.detail == "weights region-a 100, region-b 0"

        # The runbook's primary serves everything at first; its database answers as the primary.
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            answers = [await client.get(traffic.frontend_url + "/") for _ in range(5)]
        assert {(r.status_code, r.json()["region"], r.json()["database"]) for r in answers} == {
            (200, A, "primary")
        }
        assert await read(traffic) == TrafficWeightsState(
            weights={A: 100, B: 0}, raw={A: "100 (initial 100)", B: "0 (initial 0)"}
        )

        # 50/50, verified by reading back, and measured through the frontend (region-b answers as a standby).
        moved = await set_to(traffic, {A: 50, B: 50})
        assert moved.applied
        assert (moved.before.weights, moved.after.weights) == ({A: 100, B: 0}, {A: 50, B: 50})
        assert moved.after.raw == {A: "50 (initial 100)", B: "50 (initial 0)"}
        measured = await canary(traffic, {A: 50, B: 50})
        assert measured.passed, measured.reasons
        assert (measured.requests, measured.errors, measured.reasons) == (100, 0, [])
        assert abs(measured.split[A] - 0.5) <= 0.1 and abs(measured.split[B] - 0.5) <= 0.1
        assert measured.p95_ms is not None
        assert measured.duration_ms >= 900

        # Idempotent: already there, nothing written.
        again = await set_to(traffic, {A: 50, B: 50})
        assert (again.applied, again.before, again.after) == (False, moved.after, moved.after)

        # Weights that are not a split of 100 % are refused before anything is written.
        with pytest.raises(ApplicationError) as refused:
            await set_to(traffic, {A: 60, B: 60})
        assert refused.value.type == ErrorType.INVALID_TRAFFIC_WEIGHTS and refused.value.non_retryable
        assert "add up to 120" in refused.value.message
        assert (await read(traffic)).weights == {A: 50, B: 50}

        # region-a's app dies: HAProxy keeps it in the rotation (no health checks), so the canary sees it.
        app_pid = sandbox._app_pid(A)
        assert app_pid is not None
        stop_process(app_pid, 10)
        failing = await canary(traffic, {A: 50, B: 50})
        assert not failing.passed
        assert 0.3 <= failing.error_rate <= 0.7, failing
        assert failing.reasons[0].startswith("error rate "), failing.reasons
        assert "HTTP 503 from region-a (503 Service Unavailable No server is available" in failing.reasons[0]
        assert set(failing.error_kinds) == {"HTTP 503 from region-a"}
        assert failing.split == {B: 1.0}
        assert any(reason.startswith("region-a answered 0.0%") for reason in failing.reasons)

        # down/up keeps the weights (a canary in progress survives a restart) and brings the app back.
        sandbox.down()
        assert sandbox.status().component("haproxy").state == "stopped"
        restarted = sandbox.up()
        assert restarted.component("haproxy").change == "started"
        assert (await read(traffic)).weights == {A: 50, B: 50}
        assert (await canary(traffic, {A: 50, B: 50})).passed
        assert "GET / HTTP/1.1" in (sandbox.haproxy_dir / "haproxy.log").read_text()

        back = await set_to(traffic, {A: 100})
        assert back.applied and back.after.weights == {A: 100, B: 0}


async def test_an_unreachable_runtime_api_is_a_retryable_error() -> None:
    traffic = HaproxyTraffic(
        provider="haproxy",
        runtime_api="unix:/nonexistent/drflow/admin.sock",
        backend="app",
        servers={A: A, B: B},
        frontend_url="http://127.0.0.1:1",
    )
    with pytest.raises(ApplicationError) as unreachable:
        await read(traffic)
    assert unreachable.value.type == ErrorType.TRAFFIC_MANAGER_UNREACHABLE
    assert not unreachable.value.non_retryable
    assert "unix:/nonexistent/drflow/admin.sock" in unreachable.value.message


def test_runtime_api_addresses() -> None:
    assert HaproxyRuntime("tcp:127.0.0.1:9999")._target == ("127.0.0.1", 9999)
    assert HaproxyRuntime("unix:/run/haproxy/admin.sock")._target == "/run/haproxy/admin.sock"
    for wrong in ("/run/haproxy.sock", "tcp:9999", "udp:127.0.0.1:1"):
        with pytest.raises(ValueError):
            HaproxyRuntime(wrong)
