"""``drflow drill``: quarterly DR drills on Temporal Schedules, and their history."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowQueryFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.search_attributes import run_attributes
from workers.cli.common import (
    EXIT_OK,
    Failure,
    connect,
    connection_options,
    run_plan,
    services_to_check,
    settings_from,
    workflow_link,
)
from workers.connection import TemporalSettings
from workflows.common import TASK_QUEUE
from workflows.drill_models import DrillReport, DrillRequest, drill_failover_request, render_drill

CATCHUP_WINDOW = timedelta(hours=4)  # a drill missed during an outage must not fire days later
QUARTERLY = ScheduleCalendarSpec(
    second=(ScheduleRange(0),),
    minute=(ScheduleRange(0),),
    hour=(ScheduleRange(9),),
    # Temporal ANDs day of month with day of week: days 1-7 that are Tuesdays = the first Tuesday.
    day_of_month=(ScheduleRange(1, 7),),
    month=(ScheduleRange(1), ScheduleRange(4), ScheduleRange(7), ScheduleRange(10)),
    day_of_week=(ScheduleRange(2),),
    comment="first Tuesday of January, April, July and October, 09:00 UTC",
)
WEEKDAYS = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}


def schedule_id(service: str) -> str:
    return f"drill-{service}"


def parse_calendar(text: str) -> ScheduleCalendarSpec:
    """``month=1,4,7,10 day_of_month=1-7 day_of_week=TUE hour=9 minute=0`` (UTC)."""
    fields: dict[str, tuple[ScheduleRange, ...]] = {}
    allowed = {"second", "minute", "hour", "day_of_month", "month", "day_of_week"}
    for part in text.split():
        key, _, value = part.partition("=")
        if key not in allowed or not value:
            raise click.BadParameter(f"{part!r}: use key=value with keys {', '.join(sorted(allowed))}")
        ranges = []
        for item in value.split(","):
            low, _, high = item.partition("-")
            try:
                start = _number(key, low)
                end = _number(key, high) if high else start
            except ValueError as err:
                raise click.BadParameter(f"{part!r}: {item!r} is not a number or range") from err
            ranges.append(ScheduleRange(start, end))
        fields[key] = tuple(ranges)
    fields.setdefault("second", (ScheduleRange(0),))
    fields.setdefault("minute", (ScheduleRange(0),))
    return ScheduleCalendarSpec(**fields, comment=text)


def _number(key: str, text: str) -> int:
    if key == "day_of_week" and text.upper() in WEEKDAYS:
        return WEEKDAYS[text.upper()]
    return int(text)


@click.group()
def drill() -> None:
    """DR drills: schedule, list, run (with or without a schedule), status, pause, unpause, delete, report."""


@drill.command("schedule")
@click.argument("service")
@click.option("--calendar", help='UTC, e.g. "month=1,4,7,10 day_of_month=1-7 day_of_week=TUE hour=9"')
@click.option("--cron", help='cron expression (UTC), e.g. "0 9 1-7 1,4,7,10 2"')
@click.option("--target", help="region to fail over to (default: the runbook's first standby)")
@click.option("--approver-unavailable", help="scenario: this approver cannot answer during the drill")
@connection_options
@click.pass_obj
def schedule(
    directory: Path, /, service: str, calendar: str | None, cron: str | None, target: str | None,
    approver_unavailable: str | None, **options: Any,
) -> int:  # fmt: skip
    """Create the drill schedule of SERVICE (default: first Tuesday of each quarter, 09:00 UTC)."""
    if calendar and cron:
        raise click.UsageError("give --calendar or --cron, not both")
    services_to_check(directory, service)
    spec = (
        ScheduleSpec(cron_expressions=[cron])
        if cron
        else ScheduleSpec(calendars=[parse_calendar(calendar) if calendar else QUARTERLY])
    )
    request = DrillRequest(service=service, target=target, approver_unavailable=approver_unavailable)
    return asyncio.run(_create(settings_from(options), request, spec))


async def _create(settings: TemporalSettings, request: DrillRequest, spec: ScheduleSpec) -> int:
    client = await connect(settings)
    action = ScheduleActionStartWorkflow(
        "Drill",
        request,
        id=schedule_id(request.service),
        task_queue=TASK_QUEUE,
        typed_search_attributes=run_attributes(request.service, "drill", "failover"),
        static_summary=f"DR drill of {request.service}",
    )
    try:
        handle = await client.create_schedule(
            schedule_id(request.service),
            Schedule(
                action=action,
                spec=spec,
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=CATCHUP_WINDOW),
                state=ScheduleState(note=f"DR drills of {request.service}"),
            ),
        )
    except ScheduleAlreadyRunningError as err:
        raise Failure(
            f"{request.service} already has a drill schedule ({schedule_id(request.service)}): "
            "`drflow drill delete` it first to change it"
        ) from err
    description = await handle.describe()
    click.echo(f"scheduled {handle.id}; next drills:")
    for when in description.info.next_action_times[:4]:
        click.echo(f"  {when:%Y-%m-%d %H:%M} UTC ({when:%A})")
    return EXIT_OK


@drill.command("list")
@connection_options
def list_schedules(**options: Any) -> int:
    """Each drill schedule: paused or not, next runs, last result."""
    return asyncio.run(_list(settings_from(options)))


async def _list(settings: TemporalSettings) -> int:
    client = await connect(settings)
    found = False
    async for entry in await client.list_schedules():
        if not entry.id.startswith("drill-"):
            continue
        found = True
        description = await client.get_schedule_handle(entry.id).describe()
        info = description.info
        state = "paused" if description.schedule.state.paused else "active"
        upcoming = ", ".join(f"{t:%Y-%m-%d %H:%M}" for t in info.next_action_times[:4]) or "-"
        started = [getattr(a.action, "workflow_id", "") for a in info.recent_actions]
        last = await _last_result(client, [w for w in started if w])
        click.echo(f"{entry.id}  {state}  next: {upcoming} UTC  last: {last}")
    if not found:
        click.echo("no drill schedules: create one with `drflow drill schedule SERVICE`")
    return EXIT_OK


async def _last_result(client: Client, workflow_ids: list[str]) -> str:
    if not workflow_ids:
        return "never ran"
    handle = client.get_workflow_handle(workflow_ids[-1])
    description = await handle.describe()
    if description.status != WorkflowExecutionStatus.COMPLETED:
        return description.status.name.lower() if description.status else "unknown"
    report = await client.get_workflow_handle(workflow_ids[-1], result_type=DrillReport).result()
    return f"{report.outcome} ({len(report.findings)} findings) at {description.close_time:%Y-%m-%d %H:%M}"


def _schedule_command(name: str, help_text: str) -> click.Command:
    @click.command(name, help=help_text)
    @click.argument("service")
    @connection_options
    def command(service: str, **options: Any) -> int:
        return asyncio.run(_act(settings_from(options), name, service))

    return command


async def _act(settings: TemporalSettings, action: str, service: str) -> int:
    client = await connect(settings)
    handle = client.get_schedule_handle(schedule_id(service))
    try:
        if action == "pause":
            await handle.pause(note="paused with drflow drill pause")
        elif action == "unpause":
            await handle.unpause(note="unpaused with drflow drill unpause")
        else:
            await handle.delete()
    except RPCError as err:
        raise Failure(f"{schedule_id(service)}: {err.message}") from err
    click.echo(f"{schedule_id(service)}: {action} done")
    return EXIT_OK


@drill.command("run")
@click.argument("service")
@click.option("--wait", is_flag=True, help="follow the drill to its end: its steps, the children that wait")
@click.option(
    "--watch",
    type=click.FloatRange(min=0),
    default=20.0,
    show_default=True,
    help="without --wait: seconds to watch for the first child that waits for a person",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="plan the drill's failover (the plan its first gate shows); change nothing",
)
@click.option("--json", "as_json", is_flag=True, help="with --dry-run: the report and plan as JSON")
@click.option("--target", help="region to fail over to (default: the runbook's first standby)")
@click.option("--approver-unavailable", help="scenario: this approver cannot answer during the drill")
@connection_options
@click.pass_obj
def run(
    directory: Path, /, service: str, wait: bool, watch: float, dry_run: bool, as_json: bool,
    target: str | None, approver_unavailable: str | None, **options: Any,
) -> int:  # fmt: skip
    """Start a drill of SERVICE now: through its schedule when it has one, else directly; never two at once.

    Prints the drill's id and Web UI link, then every child run that waits for a person with the command
    that answers it (for --watch seconds, or to the drill's end with --wait). With a schedule the drill is
    the schedule's (its scenario; --target and --approver-unavailable go without one).

    With --dry-run: no drill starts; the failover the drill would start is planned (same request, mode
    drill) and printed, and nothing changes. The restoring failback is planned by the drill after the
    failover, from the state the failover leaves: it cannot be planned before.
    """
    settings = settings_from(options)
    if dry_run or target is not None:  # the worker loads the runbook; here only to plan or check --target
        runbook = services_to_check(directory, service)[0].runbook
        if target is not None and target not in runbook.regions:
            raise Failure(f"{target!r} is not a region of {service} (regions: {', '.join(runbook.regions)})")
    drill_request = DrillRequest(service=service, target=target, approver_unavailable=approver_unavailable)
    if not dry_run:
        if as_json:
            raise click.UsageError("--json goes with --dry-run")
        return asyncio.run(_start(settings, drill_request, wait, watch))
    from workflows.failover_models import FailoverReport, render_report

    request = drill_failover_request(drill_request, runbook, dry_run=True)
    return asyncio.run(run_plan(settings, "Failover", request, FailoverReport, render_report, as_json))


def _running_query(service: str) -> str:
    return f"WorkflowType = 'Drill' AND DrflowService = '{service}' AND ExecutionStatus = 'Running'"


async def _running_drill(client: Client, service: str) -> str | None:
    async for execution in client.list_workflows(_running_query(service)):
        return execution.id
    return None


def _refusal(service: str, drill_id: str) -> Failure:
    return Failure(
        f"a drill of {service} is already running ({drill_id}): one drill at a time; "
        f"follow it with `drflow drill status {drill_id} --follow`"
    )


async def _start(settings: TemporalSettings, request: DrillRequest, wait: bool, watch: float) -> int:
    """One drill per service: refused while one runs (visibility), and atomically by the schedule's overlap
    policy or, without a schedule, by the workflow id; the child failover's service lock backs both."""
    client = await connect(settings)
    running = await _running_drill(client, request.service)
    if running is not None:
        raise _refusal(request.service, running)
    schedule = client.get_schedule_handle(schedule_id(request.service))
    try:
        await schedule.describe()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise Failure(f"{schedule_id(request.service)}: {err.message}") from err
        drill_id = await _start_direct(client, request)
        click.echo(
            f"started drill {drill_id}  {workflow_link(settings, drill_id)}  (no schedule: started directly)"
        )
    else:
        if request.target is not None or request.approver_unavailable is not None:
            raise click.UsageError(
                f"{schedule_id(request.service)} defines the drill's scenario: leave out --target and "
                "--approver-unavailable, or `drflow drill delete` the schedule and schedule it again"
            )
        drill_id = await _trigger(client, request.service)
        click.echo(
            f"started drill {drill_id}  {workflow_link(settings, drill_id)}  "
            f"(triggered {schedule_id(request.service)})"
        )
    return await _show(client, drill_id, wait, watch)


async def _start_direct(client: Client, request: DrillRequest) -> str:
    """The id the schedule would give it (``drill-SERVICE-<UTC time>``), so reports and lists look alike."""
    now = datetime.now(UTC).replace(microsecond=0)
    drill_id = f"{schedule_id(request.service)}-{now:%Y-%m-%dT%H:%M:%SZ}"
    try:
        await client.start_workflow(
            "Drill", request, id=drill_id, task_queue=TASK_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=run_attributes(request.service, "drill", "failover"),
            static_summary=f"DR drill of {request.service}",
            static_details=f"Started with drflow drill run by {request.requested_by}",
        )  # fmt: skip
    except WorkflowAlreadyStartedError as err:
        raise _refusal(request.service, drill_id) from err
    return drill_id


async def _trigger(client: Client, service: str) -> str:
    """Trigger the schedule and return the drill it started; the overlap policy skips it while one runs."""
    handle = client.get_schedule_handle(schedule_id(service))
    before = await handle.describe()
    known = {a.action.workflow_id for a in before.info.recent_actions if hasattr(a.action, "workflow_id")}
    skipped = before.info.num_actions_skipped_overlap
    try:
        await handle.trigger()
    except RPCError as err:
        raise Failure(f"{schedule_id(service)}: {err.message}") from err
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TRIGGER_TIMEOUT_SECONDS
    while loop.time() < deadline:
        info = (await handle.describe()).info
        for action in info.running_actions:
            if isinstance(action, ScheduleActionExecutionStartWorkflow) and action.workflow_id not in known:
                return action.workflow_id
        if info.num_actions_skipped_overlap > skipped:
            running = await _running_drill(client, service)
            raise _refusal(service, running or "started by the schedule")
        await asyncio.sleep(0.2)
    raise Failure(
        f"triggered {schedule_id(service)} but no drill started within {TRIGGER_TIMEOUT_SECONDS:.0f}s: "
        "see `drflow drill list` and the schedule in the Web UI"
    )


TRIGGER_TIMEOUT_SECONDS = 15.0


async def _show(client: Client, drill_id: str, wait: bool, watch: float) -> int:
    """After the start: follow to the end (--wait), or watch a while for the first child that waits."""
    from workers.cli.failover import _follow

    if wait:
        return await _follow(client, drill_id, extra=_children_lines(client, drill_id))
    lines = _children_lines(client, drill_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + watch
    while True:
        found = await lines()
        for _, line in found:
            click.echo(line)
        if found or loop.time() >= deadline:
            break
        await asyncio.sleep(0.5)
    if not found:
        click.echo(f"no child waits for a person yet (watched {watch:.0f}s)")
    click.echo(f"follow it: drflow drill status {drill_id} --follow")
    return EXIT_OK


def _children_lines(client: Client, drill_id: str) -> Callable[[], Awaitable[list[tuple[str, str]]]]:
    """The drill's children that wait for a person, as keyed lines with the command that answers."""
    from workers.run_views import waiting_children, waiting_line

    async def lines() -> list[tuple[str, str]]:
        try:
            report = await client.get_workflow_handle(drill_id).query(
                "status", result_type=DrillReport, rpc_timeout=timedelta(seconds=10)
            )
            return [waiting_line(run) for run in await waiting_children(client, report)]
        except (RPCError, WorkflowQueryFailedError):  # not started yet, or ended meanwhile
            return []

    return lines


@drill.command("status")
@click.argument("drill")
@click.option("--follow", is_flag=True, help="keep printing until the drill ends")
@click.option("--json", "as_json", is_flag=True, help="the report as JSON")
@connection_options
def status(drill: str, follow: bool, as_json: bool, **options: Any) -> int:
    """A drill's report: DRILL is its workflow id, or a service (its running drill, else its latest).

    A running drill says so: what it does now, its children and their states, every child that waits for
    a person with the command that answers it; no restoration verdict or findings before they are checked.
    """
    return asyncio.run(_status(settings_from(options), drill, follow, as_json))


async def _status(settings: TemporalSettings, drill: str, follow: bool, as_json: bool) -> int:
    from workers.cli.failover import _follow

    client = await connect(settings)
    drill_id = await _resolve(client, drill)
    if follow:
        return await _follow(client, drill_id, extra=_children_lines(client, drill_id))
    handle = client.get_workflow_handle(drill_id)
    try:
        description = await handle.describe()
        if description.status == WorkflowExecutionStatus.RUNNING:
            report = await handle.query("status", result_type=DrillReport)
        else:
            report = await client.get_workflow_handle(drill_id, result_type=DrillReport).result()
    except RPCError as err:
        raise Failure(f"{drill_id}: {err.message}") from err
    except WorkflowQueryFailedError as err:  # no worker, or its first task has not run yet
        raise Failure(f"{drill_id} runs, but its status query failed ({err}): is a worker running?") from err
    except WorkflowFailureError as err:
        status_name = description.status.name.lower() if description.status else "?"
        raise Failure(f"{drill_id} ended as {status_name}: {err.cause or err}") from err
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return EXIT_OK
    click.echo(render_drill(report))
    if report.outcome == "running":
        waiting = [line for _, line in await _children_lines(client, drill_id)()]
        click.echo("\n## Waiting for a person")
        click.echo("\n".join(waiting) if waiting else "- nothing waits for a person now")
    return EXIT_OK


async def _resolve(client: Client, drill: str) -> str:
    """A workflow id of a drill as given; a service name: its running drill, else its most recent one."""
    try:
        description = await client.get_workflow_handle(drill).describe()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise Failure(f"{drill}: {err.message}") from err
    else:
        if description.workflow_type != "Drill":
            raise Failure(f"{drill} is a {description.workflow_type} run: see `drflow status {drill}`")
        return drill
    running = await _running_drill(client, drill)
    if running is not None:
        return running
    latest: tuple[datetime, str] | None = None
    async for execution in client.list_workflows(f"WorkflowType = 'Drill' AND DrflowService = '{drill}'"):
        if latest is None or execution.start_time > latest[0]:
            latest = (execution.start_time, execution.id)
    if latest is None:
        raise Failure(
            f"no drill {drill!r}, and no drill of a service {drill!r}: start one with `drflow drill run`"
        )
    return latest[1]


for _name, _help in (
    ("pause", "Pause the drill schedule of SERVICE."),
    ("unpause", "Resume the drill schedule of SERVICE."),
    ("delete", "Delete the drill schedule of SERVICE (past drills and reports stay)."),
):
    drill.add_command(_schedule_command(_name, _help))


@drill.command("report")
@click.argument("service")
@click.option("--chart", type=click.Path(dir_okay=False), help="write the RTO chart here (.svg)")
@connection_options
def report(service: str, chart: str | None, **options: Any) -> int:
    """The history of SERVICE's drills as a table, and a chart of achieved RTO against the objective."""
    return asyncio.run(_report(settings_from(options), service, chart))


async def _report(settings: TemporalSettings, service: str, chart: str | None) -> int:
    client = await connect(settings)
    reports: list[DrillReport] = []
    query = f"WorkflowType = 'Drill' AND DrflowService = '{service}' AND ExecutionStatus = 'Completed'"
    async for execution in client.list_workflows(query):
        result = await client.get_workflow_handle(
            execution.id, run_id=execution.run_id, result_type=DrillReport
        ).result()
        reports.append(result)
    reports.sort(key=lambda r: r.started_at)
    if not reports:
        click.echo(f"no completed drills of {service} yet")
        return EXIT_OK
    click.echo("| drill | date | outcome | RTO achieved / objective | RPO achieved / objective | findings |")
    click.echo("|---|---|---|---|---|---|")
    for r in reports:
        click.echo(
            f"| {r.drill_id} | {r.started_at:%Y-%m-%d} | {r.outcome} | {_seconds(r.rto_achieved_seconds)} / "
            f"{_seconds(r.rto_objective_seconds)} | {_seconds(r.rpo_achieved_seconds)} / "
            f"{_seconds(r.rpo_objective_seconds)} | {len(r.findings)} |"
        )
    if chart:
        await asyncio.to_thread(Path(chart).write_text, rto_chart_svg(service, reports))
        click.echo(f"chart: {chart}")
    return EXIT_OK


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def rto_chart_svg(service: str, reports: list[DrillReport]) -> str:
    """A small bar chart, no plotting library: achieved RTO per drill, the objective as a red line."""
    width, height, margin = 640, 320, 48
    objective = next((r.rto_objective_seconds for r in reports if r.rto_objective_seconds), 1.0) or 1.0
    values = [r.rto_achieved_seconds or 0.0 for r in reports]
    top = max([objective, *values]) * 1.15
    step = (width - 2 * margin) / max(len(reports), 1)

    def y(value: float) -> float:
        return height - margin - (value / top) * (height - 2 * margin)

    bars = []
    for index, (r, value) in enumerate(zip(reports, values, strict=True)):
        x = margin + index * step + step * 0.15
        colour = "#2f855a" if value <= objective else "#c05621"
        bars.append(
            f'<rect x="{x:.1f}" y="{y(value):.1f}" width="{step * 0.7:.1f}" '
            f'height="{height - margin - y(value):.1f}" '
            f'fill="{colour}"><title>{r.drill_id}: {value:.1f}s</title></rect>'
            f'<text x="{x + step * 0.35:.1f}" y="{height - margin + 16}" font-size="10" text-anchor="middle">'
            f"{r.started_at:%Y-%m-%d}</text>"
        )
    line = y(objective)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">'
        f'<text x="{margin}" y="24" font-size="14">Achieved RTO per drill: {service}</text>'
        f'<line x1="{margin}" y1="{height - margin}" x2="{width - margin}" y2="{height - margin}" '
        'stroke="#333"/>'
        + "".join(bars)
        + f'<line x1="{margin}" y1="{line:.1f}" x2="{width - margin}" y2="{line:.1f}" stroke="#e53e3e" '
        f'stroke-dasharray="6 4"/><text x="{width - margin}" y="{line - 6:.1f}" font-size="11" '
        f'text-anchor="end" fill="#e53e3e">objective {objective:.0f}s</text></svg>'
    )
