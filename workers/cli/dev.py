"""``drflow dev``: the embedded stack; ``workers.dev`` and the sandbox behind it load only when it runs."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import click

from workers.cli.common import EXIT_OK, Failure, configure_logging, metrics_option


@click.command()
@click.option("--port", default=7233, show_default=True, help="Temporal gRPC port")
@click.option("--ui-port", default=8233, show_default=True, help="Temporal Web UI port")
@click.option("--state-dir", default=".drflow", show_default=True, type=click.Path(file_okay=False))
@click.option("--sandbox", is_flag=True, help="also run the local two-region sandbox (runbooks/sandbox.yaml)")
@click.option(
    "--no-worker", "no_worker", is_flag=True,
    help="no in-process worker: run `drflow worker` yourself (and kill it to rehearse a worker crash)",
)  # fmt: skip
@metrics_option
@click.pass_obj
def dev(
    directory: Path, /, port: int, ui_port: int, state_dir: str, sandbox: bool, no_worker: bool,
    metrics: str | None,
) -> int:  # fmt: skip
    """Run the embedded stack: Temporal dev server (SQLite under --state-dir), Web UI, a drflow worker.

    With --no-worker the worker is yours to start and stop, so a crash can be rehearsed: the run waits,
    then resumes where it was on the next worker.
    """
    from workers.dev import DevConfig, DevStackError, describe, run_dev
    from workers.telemetry import TelemetryError, metrics_address

    configure_logging(logging.WARNING)
    try:
        address = metrics_address(metrics) if not no_worker else None
    except TelemetryError as err:
        raise Failure(str(err)) from None
    config = DevConfig(
        state_dir=Path(state_dir), port=port, ui_port=ui_port, runbooks_dir=directory, sandbox=sandbox,
        worker=not no_worker, metrics=address,
    )  # fmt: skip
    if sandbox and Path(state_dir) != Path(".drflow"):
        raise Failure(
            "--sandbox keeps its servers in .drflow/sandbox, where runbooks/sandbox.yaml points: "
            "leave --state-dir at its default"
        )

    def announce(cfg: DevConfig, server: Any) -> None:
        for line in describe(cfg, server):
            click.echo(line)

    try:
        asyncio.run(run_dev(config, announce))
    except DevStackError as err:
        raise Failure(str(err)) from err
    click.echo("drflow dev: stopped")
    return EXIT_OK
