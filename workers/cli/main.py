"""The ``drflow`` root group and the console script's entry point.

It only assembles: each command family lives in its own module, and nothing imports this one. Every
process that talked to Temporal leaves through ``os._exit`` after flushing, because the SDK's runtime can
abort a short-lived process at interpreter exit.
"""

from __future__ import annotations

import os
import sys

import click

from runbooks.loader import runbooks_dir
from workers.cli.audit import audit
from workers.cli.check import check
from workers.cli.codec import codec_server
from workers.cli.common import EXIT_OK
from workers.cli.dev import dev
from workers.cli.drill import drill
from workers.cli.failover import accept_data_loss, approve, decide, failback, failover, reject, status
from workers.cli.faults import faults
from workers.cli.gateway import gateway
from workers.cli.people import people
from workers.cli.readiness import readiness
from workers.cli.runbook import runbook
from workers.cli.sandbox import sandbox
from workers.cli.worker import worker


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


for command in (
    runbook,
    people,
    check,
    readiness,
    failover,
    failback,
    approve,
    reject,
    accept_data_loss,
    decide,
    status,
    worker,
    dev,
    sandbox,
    gateway,
    codec_server,
    audit,
    drill,
    faults,
):
    cli.add_command(command)


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
