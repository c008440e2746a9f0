"""``drflow check``: run the Readiness workflow for one service or all, print the reports, exit by verdict."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from activities.search_attributes import run_attributes
from runbooks.loader import LoadedRunbook, Problem, load_directory
from workers.cli.common import (
    VERDICT_EXIT,
    Failure,
    connect,
    connection_options,
    services_to_check,
    settings_from,
    workflow_link,
)
from workers.connection import TemporalSettings
from workflows.common import TASK_QUEUE
from workflows.readiness_report import ReadinessReport, ReadinessRequest, render_markdown


@click.command()
@click.argument("service", required=False)
@click.option("--all", "all_services", is_flag=True, help="check every runbook in the runbooks directory")
@click.option("--json", "as_json", is_flag=True, help="print the report(s) as JSON")
@click.option("--timeout", default=120.0, show_default=True, help="seconds to wait for the report")
@click.option("--archive", is_flag=True, help="keep the check's evidence in the audit archive")
@connection_options
@click.pass_obj
def check(
    directory: Path,
    /,
    service: str | None,
    all_services: bool,
    as_json: bool,
    timeout: float,
    archive: bool,
    **options: Any,
) -> int:
    """Run the Readiness workflow for SERVICE (or --all) and print its report.

    With --all, a runbook file that does not load is reported as not served (the worker skips it too) and
    the others are still checked. Exit status: 0 ready, 3 degraded, 4 not ready (a broken runbook file
    counts: its service cannot be failed over), 1 error.
    """
    if bool(service) == all_services:
        raise click.UsageError("name one SERVICE or pass --all")
    loaded, problems = load_directory(directory)
    if all_services:
        if not loaded:
            services_to_check(directory, None, people=False)  # raises the Failure naming what is wrong
        targets = loaded
    else:
        targets = services_to_check(directory, service, people=False)
    broken = _broken_files(problems)
    settings = settings_from(options)
    reports = asyncio.run(_run_checks(settings, targets, timeout, archive))
    if as_json:
        payload = [r.model_dump(mode="json") for r in reports]
        click.echo(json.dumps(payload if all_services else payload[0], indent=2))
    else:
        for report in reports:
            click.echo(render_markdown(report))
            click.echo()
        if all_services:
            for file, found in broken.items():
                click.echo(render_broken(file, found))
                click.echo()
    if broken:  # on stderr too: with --json, or when checking one service, stdout stays the report
        other = "" if all_services else "other "
        click.echo(
            f"drflow: {len(broken)} {other}runbook file(s) in {directory} do not load and are not served "
            f"by the worker: {', '.join(broken)} (drflow runbook validate FILE says why)",
            err=True,
        )
    verdicts = [VERDICT_EXIT[r.verdict] for r in reports]
    if all_services and broken:
        verdicts.append(VERDICT_EXIT["not-ready"])
    return max(verdicts)


def _broken_files(problems: list[Problem]) -> dict[str, list[Problem]]:
    """The files that do not load, each with its problems, in directory order."""
    files: dict[str, list[Problem]] = {}
    for problem in problems:
        files.setdefault(problem.file, []).append(problem)
    return files


def render_broken(file: str, problems: list[Problem]) -> str:
    """A broken file in ``check --all``'s Markdown, where a service's report would be."""
    lines = [
        f"## Runbook {Path(file).name}: NOT SERVED",
        "",
        "This file does not load, so the worker skips it: no failover, failback, drill or check of the "
        "service it describes can start until it is fixed.",
        "",
    ]
    lines += [f"- {p}" for p in problems]
    return "\n".join(lines)


async def _run_checks(
    settings: TemporalSettings, targets: list[LoadedRunbook], timeout: float, archive: bool = False
) -> list[ReadinessReport]:
    client = await connect(settings)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    handles = []
    for item in targets:
        service = item.runbook.service
        handle = await client.start_workflow(
            "Readiness",
            ReadinessRequest(service=service, archive=archive),
            id=f"readiness-{service}-{stamp}",
            task_queue=TASK_QUEUE,
            result_type=ReadinessReport,
            static_summary=f"Readiness check of {service}",
            search_attributes=run_attributes(service, "readiness", "checking"),
        )
        click.echo(f"started {handle.id}  {workflow_link(settings, handle.id)}", err=True)
        handles.append(handle)
    try:
        return list(await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), timeout))
    except TimeoutError as err:
        raise Failure(
            f"no report within {timeout:g}s: is a drflow worker polling task queue {TASK_QUEUE!r}? "
            "The workflows keep waiting for one."
        ) from err
    except WorkflowFailureError as err:
        cause = err.cause
        while cause.__cause__ is not None and not isinstance(cause, ApplicationError):
            cause = cause.__cause__
        raise Failure(
            f"readiness check failed: {cause.message if hasattr(cause, 'message') else cause}"
        ) from err
