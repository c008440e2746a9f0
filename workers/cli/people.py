"""``drflow people validate|schema|allowed-signers``: the people file checked offline, and its JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import click

from runbooks.people import PEOPLE_FILE, PeopleFileError, load_people_file, people_schema
from workers.cli.common import EXIT_ERROR, EXIT_OK


@click.group()
def people() -> None:
    """Validate the people file (who may approve, with which keys) and print its JSON Schema."""


@people.command("validate")
@click.argument("path", required=False, type=click.Path())
@click.pass_obj
def people_validate(runbooks: Path, path: str | None) -> int:
    """Check a people file (default: people.yaml in the runbooks directory): one line per problem."""
    file = Path(path) if path else runbooks / PEOPLE_FILE
    try:
        loaded = load_people_file(file)
    except PeopleFileError as err:
        for problem in err.problems:
            click.echo(str(problem), err=True)
        return EXIT_ERROR
    keys = sum(len(p.keys) for p in loaded.people)
    click.echo(
        f"{file}: ok: {len(loaded.people)} people, {keys} keys, {len(loaded.groups())} groups, "
        f"{len(loaded.gateways)} gateways"
    )
    return EXIT_OK


@people.command("allowed-signers")
@click.argument("path", required=False, type=click.Path())
@click.pass_obj
def people_allowed_signers(runbooks: Path, path: str | None) -> int:
    """Print an allowed_signers file, so `ssh-keygen -Y verify` can check a decision without drflow."""
    try:
        loaded = load_people_file(Path(path) if path else runbooks / PEOPLE_FILE)
    except PeopleFileError as err:
        for problem in err.problems:
            click.echo(str(problem), err=True)
        return EXIT_ERROR
    click.echo(loaded.allowed_signers(), nl=False)
    return EXIT_OK


@people.command("schema")
def people_schema_command() -> int:
    """Print the people file JSON Schema (docs/people.schema.json is this output)."""
    click.echo(schema_text())
    return EXIT_OK


def schema_text() -> str:
    return json.dumps(people_schema(), indent=2, sort_keys=True)
