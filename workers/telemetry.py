"""Metrics and traces of drflow's processes (docs/observability.md); both off unless asked for.

Metrics: ``--metrics HOST:PORT`` (or ``DRFLOW_METRICS_ADDRESS``) gives the process a Temporal ``Runtime``
whose Prometheus exporter serves ``/metrics`` there. The SDK's own metrics and drflow's (recorded through
the SDK's meter: ``workflows.metrics``, ``activities.metrics``) come out of that one endpoint, so a Client
that is to report them must be connected with the runtime.

Traces: on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set; the
standard OpenTelemetry variables configure the exporter. The SDK's ``TracingInterceptor`` goes on the Client,
and a worker built from that Client uses it too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from temporalio.client import Interceptor as ClientInterceptor
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

METRICS_ENV = "DRFLOW_METRICS_ADDRESS"
OTLP_ENVS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

# Seconds. Approvals wait for people (seconds to hours); steps run from milliseconds to many minutes.
APPROVAL_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)
STEP_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
BUCKETS: Mapping[str, Sequence[float]] = {
    "drflow_approval_wait_seconds": APPROVAL_BUCKETS,
    "drflow_step_duration_seconds": STEP_BUCKETS,
}


class TelemetryError(RuntimeError):
    """Metrics or traces were asked for and cannot be served: one line for the operator."""


def metrics_address(flag: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The address to serve metrics on: the flag, else ``DRFLOW_METRICS_ADDRESS``, else None (off)."""
    value = flag or (os.environ if env is None else env).get(METRICS_ENV) or None
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TelemetryError(f"metrics address {value!r} is not HOST:PORT (for example 0.0.0.0:9464)")
    return value


def metrics_runtime(address: str | None) -> Runtime | None:
    """A Runtime serving Prometheus metrics on ``address``; None (the SDK's default runtime) when off."""
    if address is None:
        return None
    config = PrometheusConfig(
        bind_address=address, durations_as_seconds=True, histogram_bucket_overrides=dict(BUCKETS)
    )
    try:
        return Runtime(telemetry=TelemetryConfig(metrics=config))
    except (ValueError, RuntimeError) as err:
        reason = str(err).removeprefix("Failed starting Prometheus exporter: ")
        raise TelemetryError(f"cannot serve metrics on {address}: {reason}") from None


def tracing_enabled(env: Mapping[str, str] | None = None) -> bool:
    values = os.environ if env is None else env
    return any(values.get(name) for name in OTLP_ENVS)


_provider_set = False


def tracing_interceptors(env: Mapping[str, str] | None = None) -> list[ClientInterceptor]:
    """``[TracingInterceptor()]`` when an OTLP endpoint is configured, else ``[]``.

    The first call installs a global tracer provider exporting over OTLP/HTTP in batches; a provider someone
    installed before (a test's in-memory exporter) is left alone.
    """
    if not tracing_enabled(env):
        return []
    try:
        from opentelemetry import trace
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError as err:
        raise TelemetryError(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed ({err.name}): "
            "pip install 'drflow[tracing]'"
        ) from None
    _install_provider(trace)
    return [TracingInterceptor()]


def _install_provider(trace: Any) -> None:
    global _provider_set
    if _provider_set:
        return
    _provider_set = True
    from opentelemetry.sdk.trace import TracerProvider

    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "drflow")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
