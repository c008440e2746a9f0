"""``drflow gateway``: Slack button clicks to the runs' approval Updates (HTTP Request URL or Socket Mode)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from temporalio.runtime import Runtime

from workers.connection import ConnectionSettingsError, TemporalSettings
from workers.gateway import GatewayConfig, GatewayConfigError, serve
from workers.telemetry import TelemetryError, metrics_address, metrics_runtime

F = TypeVar("F", bound=Callable[..., Any])


class GatewayFailure(click.ClickException):
    """One clear line, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"drflow gateway: {self.format_message()}", err=True)


def temporal_options(func: F) -> F:
    """The worker's connection settings: flags, then the TEMPORAL_* variables, as ``drflow worker``."""
    for name, help_text in reversed(
        [
            ("--address", "Temporal frontend host:port [env TEMPORAL_ADDRESS; localhost:7233]"),
            ("--namespace", "Temporal namespace [env TEMPORAL_NAMESPACE; default]"),
            ("--tls-cert", "mTLS client cert [env TEMPORAL_TLS_CERT]"),
            ("--tls-key", "mTLS client key [env TEMPORAL_TLS_KEY]"),
            ("--tls-ca", "server CA bundle [env TEMPORAL_TLS_CA]"),
            ("--api-key", "Temporal Cloud API key; prefer the env TEMPORAL_API_KEY"),
        ]
    ):
        func = click.option(name, help=help_text)(func)
    return func


@click.command()
@click.option(
    "--mode",
    type=click.Choice(["http", "socket"]),
    default="http",
    show_default=True,
    envvar="DRFLOW_GATEWAY_MODE",
    help="http: Slack calls the Request URL (needs SLACK_SIGNING_SECRET); socket: Socket Mode websocket "
    "(needs SLACK_APP_TOKEN) [env DRFLOW_GATEWAY_MODE]",
)
@click.option("--host", default="127.0.0.1", show_default=True, envvar="DRFLOW_GATEWAY_HOST")
@click.option("--port", default=3000, show_default=True, type=int, envvar="DRFLOW_GATEWAY_PORT")
@click.option(
    "--idle-without-slack",
    is_flag=True,
    envvar="DRFLOW_GATEWAY_IDLE_WITHOUT_SLACK",
    help="without Slack secrets, serve /healthz and wait instead of failing (Slack optional in a stack)",
)
@click.option(
    "--metrics",
    metavar="HOST:PORT",
    help="serve Prometheus metrics on http://HOST:PORT/metrics [env DRFLOW_METRICS_ADDRESS; off]",
)
@temporal_options
def gateway(
    mode: str, host: str, port: int, idle_without_slack: bool, metrics: str | None, **options: Any
) -> int:
    """Turn Slack button clicks into approvals: the run's validator decides who may pass its gate.

    Secrets only from the environment or files: SLACK_SIGNING_SECRET (HTTP), SLACK_APP_TOKEN (Socket Mode),
    SLACK_BOT_TOKEN (optional: ephemeral refusals without a response_url), or *_FILE naming a file.
    DRFLOW_GATEWAY_KEY (env:NAME or file:PATH to its ed25519 private key) and DRFLOW_GATEWAY_NAME (its name
    in the people file) make it attest every click, so runbooks with a people file can verify who answered.
    Slack's Request URL is http(s)://<host>:<port>/slack/actions; health: /healthz.
    """
    try:
        settings = TemporalSettings.resolve(
            address=options.get("address"),
            namespace=options.get("namespace"),
            tls_cert=options.get("tls_cert"),
            tls_key=options.get("tls_key"),
            tls_ca=options.get("tls_ca"),
            api_key=options.get("api_key"),
        )
        config = GatewayConfig.from_env(
            "socket" if mode == "socket" else "http", host, port, idle_without_slack=idle_without_slack
        )
        runtime = metrics_runtime(metrics_address(metrics))
    except (ConnectionSettingsError, GatewayConfigError, TelemetryError) as err:
        raise GatewayFailure(str(err)) from err
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        asyncio.run(_run(settings, config, runtime))
    except OSError as err:
        raise GatewayFailure(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
    return 0


async def _run(settings: TemporalSettings, config: GatewayConfig, runtime: Runtime | None = None) -> None:
    try:
        client = await settings.connect(runtime)
    except RuntimeError as err:
        raise GatewayFailure(f"cannot reach Temporal at {settings.describe()}: {err}") from err
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(client, config, stop)
    logging.getLogger("drflow.gateway").info("gateway stopped")
