"""``drflow readiness``: the Readiness workflow on Temporal Schedules, so a plan broken since last quarter is
found by the schedule, not by the failover that needed it.

One schedule per service (``readiness-<service>``), every ``--every`` (default 15 minutes). The runs are
the same ``Readiness`` workflow ``drflow check`` starts; their verdict is the run's ``DrflowStep``, so
``list`` and ``history`` read it from visibility without fetching a result. Overlap SKIP (a check still
running when the next is due is not doubled), a catch-up window of one interval (a check missed during an
outage is not replayed hours later: it would describe the past), jitter (500 services at 15 minutes do not
all start on the same second), and priority 4 of Temporal's 1-5 (a real failover, default 3, or an
evacuation is dispatched first on a shared task queue).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowFailureError,
)
from temporalio.common import Priority
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities.readiness_digest import DIGEST_SCHEDULE, digest_text
from activities.search_attributes import STEP_ATTR, run_attributes
from runbooks.durations import format_duration, parse_duration
from runbooks.loader import load_directory
from workers.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    Failure,
    connect,
    connection_options,
    services_to_check,
    settings_from,
    workflow_link,
)
from workers.connection import TemporalSettings
from workflows.common import TASK_QUEUE
from workflows.readiness_digest import DigestInput, ReadinessDigestWorkflow
from workflows.readiness_report import ReadinessRequest

SCHEDULE_PREFIX = "readiness-"
DEFAULT_EVERY = "15m"
MINIMUM_EVERY = timedelta(minutes=1)  # below this a check (health, DNS, lag) would overlap its own next run
MAXIMUM_JITTER = timedelta(minutes=2)
PRIORITY = Priority(priority_key=4)  # Temporal: 1 highest, 3 default; readiness yields to real runs
STUCK_AFTER = timedelta(minutes=5)  # a check not done by then (no worker, say) ends timed out: that is news
DONE = {"pause": "paused", "unpause": "unpaused", "delete": "deleted"}


def schedule_id(service: str) -> str:
    return f"{SCHEDULE_PREFIX}{service}"


def readiness_schedule(service: str, every: timedelta) -> Schedule:
    """The whole schedule of one service: what ``schedule`` creates and, when it exists, replaces."""
    action = ScheduleActionStartWorkflow(
        "Readiness",
        ReadinessRequest(service=service, alert=True),
        id=f"readiness-{service}",  # the server appends the scheduled time: readiness-web-2026-12-02T...
        task_queue=TASK_QUEUE,
        typed_search_attributes=run_attributes(service, "readiness", "checking"),
        static_summary=f"Scheduled readiness check of {service}",
        execution_timeout=max(every, STUCK_AFTER),  # history shows it as timed out; the next one runs
        priority=PRIORITY,
    )
    return Schedule(
        action=action,
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=every)], jitter=min(every / 5, MAXIMUM_JITTER)
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=every),
        state=ScheduleState(note=f"readiness of {service} every {format_duration(every)}"),
    )


def parse_every(text: str) -> timedelta:
    try:
        every = parse_duration(text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--every") from err
    if every < MINIMUM_EVERY:
        raise click.BadParameter(
            f"{text} is below the minimum of {format_duration(MINIMUM_EVERY)}: a check probes every health "
            "endpoint and nameserver and measures replication, and would overlap its own next run",
            param_hint="--every",
        )
    return every


@click.group()
def readiness() -> None:
    """Scheduled readiness checks: schedule, list, history, pause, unpause, delete."""


def _services(directory: Path, service: str | None, all_services: bool) -> list[str]:
    """The services named, each checked against the runbooks before any schedule changes."""
    if bool(service) == all_services:
        raise click.UsageError("name one SERVICE or pass --all")
    if service is not None:
        return [services_to_check(directory, service, people=False)[0].runbook.service]
    loaded, problems = load_directory(directory)
    if not loaded:
        services_to_check(directory, None, people=False)  # raises the Failure naming what is wrong
    for problem in problems:
        click.echo(f"drflow: not scheduled, the runbook does not load: {problem}", err=True)
    return sorted(item.runbook.service for item in loaded)


@readiness.command("schedule")
@click.argument("service", required=False)
@click.option("--all", "all_services", is_flag=True, help="every runbook in the runbooks directory")
@click.option(
    "--every", "every_text", default=DEFAULT_EVERY, show_default=True, help="interval, e.g. 15m, 1h"
)
@connection_options
@click.pass_obj
def schedule(
    directory: Path, /, service: str | None, all_services: bool, every_text: str, **options: Any
) -> int:
    """Check SERVICE (or --all) every --every; an existing schedule takes the new interval."""
    every = parse_every(every_text)
    services = _services(directory, service, all_services)
    return asyncio.run(_schedule(settings_from(options), services, every))


async def _schedule(settings: TemporalSettings, services: list[str], every: timedelta) -> int:
    client = await connect(settings)
    for service in services:
        wanted = readiness_schedule(service, every)
        handle, verb = await create_or_replace(client, schedule_id(service), wanted)
        description = await handle.describe()
        upcoming = description.info.next_action_times[:1]
        first = f"; next {upcoming[0]:%Y-%m-%d %H:%M:%S} UTC" if upcoming else ""
        click.echo(f"{verb} {handle.id}: every {format_duration(every)}{first}")
    return EXIT_OK


async def create_or_replace(client: Client, identifier: str, wanted: Schedule) -> tuple[ScheduleHandle, str]:
    """Create the schedule, or give an existing one everything of ``wanted`` except its pause."""
    try:
        return await client.create_schedule(identifier, wanted), "scheduled"
    except ScheduleAlreadyRunningError:
        handle = client.get_schedule_handle(identifier)

        def replace(update: ScheduleUpdateInput) -> ScheduleUpdate:
            wanted.state.paused = update.description.schedule.state.paused  # keep a pause
            return ScheduleUpdate(schedule=wanted)

        await handle.update(replace)
        return handle, "updated"


@dataclass(frozen=True)
class LastCheck:
    verdict: str
    at: datetime | None


async def _last_checks(client: Client, service: str, limit: int) -> list[LastCheck]:
    """The service's readiness runs, newest first, with the verdict their ``DrflowStep`` holds."""
    query = f"WorkflowType = 'Readiness' AND DrflowService = '{service}'"
    found: list[LastCheck] = []
    async for execution in client.list_workflows(query, limit=limit):
        status = execution.status.name.lower() if execution.status else "unknown"
        step = execution.typed_search_attributes.get(STEP_ATTR)
        verdict = step if status == "completed" and step else status
        found.append(LastCheck(verdict=verdict, at=execution.close_time or execution.start_time))
    return found


@readiness.command("list")
@connection_options
def list_schedules(**options: Any) -> int:
    """Each readiness schedule: active or paused, interval, next check, last verdict."""
    return asyncio.run(_list(settings_from(options)))


async def _list(settings: TemporalSettings) -> int:
    client = await connect(settings)
    rows: list[str] = []
    async for entry in await client.list_schedules():
        if not entry.id.startswith(SCHEDULE_PREFIX):
            continue
        service = entry.id.removeprefix(SCHEDULE_PREFIX)
        description = await client.get_schedule_handle(entry.id).describe()
        state = "paused" if description.schedule.state.paused else "active"
        intervals = description.schedule.spec.intervals
        every = format_duration(intervals[0].every) if intervals else "?"
        upcoming = description.info.next_action_times[:1]
        next_at = f"{upcoming[0]:%Y-%m-%d %H:%M:%S} UTC" if upcoming and state == "active" else "-"
        last = await _last_checks(client, service, 1)
        verdict = (
            f"{last[0].verdict} at {last[0].at:%Y-%m-%d %H:%M:%S} UTC" if last and last[0].at else "never ran"
        )
        rows.append(f"{service:<24} {state:<7} every {every:<6} next {next_at:<24} last {verdict}")
    if not rows:
        click.echo("no readiness schedules: create them with `drflow readiness schedule --all`")
        return EXIT_OK
    for row in sorted(rows):
        click.echo(row)
    return EXIT_OK


@readiness.command("history")
@click.argument("service")
@click.option("--limit", default=20, show_default=True, help="how many checks, newest first")
@connection_options
def history(service: str, limit: int, **options: Any) -> int:
    """The last verdicts of SERVICE's readiness checks, scheduled or by hand, newest first."""
    return asyncio.run(_history(settings_from(options), service, limit))


async def _history(settings: TemporalSettings, service: str, limit: int) -> int:
    client = await connect(settings)
    checks = await _last_checks(client, service, limit)
    if not checks:
        click.echo(f"no readiness checks of {service} yet")
        return EXIT_OK
    for check in checks:
        when = f"{check.at:%Y-%m-%d %H:%M:%S} UTC" if check.at else "-"
        click.echo(f"{when}  {check.verdict}")
    return EXIT_OK


def _schedule_command(name: str, help_text: str) -> click.Command:
    @click.command(name, help=help_text)
    @click.argument("service", required=False)
    @click.option("--all", "all_services", is_flag=True, help="every readiness schedule")
    @connection_options
    def command(service: str | None, all_services: bool, **options: Any) -> int:
        if bool(service) == all_services:
            raise click.UsageError("name one SERVICE or pass --all")
        return asyncio.run(_act(settings_from(options), name, service))

    return command


async def _act(settings: TemporalSettings, action: str, service: str | None) -> int:
    client = await connect(settings)
    if service is not None:
        ids = [schedule_id(service)]
    else:
        ids = sorted([e.id async for e in await client.list_schedules() if e.id.startswith(SCHEDULE_PREFIX)])
    for identifier in ids:
        handle = client.get_schedule_handle(identifier)
        try:
            if action == "pause":
                await handle.pause(note="paused with drflow readiness pause")
            elif action == "unpause":
                await handle.unpause(note="unpaused with drflow readiness unpause")
            else:
                await handle.delete()
        except RPCError as err:
            raise Failure(f"{identifier}: {err.message}") from err
        click.echo(f"{identifier}: {DONE[action]}")
    if not ids:
        click.echo("no readiness schedules")
    return EXIT_OK


for _name, _help in (
    ("pause", "Pause the readiness schedule of SERVICE (or --all)."),
    ("unpause", "Resume the readiness schedule of SERVICE (or --all)."),
    ("delete", "Delete the readiness schedule of SERVICE (or --all); past checks stay."),
):
    readiness.add_command(_schedule_command(_name, _help))


# ------------------------------------------------------------------------------------------------ digest
DIGEST_AT = "09:00"
DIGEST_TIMEOUT = timedelta(minutes=15)


def parse_at(text: str) -> tuple[int, int]:
    hour, _, minute = text.partition(":")
    try:
        at = (int(hour), int(minute or "0"))
    except ValueError:
        at = (-1, -1)
    if not (0 <= at[0] <= 23 and 0 <= at[1] <= 59):
        raise click.BadParameter(f"{text!r} is not a time of day HH:MM", param_hint="--at")
    return at


def digest_schedule(request: DigestInput, at: tuple[int, int], time_zone: str) -> Schedule:
    """Once a day at ``at`` in ``time_zone``: what ``digest schedule`` creates, or replaces."""
    action = ScheduleActionStartWorkflow(
        "ReadinessDigest",
        request,
        id=DIGEST_SCHEDULE,  # the server appends the scheduled time
        task_queue=TASK_QUEUE,
        static_summary="Daily readiness digest of every service",
        execution_timeout=DIGEST_TIMEOUT,
        priority=PRIORITY,
    )
    calendar = ScheduleCalendarSpec(
        second=(ScheduleRange(0),),
        minute=(ScheduleRange(at[1]),),
        hour=(ScheduleRange(at[0]),),
        comment=f"daily at {at[0]:02d}:{at[1]:02d} {time_zone}",
    )
    return Schedule(
        action=action,
        spec=ScheduleSpec(calendars=[calendar], time_zone_name=time_zone),
        # a digest missed during an outage is sent within the hour, not the next morning, and never twice
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(hours=1)),
        state=ScheduleState(note=f"readiness digest daily at {at[0]:02d}:{at[1]:02d} {time_zone}"),
    )


def _digest_input(channel: str | None, webhook: str | None, window_text: str) -> DigestInput:
    try:
        window = parse_duration(window_text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--window") from err
    if window <= timedelta(0):
        raise click.BadParameter("the window must be longer than 0", param_hint="--window")
    if webhook is not None and not webhook.startswith(("env:", "file:")):
        raise click.BadParameter(
            "a webhook URL often carries a token: give a reference, env:NAME or file:/path, never the URL",
            param_hint="--webhook",
        )
    return DigestInput(slack_channel=channel, webhook=webhook, window=window)


@readiness.group("digest")
def digest() -> None:
    """The daily digest of every service's readiness: schedule, now, delete."""


@digest.command("schedule")
@click.option("--channel", help="the Slack channel id to post to, e.g. C0123456789")
@click.option("--webhook", help="env:NAME or file:/path holding a webhook URL to post the JSON digest to")
@click.option("--at", "at_text", default=DIGEST_AT, show_default=True, help="time of day, HH:MM")
@click.option(
    "--timezone", "time_zone", default="UTC", show_default=True, help="IANA name, e.g. Europe/Berlin"
)
@click.option("--window", "window_text", default="24h", show_default=True, help="the checks counted")
@connection_options
def digest_schedule_command(
    channel: str | None, webhook: str | None, at_text: str, time_zone: str, window_text: str, **options: Any
) -> int:
    """Post the fleet's readiness every day at --at (the services are the worker's runbooks)."""
    if channel is None and webhook is None:
        raise click.UsageError("give --channel, --webhook or both: a digest nobody receives is no digest")
    request = _digest_input(channel, webhook, window_text)
    at = parse_at(at_text)
    try:
        ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise click.BadParameter(f"{time_zone!r} is not an IANA time zone", param_hint="--timezone") from err
    return asyncio.run(_schedule_digest(settings_from(options), digest_schedule(request, at, time_zone)))


async def _schedule_digest(settings: TemporalSettings, wanted: Schedule) -> int:
    client = await connect(settings)
    handle, verb = await create_or_replace(client, DIGEST_SCHEDULE, wanted)
    description = await handle.describe()
    upcoming = description.info.next_action_times[:1]
    first = f"; next {upcoming[0]:%Y-%m-%d %H:%M} UTC" if upcoming else ""
    click.echo(f"{verb} {DIGEST_SCHEDULE}: {wanted.state.note}{first}")
    return EXIT_OK


@digest.command("now")
@click.option("--channel", help="also post it to this Slack channel id")
@click.option("--webhook", help="also post it to the webhook URL this env:/file: reference holds")
@click.option("--window", "window_text", default="24h", show_default=True, help="the checks counted")
@connection_options
def digest_now(channel: str | None, webhook: str | None, window_text: str, **options: Any) -> int:
    """Build the digest now and print it (posted too, with --channel or --webhook)."""
    request = _digest_input(channel, webhook, window_text)
    return asyncio.run(_digest_now(settings_from(options), request))


async def _digest_now(settings: TemporalSettings, request: DigestInput) -> int:
    client = await connect(settings)
    handle = await client.start_workflow(
        ReadinessDigestWorkflow.run,
        request,
        id=f"{DIGEST_SCHEDULE}-now-{uuid.uuid4().hex[:8]}",
        task_queue=TASK_QUEUE,
        execution_timeout=DIGEST_TIMEOUT,
        static_summary="Readiness digest, by hand",
    )
    try:
        outcome = await handle.result()
    except WorkflowFailureError as err:
        cause: BaseException = err.cause
        while cause.__cause__ is not None and not isinstance(cause, ApplicationError):
            cause = cause.__cause__
        raise Failure(f"the digest failed: {getattr(cause, 'message', cause)}") from err
    click.echo(digest_text(outcome, workflow_link(settings, handle.id)))
    for failed in outcome.failed:
        click.echo(f"drflow: not posted through {failed}", err=True)
    return EXIT_ERROR if outcome.failed else EXIT_OK


@digest.command("delete")
@connection_options
def digest_delete(**options: Any) -> int:
    """Stop the daily digest."""
    return asyncio.run(_delete_digest(settings_from(options)))


async def _delete_digest(settings: TemporalSettings) -> int:
    client = await connect(settings)
    try:
        await client.get_schedule_handle(DIGEST_SCHEDULE).delete()
    except RPCError as err:
        raise Failure(f"{DIGEST_SCHEDULE}: {err.message}") from err
    click.echo(f"{DIGEST_SCHEDULE}: deleted")
    return EXIT_OK
