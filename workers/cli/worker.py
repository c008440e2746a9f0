"""``drflow worker``: a drflow worker against any Temporal; the worker code is imported only when it runs."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import click

from workers.cli.common import (
    EXIT_OK,
    configure_logging,
    connect,
    connection_options,
    metrics_option,
    metrics_runtime_from,
    settings_from,
)
from workflows.common import TASK_QUEUE


@click.command()
@connection_options
@click.option("--task-queue", default=TASK_QUEUE, show_default=True)
@metrics_option
@click.pass_obj
def worker(directory: Path, /, task_queue: str, metrics: str | None, **options: Any) -> int:
    """Run a drflow worker against any Temporal (dev server, self-hosted, Temporal Cloud)."""
    from workers.worker import build_worker, check_outputs, check_runbooks, run_until_signalled

    settings = settings_from(options)
    configure_logging(logging.INFO)
    check_runbooks(directory)
    check_outputs()
    runtime = metrics_runtime_from(metrics)

    async def serve() -> None:
        client = await connect(settings, runtime)
        logging.getLogger("drflow.worker").info(
            "worker polling task queue %s on %s, runbooks from %s", task_queue, settings.describe(), directory
        )
        await run_until_signalled(build_worker(client, directory, task_queue=task_queue))
        logging.getLogger("drflow.worker").info("worker stopped")

    asyncio.run(serve())
    return EXIT_OK
