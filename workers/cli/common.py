"""What every ``drflow`` command module shares: exit codes, errors, connection options, runbook lookup.

The leaf of the CLI package: it imports no other ``workers.cli`` module, so each command module can import
it without a cycle.

Exit status: 0 success (or ``ready``), 1 bad input or an error that changed nothing, 2 usage error,
3 ``degraded``, 4 ``not ready``.
"""

from __future__ import annotations

import getpass
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from temporalio.client import Client
from temporalio.runtime import Runtime

from activities.temporal_ui import workflow_url
from runbooks.loader import LoadedRunbook, load_directory
from workers.connection import ConnectionSettingsError, TemporalSettings

EXIT_OK, EXIT_ERROR, EXIT_DEGRADED, EXIT_NOT_READY = 0, 1, 3, 4
VERDICT_EXIT = {"ready": EXIT_OK, "degraded": EXIT_DEGRADED, "not-ready": EXIT_NOT_READY}
F = TypeVar("F", bound=Callable[..., Any])


class Failure(click.ClickException):
    """An operator-facing error: one clear message, exit status 1, nothing changed."""

    exit_code = EXIT_ERROR

    def show(self, file: Any = None) -> None:
        click.echo(f"drflow: {self.format_message()}", err=True)


def connection_options(func: F) -> F:
    options = [
        click.option("--address", help="Temporal frontend host:port [env TEMPORAL_ADDRESS; localhost:7233]"),
        click.option("--namespace", help="Temporal namespace [env TEMPORAL_NAMESPACE; default]"),
        click.option(
            "--tls-cert", type=click.Path(dir_okay=False), help="mTLS client cert [env TEMPORAL_TLS_CERT]"
        ),
        click.option(
            "--tls-key", type=click.Path(dir_okay=False), help="mTLS client key [env TEMPORAL_TLS_KEY]"
        ),
        click.option(
            "--tls-ca", type=click.Path(dir_okay=False), help="server CA bundle [env TEMPORAL_TLS_CA]"
        ),
        click.option("--api-key", help="Temporal Cloud API key; prefer the env TEMPORAL_API_KEY"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def settings_from(options: dict[str, Any]) -> TemporalSettings:
    try:
        return TemporalSettings.resolve(
            address=options.get("address"),
            namespace=options.get("namespace"),
            tls_cert=options.get("tls_cert"),
            tls_key=options.get("tls_key"),
            tls_ca=options.get("tls_ca"),
            api_key=options.get("api_key"),
        )
    except ConnectionSettingsError as err:
        raise Failure(str(err)) from err


def metrics_option(func: F) -> F:
    """``--metrics HOST:PORT``: serve Prometheus metrics there (docs/observability.md); off by default."""
    return click.option(
        "--metrics",
        "metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics [env DRFLOW_METRICS_ADDRESS; off]",
    )(func)


def metrics_runtime_from(flag: str | None) -> Runtime | None:
    """The runtime serving metrics where ``--metrics``/the env says, or None; a taken port is a Failure."""
    from workers.telemetry import TelemetryError, metrics_address, metrics_runtime

    try:
        address = metrics_address(flag)
        runtime = metrics_runtime(address)
    except TelemetryError as err:
        raise Failure(str(err)) from None
    if address is not None:
        logging.getLogger("drflow").info("metrics on http://%s/metrics", address)
    return runtime


async def connect(settings: TemporalSettings, runtime: Runtime | None = None) -> Client:
    try:
        return await settings.connect(runtime)
    except RuntimeError as err:
        raise Failure(
            f"cannot reach Temporal at {settings.describe()}: {err}\n"
            "  Is it running? Locally: `make dev` (or `drflow dev`)."
        ) from err


def workflow_link(settings: TemporalSettings, workflow_id: str) -> str:
    """The workflow's page in the Web UI (``DRFLOW_UI_URL``, see ``activities.temporal_ui``)."""
    return workflow_url(settings.namespace, workflow_id)


def default_user() -> str:
    return os.environ.get("DRFLOW_USER") or getpass.getuser()


def services_to_check(directory: Path, service: str | None, *, people: bool = True) -> list[LoadedRunbook]:
    """The runbook of SERVICE, or every runbook (None); a Failure naming what is wrong otherwise.

    ``people=False`` (``drflow check``): the people file is not looked at here; like a secret that does not
    resolve yet, it is the run's to report. A command that starts a run refuses approvals the people file
    cannot back, as the run would.
    """
    loaded, problems = load_directory(directory)
    if service is None:
        if problems:
            raise Failure("fix these runbooks first:\n" + "\n".join(f"  {p}" for p in problems))
        if not loaded:
            raise Failure(f"no runbooks in {directory}")
        for item in loaded:
            if people:
                _check_people(item, directory)
        return loaded
    for item in loaded:
        if item.runbook.service == service:
            if people:
                _check_people(item, directory)
            return [item]
    broken = [p for p in problems if Path(p.file).stem == service]
    if broken:
        raise Failure(f"the runbook of {service} is invalid:\n" + "\n".join(f"  {p}" for p in broken))
    known = ", ".join(sorted(i.runbook.service for i in loaded)) or "none"
    raise Failure(f"unknown service {service!r}: no runbook in {directory} describes it (known: {known})")


def _check_people(item: LoadedRunbook, directory: Path) -> None:
    """A runbook whose approvers the people file does not know is as broken as an invalid runbook."""
    from runbooks.people import PeopleFileError, people_for

    try:
        people_for(item.runbook.service, item.runbook.approvals, directory)
    except PeopleFileError as err:
        service = item.runbook.service
        raise Failure(f"the approvals of {service} do not match the people file:\n{err}") from err


def configure_logging(level: int) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


DRY_RUN_EXIT = {"dry-run": EXIT_OK, "no-op": EXIT_OK, "not-ready": EXIT_NOT_READY}


async def run_plan(
    settings: TemporalSettings,
    workflow_type: str,
    request: Any,
    report_type: type[Any],
    render: Callable[[Any], str],
    as_json: bool,
) -> int:
    """Plan mode: run WORKFLOW_TYPE with ``dry_run`` to its end and print its plan; no provider is changed.

    The run has its own id (``plan-<kind>-<service>-<random>``), so it never collides with, nor blocks, a
    real run of the service. Exit 0 when the plan was made (or there is nothing to do), 4 when preflight
    found a blocker (the reason on stderr), 1 when the run itself failed.
    """
    import uuid

    from temporalio.client import WorkflowFailureError
    from temporalio.exceptions import ApplicationError

    from activities.search_attributes import run_attributes
    from workflows.common import TASK_QUEUE

    client = await connect(settings)
    kind = workflow_type.lower()
    workflow_id = f"plan-{kind}-{request.service}-{uuid.uuid4().hex[:8]}"
    click.echo(f"dry run {workflow_id}  {workflow_link(settings, workflow_id)}", err=True)
    try:
        report = await client.execute_workflow(
            workflow_type,
            request,
            id=workflow_id,
            task_queue=TASK_QUEUE,
            result_type=report_type,
            static_summary=f"Dry run: plan a {kind} of {request.service}",
            static_details=f"Requested by {request.requested_by}: {request.reason}",
            search_attributes=run_attributes(request.service, kind, "preflight"),
        )
    except WorkflowFailureError as err:
        cause = err.cause
        message = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
        raise Failure(f"the dry run failed: {message}") from err
    click.echo(report.model_dump_json(indent=2) if as_json else render(report))
    code = DRY_RUN_EXIT.get(report.outcome, EXIT_ERROR)
    if code != EXIT_OK:
        click.echo(
            f"drflow: {report.outcome}: {'; '.join(report.messages) or 'no plan could be made'}", err=True
        )
    return code
