"""``drflow failover|failback|approve|reject|accept-data-loss|decide|status``: start and steer runs.

Failover and failback start a run; the gate answers, ``decide`` and ``status`` act on any run by workflow id
(a drill's too); ``--wait`` and ``status --follow`` share the live step-by-step view.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from activities.search_attributes import run_attributes
from workers.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    Failure,
    connect,
    connection_options,
    default_user,
    run_plan,
    services_to_check,
    settings_from,
    workflow_link,
)
from workers.connection import TemporalSettings
from workflows.common import TASK_QUEUE


@click.command()
@click.argument("service")
@click.option("--to", "target", required=True, help="the region to fail over to")
@click.option("--reason", required=True, help="why; shown to approvers and kept in the report")
@click.option(
    "--mode", type=click.Choice(["planned", "emergency", "drill"]), default="planned", show_default=True
)
@click.option("--as", "requested_by", default=default_user, help="who asks [env DRFLOW_USER; your login]")
@click.option(
    "--key", default=None, help="private key that signs as --as [env DRFLOW_SIGNING_KEY; else ssh-agent]"
)
@click.option("--wait", is_flag=True, help="follow the run step by step until it ends")
@click.option(
    "--dry-run", is_flag=True, help="preflight and print the plan (and its checksum) only; change nothing"
)
@click.option("--json", "as_json", is_flag=True, help="with --dry-run: the report and plan as JSON")
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
    key: str | None,
    wait: bool,
    dry_run: bool,
    as_json: bool,
    **options: Any,
) -> int:
    """Fail SERVICE over to another region (workflow id failover-SERVICE).

    With --dry-run: the plan a real run would show at its approval gate, same checksum, and no change.
    """
    from workflows.failover_models import FailoverReport, FailoverRequest, render_report

    loaded = services_to_check(directory, service)[0].runbook
    if target not in loaded.regions:
        raise Failure(f"{target!r} is not a region of {service} (regions: {', '.join(loaded.regions)})")
    if as_json and not dry_run:
        raise click.UsageError("--json goes with --dry-run (a started run prints its id; see drflow status)")
    request = FailoverRequest(
        service=service, target=target, reason=reason, requested_by=requested_by, mode=mode, dry_run=dry_run
    )
    if not dry_run:
        request = _signed_request(
            request, directory, loaded.approvals, key, kind="failover", target=target, mode=mode
        )
    settings = settings_from(options)
    if dry_run:
        return asyncio.run(run_plan(settings, "Failover", request, FailoverReport, render_report, as_json))
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


ExtraLines = Callable[[], Awaitable[list[tuple[str, str]]]]


async def _follow(client: Client, workflow_id: str, extra: ExtraLines | None = None) -> int:
    """Live step-by-step view: a line when a step starts or ends, instructions when a person is needed.

    ``extra`` adds keyed lines the run's own report cannot know (a drill's children waiting for a person),
    asked for every few seconds: each is printed once, like the progress lines.
    """
    from temporalio.client import RPCError, WorkflowExecutionStatus, WorkflowQueryFailedError

    handle = client.get_workflow_handle(workflow_id)
    view = await _view(client, workflow_id)
    printed: set[str] = set()
    out = _LiveLines(workflow_id)
    loop = asyncio.get_running_loop()
    extra_due = 0.0
    try:
        while True:
            description = await handle.describe()
            if description.status != WorkflowExecutionStatus.RUNNING:
                break
            try:
                report = await handle.query("status", result_type=view.report_type)
            except (WorkflowQueryFailedError, RPCError):  # the first task may not have run yet: ask again
                await asyncio.sleep(0.5)
                continue
            lines = view.progress(report)
            if extra is not None and loop.time() >= extra_due:
                extra_due = loop.time() + EXTRA_EVERY_SECONDS
                lines = [*lines, *await extra()]
            for key, line in lines:
                if key not in printed:
                    printed.add(key)
                    out.line(line)
            out.progress(report)
            await asyncio.sleep(0.3)
        report = await _final_report(client, workflow_id, view.report_type)
        if report is None:
            raise Failure(
                f"{workflow_id} ended as {description.status.name.lower() if description.status else '?'}"
            )
        for key, line in view.progress(report):  # what happened after the last look
            if key not in printed:
                out.line(line)
    finally:
        out.close()
    click.echo()
    click.echo(view.render(report))
    return EXIT_OK if report.outcome in ("completed", "no-op", "passed") else EXIT_ERROR


EXTRA_EVERY_SECONDS = 2.0  # extra lines cost a visibility list and a query per run: not every poll


class _LiveLines:
    """Where the live view prints: the plain lines as ever off a TTY (CI logs, tests parse them); on a TTY,
    the same lines coloured by ``rich`` under a spinner that says what the run is doing and for how long.
    """

    STYLES = {"✓": "green", "✗": "bold red", "↷": "yellow", "…": "dim"}

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.console: Any = None
        self.spinner: Any = None
        if sys.stdout.isatty():
            from rich.console import Console

            self.console = Console(highlight=False)
            self.spinner = self.console.status(f"following {workflow_id}")
            self.spinner.start()

    def line(self, text: str) -> None:
        if self.console is None:
            click.echo(text)
            return
        from rich.text import Text

        mark = text.lstrip()[:1]
        style = "bold yellow" if "waiting for" in text else self.STYLES.get(mark, "")
        self.console.print(Text(text, style=style))

    def progress(self, report: Any) -> None:
        """The spinner's text: the running step, the open gate or the waiting step, and the run's age."""
        if self.spinner is None:
            return
        from datetime import UTC, datetime

        from workflows.drill_models import DrillReport, drill_now

        running = [s.name for s in getattr(report, "steps", []) if s.outcome == "running"]
        gate, step = getattr(report, "open_gate", None), getattr(report, "waiting_step", None)
        doing = drill_now(report) if isinstance(report, DrillReport) else (
            f"waiting for approval of the {gate} gate" if gate else
            f"{step} failed: waiting for a decision" if step else
            running[-1] if running else "between steps"
        )  # fmt: skip
        started = getattr(report, "started_at", None)
        age = "" if started is None else f" · {int((datetime.now(UTC) - started).total_seconds())}s"
        self.spinner.update(f"{self.workflow_id}: {doing}{age}")

    def close(self) -> None:
        if self.spinner is not None:
            self.spinner.stop()


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


@click.command()
@click.argument("service")
@click.option("--reason", required=True, help="why; shown to approvers and kept in the report")
@click.option("--home", default=None, help="the region traffic returns to (default: the runbook's primary)")
@click.option("--prepare", is_flag=True, help="re-sync the home database as a standby first (pg_rewind)")
@click.option("--as", "requested_by", default=default_user, help="who asks [env DRFLOW_USER; your login]")
@click.option(
    "--key", default=None, help="private key that signs as --as [env DRFLOW_SIGNING_KEY; else ssh-agent]"
)
@click.option("--wait", is_flag=True, help="follow the run step by step until it ends")
@click.option(
    "--dry-run", is_flag=True, help="preflight and print the plan (and its checksum) only; change nothing"
)
@click.option("--json", "as_json", is_flag=True, help="with --dry-run: the report and plan as JSON")
@connection_options
@click.pass_obj
def failback(
    directory: Path, /, service: str, reason: str, home: str | None, prepare: bool, requested_by: str,
    key: str | None, wait: bool, dry_run: bool, as_json: bool, **options: Any,
) -> int:  # fmt: skip
    """Bring SERVICE home: database back with zero loss, then traffic in canary stages (failback-SERVICE).

    With --dry-run: the plan a real run would approve at its failback gate, and no change (not even
    --prepare's re-sync, which the plan names instead).
    """
    from temporalio.common import WorkflowIDConflictPolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from workflows.failback_models import FailbackReport, FailbackRequest, render_failback

    runbook = services_to_check(directory, service)[0].runbook
    if home is not None and home not in runbook.regions:
        raise Failure(f"{home!r} is not a region of {service} (regions: {', '.join(runbook.regions)})")
    if as_json and not dry_run:
        raise click.UsageError("--json goes with --dry-run (a started run prints its id; see drflow status)")
    request = FailbackRequest(
        service=service, reason=reason, home=home, prepare=prepare, requested_by=requested_by,
        dry_run=dry_run,
    )  # fmt: skip
    if not dry_run:
        request = _signed_request(
            request, directory, runbook.approvals, key, kind="failback", home=home, mode=request.mode
        )
    settings = settings_from(options)
    if dry_run:
        return asyncio.run(run_plan(settings, "Failback", request, FailbackReport, render_failback, as_json))

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


def _signed_request(request: Any, directory: Path, approvals: Any, key: str | None, **fields: Any) -> Any:
    """The request signed as ``--as`` when the runbook uses a people file (else it stays as it is)."""
    from runbooks.people import people_location
    from workers.cli.signing import find_signer, person_name, sign_request, warn_unsigned

    if people_location(approvals, directory) is None:
        return request
    signer = find_signer(request.requested_by, key, approvals, directory)
    if signer is None:
        warn_unsigned("request")
        return request
    signed, signature = sign_request(
        signer, workflow_id=f"{fields['kind']}-{request.service}", service=request.service,
        reason=request.reason, **fields,
    )  # fmt: skip
    return request.model_copy(
        update={"requested_by": person_name(request.requested_by), "signed": signed, "signature": signature}
    )


def _update_command(update: str, help_text: str) -> click.Command:
    @click.command(update.replace("_", "-"), help=help_text)
    @click.argument("workflow_id")
    @click.option("--as", "who", default=default_user, help="you [env DRFLOW_USER; your login]")
    @click.option("--reason", default="", help="kept in the audit record")
    @click.option("--gate", default=None, help="the gate you answer (default: the open one)")
    @click.option(
        "--plan", "plan_checksum", default=None,
        help="the full checksum of the plan you reviewed (drflow status shows it; asked for on a terminal)",
    )  # fmt: skip
    @click.option(
        "--key", default=None, help="private key that signs as --as [env DRFLOW_SIGNING_KEY; else ssh-agent]"
    )
    @connection_options
    @click.pass_obj
    def command(
        directory: Path, /, workflow_id: str, who: str, reason: str, gate: str | None,
        plan_checksum: str | None, key: str | None, **options: Any,
    ) -> int:  # fmt: skip
        answer = _GateAnswer(update, who, reason, gate, plan_checksum, key, directory)
        return asyncio.run(_answer(settings_from(options), workflow_id, answer))

    return command


class _GateAnswer:
    """A gate answer or a decision as typed, signed once the run's open gate or step is known."""

    def __init__(
        self, update: str, who: str, reason: str, gate: str | None, plan: str | None, key: str | None,
        directory: Path, decision: str | None = None,
    ) -> None:  # fmt: skip
        self.update, self.who, self.reason, self.gate, self.plan = update, who, reason, gate, plan
        self.key, self.directory, self.decision = key, directory, decision

    def payload(self, report: Any) -> Any:
        """The Update's input: signed when the run verifies people (its report names the requester)."""
        from activities.approvals.signatures import SIGNED_ANSWER
        from workflows.failover_models import ApprovalInput, DecisionInput

        verified = getattr(report, "requester", None) is not None
        if self.update == "decide":
            answer: Any = DecisionInput(
                decision=self.decision, operator=self.who, reason=self.reason, channel="cli"
            )
            if not verified or report.waiting_step is None:
                return answer
            return self._sign(answer, report, "operator", failed_step=report.waiting_step,
                              decision=self.decision)  # fmt: skip
        checksum = getattr(report, "gate_checksum", None)
        plan = self.plan
        if verified and checksum is not None:
            plan = self._plan_for(report, checksum)
        answer = ApprovalInput(
            approver=self.who, reason=self.reason, channel="cli", gate=self.gate, plan_checksum=plan
        )
        if not verified or report.open_gate is None or plan is None:
            return answer
        return self._sign(answer, report, "approver", gate=self.gate or report.open_gate,
                          decision=SIGNED_ANSWER[self.update], plan_checksum=plan)  # fmt: skip

    def _plan_for(self, report: Any, checksum: str) -> str:
        if self.plan is not None:
            if len(self.plan) < len(checksum) and checksum.startswith(self.plan):
                raise Failure(f"give the whole plan checksum, not a prefix: {checksum}")
            return self.plan
        if self.update == "reject":  # rejecting is safe whatever the plan: no need to type it
            return checksum
        where = f"drflow status {report.workflow_id}"
        if not sys.stdin.isatty():
            raise Failure(
                f"pass --plan {checksum}: the full checksum of the plan you {self.update.replace('_', ' ')} "
                f"({where} shows the plan)"
            )
        click.echo(f"The {report.open_gate} gate shows plan {checksum} ({where} shows it in full).")
        if not click.confirm("Is this the plan you reviewed?", default=False):
            raise Failure("not answered: read the plan, then answer with --plan <its checksum>")
        return checksum

    def _sign(self, answer: Any, report: Any, who_field: str, **fields: Any) -> Any:
        from workers.cli.signing import find_signer, person_name, sign_decision, warn_unsigned

        approvals = _runbook_approvals(self.directory, report.service)
        signer = find_signer(self.who, self.key, approvals, self.directory)
        if signer is None:
            warn_unsigned("answer")
            return answer
        signed, signature = sign_decision(
            signer, workflow_id=report.workflow_id, run_id=report.run_id, **fields
        )
        return answer.model_copy(
            update={who_field: person_name(self.who), "signed": signed, "signature": signature}
        )


def _runbook_approvals(directory: Path, service: str) -> Any:
    """The local runbook's approvals (to pick the right agent key), when the runbooks are here."""
    try:
        return services_to_check(directory, service)[0].runbook.approvals
    except Failure:
        return None


async def _answer(settings: TemporalSettings, workflow_id: str, answer: _GateAnswer) -> int:
    from temporalio.client import RPCError, WorkflowQueryFailedError

    client = await connect(settings)
    view = await _view(client, workflow_id)
    try:
        report = await client.get_workflow_handle(workflow_id).query("status", result_type=view.report_type)
    except (RPCError, WorkflowQueryFailedError) as err:
        raise Failure(f"{workflow_id}: {err}") from err
    return await _send_update(settings, workflow_id, answer.update, answer.payload(report), client)


approve = _update_command("approve", "Approve the open gate of a run.")
reject = _update_command("reject", "Reject the open gate of a run; it ends with nothing (more) changed.")
accept_data_loss = _update_command(
    "accept_data_loss", "Pass the data-loss gate: promote although the standby lacks writes (needs --reason)."
)


@click.command()
@click.argument("workflow_id")
@click.argument("decision", type=click.Choice(["retry", "skip", "abort"]))
@click.option("--as", "who", default=default_user, help="you [env DRFLOW_USER; your login]")
@click.option("--reason", default="", help="kept in the audit record")
@click.option(
    "--key", default=None, help="private key that signs as --as [env DRFLOW_SIGNING_KEY; else ssh-agent]"
)
@connection_options
@click.pass_obj
def decide(
    directory: Path, /, workflow_id: str, decision: str, who: str, reason: str, key: str | None,
    **options: Any,
) -> int:  # fmt: skip
    """Answer a failed step: retry it, skip it (where allowed) or abort the run."""
    answer = _GateAnswer("decide", who, reason, None, None, key, directory, decision=decision)
    return asyncio.run(_answer(settings_from(options), workflow_id, answer))


async def _send_update(
    settings: TemporalSettings, workflow_id: str, update: str, payload: Any, client: Client | None = None
) -> int:
    from temporalio.client import RPCError, WorkflowUpdateFailedError

    from workflows.failover_models import UpdateOutcome

    client = client or await connect(settings)
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


@click.command()
@click.argument("workflow_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="the live report as JSON")
@click.option("--follow", is_flag=True, help="keep printing until the run ends")
@click.option("--service", default=None, help="without WORKFLOW_ID: only this service's waiting runs")
@connection_options
def status(workflow_id: str | None, as_json: bool, follow: bool, service: str | None, **options: Any) -> int:
    """Print a run's live report (the workflow's status query).

    Without WORKFLOW_ID: every run, across services, that waits for a person (an open gate or a failed
    step), oldest first, each with the command that answers it.
    """
    if workflow_id is None:
        if as_json or follow:
            raise click.UsageError("--json and --follow need a WORKFLOW_ID")
        return asyncio.run(_waiting(settings_from(options), service))
    if service is not None:
        raise click.UsageError("--service lists waiting runs: leave out WORKFLOW_ID")
    return asyncio.run(_status(settings_from(options), workflow_id, as_json, follow))


async def _waiting(settings: TemporalSettings, service: str | None) -> int:
    """The operator's first look in an incident: what waits for me, since when, and what do I type."""
    from datetime import UTC, datetime

    from temporalio.service import RPCError

    from workers.run_views import waiting_runs

    client = await connect(settings)
    try:
        runs = await waiting_runs(client, service)
    except RPCError as err:
        raise Failure(f"cannot list runs: {err.message}") from err
    if not runs:
        click.echo("nothing waits for a person" + (f" on {service}" if service else ""))
        return EXIT_OK
    now = datetime.now(UTC)
    click.echo("1 run waits for a person:" if len(runs) == 1 else f"{len(runs)} runs wait for a person:")
    for run in runs:
        minutes = max(0, int((now - run.since).total_seconds() // 60))
        click.echo()
        click.echo(
            f"{run.workflow_id}  {run.kind} of {run.service}  waits for {run.waits_for}  "
            f"since {run.since:%Y-%m-%d %H:%M:%S} UTC ({minutes}m ago)"
        )
        if run.command is None:
            click.echo("  no worker answers its status query: start one (drflow worker), then answer it")
        else:
            click.echo(f"  {run.command}")
    return EXIT_OK


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
