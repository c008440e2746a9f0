"""``drflow runbook validate|schema``: runbook files checked offline, and their JSON Schema."""

from __future__ import annotations

import json

import click

from runbooks.durations import format_duration
from runbooks.loader import Problem, RunbookError, load_runbook_file
from runbooks.model import Runbook
from workers.cli.common import EXIT_ERROR, EXIT_OK


@click.group()
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
