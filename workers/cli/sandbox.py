"""``drflow sandbox up|down|status``: the local two-region world that ``runbooks/sandbox.yaml`` describes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from workers.sandbox.host import SandboxError
from workers.sandbox.world import DEFAULT_STATE_DIR, Sandbox, SandboxPorts, SandboxStatus, Topology

F = TypeVar("F", bound=Callable[..., Any])
STATE_DIR_ENV = "DRFLOW_SANDBOX_DIR"


class SandboxFailure(click.ClickException):
    """One clear line, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"drflow sandbox: {self.format_message()}", err=True)


def state_dir_option(func: F) -> F:
    return click.option(
        "--state-dir",
        default=str(DEFAULT_STATE_DIR),
        show_default=True,
        envvar=STATE_DIR_ENV,
        type=click.Path(file_okay=False, path_type=Path),
        help=f"where the sandbox keeps its servers' data, logs and secrets [env {STATE_DIR_ENV}]",
    )(func)


@click.group()
def sandbox() -> None:
    """Real BIND, PostgreSQL primary + standby and one app per region, on loopback addresses."""


@sandbox.command("up")
@click.option("--reset", is_flag=True, help="stop everything, delete the state and start the initial world")
@state_dir_option
@click.option("--dns-port", type=int, help="BIND primary [15353]")
@click.option("--dns-secondary-port", type=int, help="BIND secondary [15354]")
@click.option("--postgres-port", type=int, help="PostgreSQL region-a, the first primary [15432]")
@click.option("--postgres-standby-port", type=int, help="PostgreSQL region-b, the first standby [15433]")
@click.option("--app-port", type=int, help="the apps, on 127.0.1.1 and 127.0.2.1 [18080]")
@click.option(
    "--topology",
    type=click.Choice(["local", "remote"]),
    help="local: drflow manages the data directories; remote: TCP only, servers as another OS user, "
    "re-sync through infra/postgres/hooks (needs root) [the one this world was built with; local]",
)
def up(
    reset: bool,
    state_dir: Path,
    topology: Topology | None,
    dns_port: int | None,
    dns_secondary_port: int | None,
    postgres_port: int | None,
    postgres_standby_port: int | None,
    app_port: int | None,
) -> int:
    """Start whatever is not running (idempotent). Ports default to the ones this world last used."""
    chosen = {
        "dns_primary": dns_port,
        "dns_secondary": dns_secondary_port,
        "postgres_primary": postgres_port,
        "postgres_standby": postgres_standby_port,
        "app": app_port,
    }
    ports: SandboxPorts | None = None
    if any(value is not None for value in chosen.values()):
        overrides = {k: v for k, v in chosen.items() if v is not None}
        try:
            ports = dataclasses.replace(Sandbox(state_dir).ports, **overrides)
        except ValueError as err:
            raise SandboxFailure(str(err)) from err
    world = Sandbox(state_dir, ports, topology)
    if reset:
        click.echo(f"resetting the sandbox in {world.state_dir} ...")
    try:
        status = world.up(reset=reset)
    except SandboxError as err:
        raise SandboxFailure(str(err)) from err
    _echo_status(status)
    if world.topology == "remote":
        written = world.write_runbook(world.state_dir / "runbooks")
        click.echo(
            f"runbook: {written} (remote topology: no data_directory, re-sync by hook); serve it with "
            f"`drflow --runbooks {written.parent} dev --sandbox`"
        )
    else:
        click.echo("runbook: runbooks/sandbox.yaml (its secret paths match the default --state-dir)")
    return 0


@sandbox.command("down")
@state_dir_option
def down(state_dir: Path) -> int:
    """Stop every sandbox process; the data stays for the next `up` (use `up --reset` for a fresh world)."""
    try:
        status = Sandbox(state_dir).down()
    except SandboxError as err:
        raise SandboxFailure(str(err)) from err
    _echo_status(status)
    return 0


@sandbox.command("status")
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON")
def status(state_dir: Path, as_json: bool) -> int:
    """Each component's address, state and (PostgreSQL) role."""
    current = Sandbox(state_dir).status()
    if as_json:
        click.echo(current.model_dump_json(indent=2))
    else:
        _echo_status(current)
    return 0


def _echo_status(status: SandboxStatus) -> None:
    click.echo(f"sandbox: {status.state_dir}")
    for c in status.components:
        change = f"[{c.change}]" if c.change else ""
        role = c.role or ""
        pid = f"pid {c.pid}" if c.pid else ""
        click.echo(f"  {c.name:<20} {c.address:<22} {c.state:<8} {role:<10} {pid:<11} {change}".rstrip())
        if c.detail:
            click.echo(f"      {c.detail}")
