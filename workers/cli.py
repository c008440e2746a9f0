"""The ``drflow`` command line.

Exit status: 0 success (or ``ready``), 1 bad input or an error that changed nothing, 2 usage error,
3 ``degraded``, 4 ``not ready``. Every process that talked to Temporal leaves through ``os._exit`` after
flushing, because the SDK's runtime can abort a short-lived process at interpreter exit.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from activities.search_attributes import run_attributes
from runbooks.durations import format_duration
from runbooks.loader import (
    LoadedRunbook,
    Problem,
    RunbookError,
    load_directory,
    load_runbook_file,
    runbooks_dir,
)
from runbooks.model import Runbook
from workers.connection import ConnectionSettingsError, TemporalSettings
from workflows.common import TASK_QUEUE
from workflows.readiness_report import ReadinessReport, ReadinessRequest, render_markdown

EXIT_OK, EXIT_ERROR, EXIT_DEGRADED, EXIT_NOT_READY = 0, 1, 3, 4
VERDICT_EXIT = {"ready": EXIT_OK, "degraded": EXIT_DEGRADED, "not-ready": EXIT_NOT_READY}
UI_URL_ENV = "DRFLOW_UI_URL"
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


async def connect(settings: TemporalSettings) -> Client:
    try:
        return await settings.connect()
    except RuntimeError as err:
        raise Failure(
            f"cannot reach Temporal at {settings.describe()}: {err}\n"
            "  Is it running? Locally: `make dev` (or `drflow dev`)."
        ) from err


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--runbooks",
    "runbooks_option",
    type=click.Path(file_okay=False),
    help="runbooks directory [env DRFLOW_RUNBOOKS; ./runbooks]",
)
@click.pass_context
def cli(ctx: click.Context, runbooks_option: str | None) -> None:
    """drflow: durable failover and disaster-recovery orchestration on Temporal."""
    ctx.obj = runbooks_dir(runbooks_option)


# --------------------------------------------------------------------------------------------- runbooks
@cli.group()
def runbook() -> None:
    """Validate runbooks and print their JSON Schema."""


@runbook.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def runbook_validate(paths: tuple[str, ...]) -> int:
    """Check runbook files: one line per problem (file:line: field: message), or a summary per service."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for path in paths:
        try:
            loaded = load_runbook_file(path)
        except RunbookError as err:
            problems.extend(err.problems)
            continue
        service = loaded.runbook.service
        if service in seen:
            problems.append(
                Problem(path, None, "service", f"{service!r} is also described by {seen[service]}")
            )
            continue
        seen[service] = path
        click.echo(f"{path}: {summarize(loaded.runbook)}")
    for problem in problems:
        click.echo(str(problem), err=True)
    return EXIT_ERROR if problems else EXIT_OK


def summarize(rb: Runbook) -> str:
    standbys = ", ".join(r for r in rb.regions if r != rb.primary)
    database = rb.database.provider if rb.database else "no database"
    return (
        f"{rb.service} ok: {rb.primary} -> {standbys}; {rb.dns.provider} {rb.dns.record} TTL {rb.dns.ttl}s; "
        f"{database}; RTO {format_duration(rb.objectives.rto)} (cutover budget "
        f"{format_duration(rb.cutover_budget)}), RPO {format_duration(rb.objectives.rpo)}; "
        f"{len(rb.health)} health check{'s' if len(rb.health) != 1 else ''}"
    )


@runbook.command("schema")
def runbook_schema() -> int:
    """Print the runbook JSON Schema (docs/runbook.schema.json is this output)."""
    click.echo(schema_text())
    return EXIT_OK


def schema_text() -> str:
    return json.dumps(Runbook.model_json_schema(), indent=2, sort_keys=True)


# ------------------------------------------------------------------------------------------------ check
@cli.command()
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

    Exit status: 0 ready, 3 degraded, 4 not ready, 1 error.
    """
    if bool(service) == all_services:
        raise click.UsageError("name one SERVICE or pass --all")
    targets = _services_to_check(directory, service)
    settings = settings_from(options)
    reports = asyncio.run(_run_checks(settings, targets, timeout, archive))
    if as_json:
        payload = [r.model_dump(mode="json") for r in reports]
        click.echo(json.dumps(payload if all_services else payload[0], indent=2))
    else:
        for report in reports:
            click.echo(render_markdown(report))
            click.echo()
    return max(VERDICT_EXIT[r.verdict] for r in reports)


def _services_to_check(directory: Path, service: str | None) -> list[LoadedRunbook]:
    loaded, problems = load_directory(directory)
    if service is None:
        if problems:
            raise Failure("fix these runbooks first:\n" + "\n".join(f"  {p}" for p in problems))
        if not loaded:
            raise Failure(f"no runbooks in {directory}")
        return loaded
    for item in loaded:
        if item.runbook.service == service:
            return [item]
    broken = [p for p in problems if Path(p.file).stem == service]
    if broken:
        raise Failure(f"the runbook of {service} is invalid:\n" + "\n".join(f"  {p}" for p in broken))
    known = ", ".join(sorted(i.runbook.service for i in loaded)) or "none"
    raise Failure(f"unknown service {service!r}: no runbook in {directory} describes it (known: {known})")


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


def workflow_link(settings: TemporalSettings, workflow_id: str) -> str:
    base = os.environ.get(UI_URL_ENV, "http://localhost:8233").rstrip("/")
    return f"{base}/namespaces/{settings.namespace}/workflows/{workflow_id}"


# -------------------------------------------------------------------------------------------- failover
def _default_user() -> str:
    return os.environ.get("DRFLOW_USER") or getpass.getuser()


@cli.command()
@click.argument("service")
@click.option("--to", "target", required=True, help="the region to fail over to")
@click.option("--reason", required=True, help="why; shown to approvers and kept in the report")
@click.option(
    "--mode", type=click.Choice(["planned", "emergency", "drill"]), default="planned", show_default=True
)
@click.option("--as", "requested_by", default=_default_user, help="who asks [env DRFLOW_USER; your login]")
@click.option("--wait", is_flag=True, help="follow the run step by step until it ends")
@connection_options
@click.pass_obj
def failover(
    directory: Path,
    /,
    service: str,
    target: str,
    reason: str,
    mode: str,
    requested_by: str,
    wait: bool,
    **options: Any,
) -> int:
    """Fail SERVICE over to another region (workflow id failover-SERVICE)."""
    from workflows.failover_models import FailoverRequest

    loaded = _services_to_check(directory, service)[0].runbook
    if target not in loaded.regions:
        raise Failure(f"{target!r} is not a region of {service} (regions: {', '.join(loaded.regions)})")
    request = FailoverRequest(
        service=service, target=target, reason=reason, requested_by=requested_by, mode=mode
    )
    settings = settings_from(options)
    # The serving region is known for sure only after preflight; the runbook's primary is the usual source.
    source = loaded.primary if loaded.primary != target else "?"
    return asyncio.run(_start_failover(settings, request, wait, source))


async def _start_failover(settings: TemporalSettings, request: Any, wait: bool, source: str = "?") -> int:
    from temporalio.common import WorkflowIDConflictPolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from workflows.failover_models import FailoverReport

    client = await connect(settings)
    workflow_id = f"failover-{request.service}"
    try:
        handle = await client.start_workflow(
            "Failover",
            request,
            id=workflow_id,
            task_queue=TASK_QUEUE,
            result_type=FailoverReport,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            static_summary=f"Failover {request.service} {source} → {request.target} ({request.mode})",
            search_attributes=run_attributes(request.service, "failover", "preflight"),
            static_details=f"Requested by {request.requested_by}: {request.reason}",
        )
    except WorkflowAlreadyStartedError as err:
        raise Failure(
            f"a failover of {request.service} is already running ({workflow_id}, run {err.run_id}): "
            f"follow it with `drflow status {workflow_id}`"
        ) from err
    click.echo(f"started {handle.id}  {workflow_link(settings, handle.id)}")
    if not wait:
        click.echo(f"follow it: drflow status {handle.id} --follow")
        return EXIT_OK
    return await _follow(client, handle.id)


async def _follow(client: Client, workflow_id: str) -> int:
    """Live step-by-step view: a line when a step starts or ends, instructions when a person is needed."""
    from temporalio.client import RPCError, WorkflowExecutionStatus, WorkflowQueryFailedError

    handle = client.get_workflow_handle(workflow_id)
    view = await _view(client, workflow_id)
    printed: set[str] = set()
    while True:
        description = await handle.describe()
        if description.status != WorkflowExecutionStatus.RUNNING:
            break
        try:
            report = await handle.query("status", result_type=view.report_type)
        except (WorkflowQueryFailedError, RPCError):  # the first task may not have run yet: ask again
            await asyncio.sleep(0.5)
            continue
        for key, line in view.progress(report):
            if key not in printed:
                printed.add(key)
                click.echo(line)
        await asyncio.sleep(0.3)
    report = await _final_report(client, workflow_id, view.report_type)
    if report is None:
        raise Failure(
            f"{workflow_id} ended as {description.status.name.lower() if description.status else '?'}"
        )
    for key, line in view.progress(report):  # what happened after the last look
        if key not in printed:
            click.echo(line)
    click.echo()
    click.echo(view.render(report))
    return EXIT_OK if report.outcome in ("completed", "no-op", "passed") else EXIT_ERROR


async def _view(client: Client, workflow_id: str) -> Any:
    from temporalio.client import RPCError

    from workers.run_views import view_for

    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        raise Failure(f"{workflow_id}: {err.message}") from err
    try:
        return view_for(description.workflow_type)
    except ValueError as err:
        raise Failure(str(err)) from err


async def _final_report(client: Client, workflow_id: str, report_type: type[Any]) -> Any:
    try:
        return await client.get_workflow_handle(workflow_id, result_type=report_type).result()
    except WorkflowFailureError:
        return None


@cli.command()
@click.argument("service")
@click.option("--reason", required=True, help="why; shown to approvers and kept in the report")
@click.option("--home", default=None, help="the region traffic returns to (default: the runbook's primary)")
@click.option("--prepare", is_flag=True, help="re-sync the home database as a standby first (pg_rewind)")
@click.option("--as", "requested_by", default=_default_user, help="who asks [env DRFLOW_USER; your login]")
@click.option("--wait", is_flag=True, help="follow the run step by step until it ends")
@connection_options
@click.pass_obj
def failback(
    directory: Path, /, service: str, reason: str, home: str | None, prepare: bool, requested_by: str,
    wait: bool, **options: Any,
) -> int:  # fmt: skip
    """Bring SERVICE home: database back with zero loss, then traffic in canary stages (failback-SERVICE)."""
    from temporalio.common import WorkflowIDConflictPolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from workflows.failback_models import FailbackReport, FailbackRequest

    runbook = _services_to_check(directory, service)[0].runbook
    if home is not None and home not in runbook.regions:
        raise Failure(f"{home!r} is not a region of {service} (regions: {', '.join(runbook.regions)})")
    request = FailbackRequest(
        service=service, reason=reason, home=home, prepare=prepare, requested_by=requested_by
    )
    settings = settings_from(options)

    async def start() -> int:
        client = await connect(settings)
        workflow_id = f"failback-{service}"
        try:
            handle = await client.start_workflow(
                "Failback", request, id=workflow_id, task_queue=TASK_QUEUE, result_type=FailbackReport,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                static_summary=f"Failback {service} → {home or runbook.primary}",
                static_details=f"Requested by {requested_by}: {reason}",
                search_attributes=run_attributes(service, "failback", "preflight"),
            )  # fmt: skip
        except WorkflowAlreadyStartedError as err:
            raise Failure(
                f"a failback of {service} is already running ({workflow_id}, run {err.run_id})"
            ) from err
        click.echo(f"started {handle.id}  {workflow_link(settings, handle.id)}")
        if not wait:
            click.echo(f"follow it: drflow status {handle.id} --follow")
            return EXIT_OK
        return await _follow(client, handle.id)

    return asyncio.run(start())


def _update_command(update: str, help_text: str) -> click.Command:
    @click.command(update.replace("_", "-"), help=help_text)
    @click.argument("workflow_id")
    @click.option("--as", "who", default=_default_user, help="you [env DRFLOW_USER; your login]")
    @click.option("--reason", default="", help="kept in the audit record")
    @click.option("--gate", default=None, help="the gate you answer (default: the open one)")
    @click.option("--plan", "plan_checksum", default=None, help="the plan checksum you reviewed")
    @connection_options
    def command(
        workflow_id: str, who: str, reason: str, gate: str | None, plan_checksum: str | None, **options: Any
    ) -> int:
        from workflows.failover_models import ApprovalInput

        answer = ApprovalInput(
            approver=who, reason=reason, channel="cli", gate=gate, plan_checksum=plan_checksum
        )
        return asyncio.run(_send_update(settings_from(options), workflow_id, update, answer))

    return command


for _name, _help in (
    ("approve", "Approve the open gate of a run."),
    ("reject", "Reject the open gate of a run; it ends with nothing (more) changed."),
    (
        "accept_data_loss",
        "Pass the data-loss gate: promote although the standby lacks writes (needs --reason).",
    ),
):
    cli.add_command(_update_command(_name, _help))


@cli.command()
@click.argument("workflow_id")
@click.argument("decision", type=click.Choice(["retry", "skip", "abort"]))
@click.option("--as", "who", default=_default_user, help="you [env DRFLOW_USER; your login]")
@click.option("--reason", default="", help="kept in the audit record")
@connection_options
def decide(workflow_id: str, decision: str, who: str, reason: str, **options: Any) -> int:
    """Answer a failed step: retry it, skip it (where allowed) or abort the run."""
    from workflows.failover_models import DecisionInput

    answer = DecisionInput(decision=decision, operator=who, reason=reason, channel="cli")
    return asyncio.run(_send_update(settings_from(options), workflow_id, "decide", answer))


async def _send_update(settings: TemporalSettings, workflow_id: str, update: str, payload: Any) -> int:
    from temporalio.client import RPCError, WorkflowUpdateFailedError

    from workflows.failover_models import UpdateOutcome

    client = await connect(settings)
    try:
        outcome = await client.get_workflow_handle(workflow_id).execute_update(
            update, payload, result_type=UpdateOutcome
        )
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        message = cause.message if isinstance(cause, ApplicationError) else str(cause)
        raise Failure(f"refused: {message}") from err
    except RPCError as err:
        raise Failure(f"{workflow_id}: {err.message}") from err
    click.echo(outcome.message)
    return EXIT_OK


@cli.command()
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True, help="the live report as JSON")
@click.option("--follow", is_flag=True, help="keep printing until the run ends")
@connection_options
def status(workflow_id: str, as_json: bool, follow: bool, **options: Any) -> int:
    """Print a run's live report (the workflow's status query)."""
    return asyncio.run(_status(settings_from(options), workflow_id, as_json, follow))


async def _status(settings: TemporalSettings, workflow_id: str, as_json: bool, follow: bool) -> int:
    from temporalio.client import RPCError, WorkflowExecutionStatus

    client = await connect(settings)
    if follow:
        return await _follow(client, workflow_id)
    view = await _view(client, workflow_id)
    handle = client.get_workflow_handle(workflow_id)
    try:
        description = await handle.describe()
        if description.status == WorkflowExecutionStatus.RUNNING:
            report = await handle.query("status", result_type=view.report_type)
        else:
            report = await _final_report(client, workflow_id, view.report_type)
    except RPCError as err:
        raise Failure(f"{workflow_id}: {err.message}") from err
    if report is None:
        raise Failure(
            f"{workflow_id} ended as {description.status.name.lower() if description.status else '?'}"
        )
    click.echo(report.model_dump_json(indent=2) if as_json else view.render(report))
    return EXIT_OK


# ---------------------------------------------------------------------------------------- worker / dev
@cli.command()
@connection_options
@click.option("--task-queue", default=TASK_QUEUE, show_default=True)
@click.pass_obj
def worker(directory: Path, /, task_queue: str, **options: Any) -> int:
    """Run a drflow worker against any Temporal (dev server, self-hosted, Temporal Cloud)."""
    from workers.worker import build_worker, run_until_signalled

    settings = settings_from(options)
    _configure_logging(logging.INFO)

    async def serve() -> None:
        client = await connect(settings)
        logging.getLogger("drflow.worker").info(
            "worker polling task queue %s on %s, runbooks from %s", task_queue, settings.describe(), directory
        )
        await run_until_signalled(build_worker(client, directory, task_queue=task_queue))
        logging.getLogger("drflow.worker").info("worker stopped")

    asyncio.run(serve())
    return EXIT_OK


@cli.command()
@click.option("--port", default=7233, show_default=True, help="Temporal gRPC port")
@click.option("--ui-port", default=8233, show_default=True, help="Temporal Web UI port")
@click.option("--state-dir", default=".drflow", show_default=True, type=click.Path(file_okay=False))
@click.option("--sandbox", is_flag=True, help="also run the local two-region sandbox (runbooks/sandbox.yaml)")
@click.pass_obj
def dev(directory: Path, /, port: int, ui_port: int, state_dir: str, sandbox: bool) -> int:
    """Run the embedded stack: Temporal dev server (SQLite under --state-dir), Web UI, a drflow worker."""
    from workers.dev import DevConfig, DevStackError, describe, run_dev

    _configure_logging(logging.WARNING)
    config = DevConfig(
        state_dir=Path(state_dir), port=port, ui_port=ui_port, runbooks_dir=directory, sandbox=sandbox
    )
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


from workers.audit.cli import audit  # noqa: E402
from workers.gateway_cli import gateway  # noqa: E402
from workers.sandbox.cli import sandbox  # noqa: E402

cli.add_command(sandbox)
cli.add_command(gateway)
cli.add_command(audit)

from workers.drill_cli import drill  # noqa: E402  (it imports this module's helpers)

cli.add_command(drill)


def _configure_logging(level: int) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def main() -> None:
    code = EXIT_OK
    try:
        result = cli.main(standalone_mode=False)
        code = result if isinstance(result, int) else EXIT_OK
    except click.exceptions.Exit as done:
        code = done.exit_code
    except click.ClickException as err:
        err.show()
        code = err.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        code = 130
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
