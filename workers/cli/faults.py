"""``drflow faults``: what the fault library recorded as injected, and undoing what a crashed process left."""

from __future__ import annotations

import os

import click

from activities.faults.state import FaultRegistry, cleanup_leftovers
from workers.cli.common import EXIT_ERROR, EXIT_OK

STATE_ENV = "DRFLOW_FAULTS_STATE"
DEFAULT_STATE = ".drflow/faults"

state_option = click.option(
    "--state-dir",
    default=lambda: os.environ.get(STATE_ENV, DEFAULT_STATE),
    show_default=f"env {STATE_ENV}; {DEFAULT_STATE}",
    type=click.Path(file_okay=False),
    help="where the fault library keeps its state file",
)


@click.group()
def faults() -> None:
    """Faults injected by drflow's fault library (reliability tests, drills)."""


@faults.command("list")
@state_option
def list_faults(state_dir: str) -> int:
    """Every fault recorded as injected, with the process that injected it."""
    records = FaultRegistry(state_dir).records()
    if not records:
        click.echo("no faults recorded")
    for record in records:
        click.echo(f"{record.id}  pid {record.owner_pid}  {record.kind}: {record.description}")
    return EXIT_OK


@faults.command("cleanup")
@state_option
@click.option("--all", "include_live", is_flag=True, help="also the faults of processes still running")
def cleanup(state_dir: str, include_live: bool) -> int:
    """Undo the faults that processes which are gone left behind; exit 1 if one could not be undone."""
    lines = cleanup_leftovers(state_dir, include_live=include_live)
    if not lines:
        click.echo("nothing to clean up")
    for line in lines:
        click.echo(line)
    return EXIT_ERROR if any(line.startswith("NOT undone") for line in lines) else EXIT_OK
