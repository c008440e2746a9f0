"""Failback: re-sync a former primary as a streaming standby of the current one (pg_rewind)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field
from temporalio.exceptions import ApplicationError

from activities.database.postgres.connection import (
    CONNECT_TIMEOUT,
    PostgresTarget,
    connect,
    describe_error,
    hook_values,
    report_progress,
    time_left,
    where,
)
from activities.database.postgres.pg_ctl import (
    PostgresCommandError,
    PostgresNotInstalledError,
    pg_binary,
    pg_ctl_start,
    pg_ctl_status,
    pg_ctl_stop,
    run_as_owner,
    slot_name,
)
from activities.database.results import PrepareStandbyResult
from activities.errors import ErrorType
from activities.hooks import HookRun, require_success, run_hook
from activities.secrets import resolve_secret
from runbooks.model import CommandHook, StrictModel

# The standby's credentials for streaming, beside (never inside) its data directory: a rewind or a base backup
# replaces what is inside with the source's files.
REPLICATION_PASSFILE = "replication.pgpass"
_AUTO_CONF = "postgresql.auto.conf"
_NO_REWIND = "no rewind required"
# How long a node already configured to follow the source may take to (re)connect before it is rewound anyway.
_FOLLOW_GRACE = 10.0


class PrepareStandbyRequest(StrictModel):
    target: PostgresTarget = Field(description="the node to re-sync: the former primary")
    source: PostgresTarget = Field(description="the current primary it will stream from")
    timeout_seconds: float = 300
    hook: CommandHook | None = Field(
        default=None, description="the runbook's re-sync hook, for a node without data_directory"
    )


def prepare_standby(req: PrepareStandbyRequest) -> PrepareStandbyResult:
    """Make a former primary a streaming standby of the current primary: stop, pg_rewind, reconfigure, start.

    For nodes drflow manages on this host (``data_directory``). After a rewind ``postgresql.auto.conf`` is the
    source's copy, so ``primary_conninfo`` (application_name = this node's slot name) and
    ``primary_slot_name`` are rewritten for this node; the slot is created on the source first, so the WAL
    the node needs after the rewind is kept. The password reaches pg_rewind in its environment only, and the
    standby reads it from a passfile beside its data directory. Idempotent: a node already streaming from
    the source is left alone (already_standby).
    """
    started = time.monotonic()
    deadline = started + req.timeout_seconds
    target, source = req.target, req.source
    actions: list[str] = []
    if target.region == source.region:
        raise ApplicationError(
            f"cannot re-sync {target.region} from itself",
            type=ErrorType.STANDBY_RESYNC_FAILED,
            non_retryable=True,
        )
    if target.node.data_directory is None:
        return _prepare_remote(req, deadline, actions)
    data_dir = Path(target.node.data_directory).absolute()
    slot = slot_name(target.region)

    def result(*, already: bool, rewound: bool, diverged: bool | None) -> PrepareStandbyResult:
        return PrepareStandbyResult(
            region=target.region,
            source_region=source.region,
            already_standby=already,
            rewound=rewound,
            diverged=diverged,
            streaming=True,
            actions=actions,
        )

    try:
        _require_primary(source)
        if pg_ctl_status(data_dir) == "running":
            following = _follows(target, source)
            if following == "streaming":
                actions.append(f"{target.region} is already streaming from {source.region}")
                return result(already=True, rewound=False, diverged=None)
            if following == "configured":
                grace = min(_FOLLOW_GRACE, time_left(deadline) / 3)
                actions.append(
                    f"{target.region} follows {source.region} but is not streaming: waiting {grace:.0f}s"
                )
                if _wait_streaming(target, source, slot, time.monotonic() + grace) is None:
                    actions.append(f"{target.region} is now streaming from {source.region}")
                    return result(already=True, rewound=False, diverged=None)
                actions.append(f"{target.region} did not start streaming: rewinding it")
            actions.append(f"fast shutdown of {target.region} (pg_ctl stop -m fast)")
            pg_ctl_stop(data_dir, "fast", max(1.0, time_left(deadline)))
        else:
            actions.append(f"{target.region} is stopped ({data_dir})")
        _ensure_slot(source, slot, actions)
        diverged = _rewind(target, source, data_dir, deadline, actions)
        _configure_standby(target, source, data_dir, slot, actions)
        pg_ctl_start(data_dir, target.node.port, timeout=max(1.0, time_left(deadline)))
        actions.append(f"started {target.region} as a standby (pg_ctl start on port {target.node.port})")
    except PostgresNotInstalledError as err:
        raise ApplicationError(str(err), type=ErrorType.DATABASE_TOOLS_MISSING, non_retryable=True) from None
    except PostgresCommandError as err:
        raise ApplicationError(
            f"re-syncing {target.region} from {source.region} failed: {err}",
            type=ErrorType.STANDBY_RESYNC_FAILED,
        ) from None
    except psycopg.Error as err:
        raise ApplicationError(
            f"re-syncing {target.region} from {source.region} failed: {describe_error(err)}",
            type=ErrorType.DATABASE_UNREACHABLE,
        ) from None
    problem = _wait_streaming(target, source, slot, deadline)
    if problem is not None:
        raise ApplicationError(
            f"{target.region} was re-synced from {source.region} but does not stream after "
            f"{req.timeout_seconds:g}s ({problem}); its log: {data_dir.parent / 'postgres.log'}",
            type=ErrorType.STANDBY_RESYNC_FAILED,
        )
    actions.append(f"{target.region} streams from {source.region} (slot {slot})")
    return result(already=False, rewound=True, diverged=diverged)


def _prepare_remote(req: PrepareStandbyRequest, deadline: float, actions: list[str]) -> PrepareStandbyResult:
    """A node reached only over the network: the runbook's hook re-syncs it, drflow proves it over SQL.

    What drflow can do over SQL it does itself, so the hook has less to get right: the slot on the source
    (WAL kept from now on) and a checkpoint there (pg_rewind compares timelines in pg_control). Afterwards
    the node must be in recovery, of the same cluster as the source (system identifier), streaming from it,
    and listed by the source under its slot name: a hook that exits 0 without doing the work is caught.
    """
    target, source = req.target, req.source
    slot = slot_name(target.region)

    def result(*, already: bool, hook: HookRun | None) -> PrepareStandbyResult:
        return PrepareStandbyResult(
            region=target.region,
            source_region=source.region,
            already_standby=already,
            rewound=hook is not None,
            diverged=None,
            streaming=True,
            actions=actions,
            hook=hook,
        )

    try:
        _require_primary(source)
        if _follows(target, source) == "streaming" and _same_cluster(target, source):
            actions.append(f"{target.region} is already streaming from {source.region}")
            return result(already=True, hook=None)
        if req.hook is None:
            raise ApplicationError(
                f"{target.region} ({where(target.node)}) has no data_directory and the runbook declares no "
                f"database.hooks.resync: rebuild it as a standby of {source.region} with your own tooling "
                "(pg_rewind or pg_basebackup), or declare the hook",
                type=ErrorType.STANDBY_RESYNC_FAILED,
                non_retryable=True,
            )
        _ensure_slot(source, slot, actions)
        with connect(source.node) as conn:
            conn.execute("CHECKPOINT")
        actions.append(f"checkpoint on {source.region}, so its control file shows its current timeline")
    except psycopg.Error as err:
        raise ApplicationError(
            f"re-syncing {target.region} from {source.region} failed: {describe_error(err)}",
            type=ErrorType.DATABASE_UNREACHABLE,
        ) from None
    values = hook_values(target, source)
    run = run_hook(req.hook, values)
    actions.append(f"re-sync hook: {run.describe()}")
    require_success(run, f"re-syncing {target.region} from {source.region}", ErrorType.STANDBY_RESYNC_FAILED)
    problem = _wait_streaming(target, source, slot, deadline)
    if problem is None and not _same_cluster(target, source):
        problem = f"{target.region} streams but is not a copy of {source.region} (system identifiers differ)"
    if problem is not None:
        raise ApplicationError(
            f"the re-sync hook exited 0 but {target.region} does not stream from {source.region} after "
            f"{req.timeout_seconds:g}s ({problem}): nothing is claimed as done",
            run,
            type=ErrorType.STANDBY_RESYNC_FAILED,
            non_retryable=True,
        )
    actions.append(
        f"verified over SQL: {target.region} is in recovery, streams from {source.region} (slot {slot}), "
        "same system identifier"
    )
    return result(already=False, hook=run)


def _same_cluster(target: PostgresTarget, source: PostgresTarget) -> bool:
    """A standby can only replay WAL of the cluster it was copied from: their system identifiers match."""
    identifiers = []
    for node in (target.node, source.node):
        try:
            with connect(node, timeout=CONNECT_TIMEOUT) as conn:
                row = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
        except psycopg.Error:
            return False
        identifiers.append(row[0] if row else None)
    return identifiers[0] is not None and identifiers[0] == identifiers[1]


def _require_primary(source: PostgresTarget) -> None:
    try:
        with connect(source.node) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error as err:
        raise ApplicationError(
            f"cannot reach {source.region} ({where(source.node)}), the primary to re-sync from: "
            + describe_error(err),
            type=ErrorType.DATABASE_UNREACHABLE,
        ) from None
    if row is None or row[0]:
        raise ApplicationError(
            f"{source.region} is in recovery (a standby): re-sync only from the current primary",
            type=ErrorType.STANDBY_RESYNC_FAILED,
            non_retryable=True,
        )


def _follows(target: PostgresTarget, source: PostgresTarget) -> Literal["streaming", "configured", "no"]:
    """Whether a running node is a standby of ``source``: streaming now, or configured to (reconnecting)."""
    try:
        with connect(target.node) as conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery(), r.status, r.sender_host, r.sender_port "
                "FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true"
            ).fetchone()
            if row is None or not row[0]:
                return "no"
            if row[1] == "streaming" and (row[2], row[3]) == (source.node.host, source.node.port):
                return "streaming"
            # Reading primary_conninfo needs more privileges than the receiver's status: asked apart.
            setting = conn.execute("SELECT current_setting('primary_conninfo')").fetchone()
        configured = conninfo_to_dict(setting[0] if setting and setting[0] else "")
    except psycopg.Error:  # conninfo_to_dict's ProgrammingError included
        return "no"
    same = configured.get("host") == source.node.host and str(configured.get("port")) == str(source.node.port)
    return "configured" if same else "no"


def _wait_streaming(target: PostgresTarget, source: PostgresTarget, slot: str, deadline: float) -> str | None:
    """Until the target's WAL receiver streams from the source and the source lists it; None, or why not."""
    problem = "not checked yet"
    while True:
        try:
            with connect(target.node, timeout=CONNECT_TIMEOUT) as conn:
                row = conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
            receiver = row[0] if row else None
            with connect(source.node, timeout=CONNECT_TIMEOUT) as conn:
                row = conn.execute(
                    "SELECT state FROM pg_stat_replication WHERE application_name = %s", (slot,)
                ).fetchone()
            sender = row[0] if row else None
            if receiver == "streaming" and sender == "streaming":
                return None
            problem = f"WAL receiver: {receiver or 'none'}, on {source.region}: {sender or 'not connected'}"
        except psycopg.Error as err:
            problem = describe_error(err)
        report_progress(problem)
        if time.monotonic() >= deadline:
            return problem
        time.sleep(min(0.2, time_left(deadline)))


def _ensure_slot(source: PostgresTarget, slot: str, actions: list[str]) -> None:
    """The physical slot on the source, reserving WAL now; a slot whose WAL is gone is made afresh."""
    with connect(source.node) as conn:
        row = conn.execute(
            "SELECT slot_type, active, wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
        if row is not None and row[0] == "physical" and row[2] != "lost":
            actions.append(f"replication slot {slot} exists on {source.region}")
            return
        if row is not None:
            if row[1]:
                raise ApplicationError(
                    f"slot {slot} on {source.region} is in use but unusable ({row[0]}, WAL {row[2]})",
                    type=ErrorType.STANDBY_RESYNC_FAILED,
                )
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            actions.append(f"dropped replication slot {slot} on {source.region} ({row[0]}, WAL {row[2]})")
        conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
        actions.append(f"created physical replication slot {slot} on {source.region}")


def _rewind(
    target: PostgresTarget, source: PostgresTarget, data_dir: Path, deadline: float, actions: list[str]
) -> bool:
    """pg_rewind from the source; True when the node had diverged (its extra WAL was discarded).

    A checkpoint on the source first: until its first checkpoint after a promotion, the source's pg_control
    still shows the old timeline, and pg_rewind, comparing timelines there, would find "no rewind required"
    for a node that did diverge.
    """
    node = source.node
    with connect(node) as conn:
        conn.execute("CHECKPOINT")
    actions.append(f"checkpoint on {source.region}, so its control file shows its current timeline")
    source_server = make_conninfo(
        host=node.host,
        port=node.port,
        user=node.user,
        dbname=node.dbname,
        connect_timeout=math.ceil(CONNECT_TIMEOUT),
    )
    environment = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    if node.password is not None:
        environment["PGPASSWORD"] = resolve_secret(node.password)
    done = run_as_owner(
        data_dir,
        [pg_binary("pg_rewind", data_dir), f"--target-pgdata={data_dir}", f"--source-server={source_server}"],
        timeout=max(1.0, time_left(deadline)),
        env=environment,
    )
    output = " ".join(f"{done.stdout}\n{done.stderr}".split())
    diverged = _NO_REWIND not in output
    actions.append(
        f"pg_rewind {target.region} from {source.region}: "
        + (
            "diverged, rewound to the source's history"
            if diverged
            else "no rewind required (it had not diverged)"
        )
    )
    return diverged


def _configure_standby(
    target: PostgresTarget, source: PostgresTarget, data_dir: Path, slot: str, actions: list[str]
) -> None:
    """This node's primary_conninfo and slot (not the source's copy), a passfile, and standby.signal."""
    node = source.node
    owner = data_dir.stat()
    settings: dict[str, str | int] = {
        "host": node.host,
        "port": node.port,
        "user": node.user,
        "application_name": slot,
    }
    if node.password is not None:
        passfile = data_dir.parent / REPLICATION_PASSFILE
        line = ":".join(_pgpass_field(str(v)) for v in (node.host, node.port, "*", node.user))
        _write_owned(passfile, f"{line}:{_pgpass_field(resolve_secret(node.password))}\n", owner)
        settings["passfile"] = str(passfile)
    conninfo = make_conninfo("", **settings)
    auto_conf = data_dir / _AUTO_CONF
    try:
        kept = [
            line
            for line in auto_conf.read_text().splitlines()
            if line.split("=", 1)[0].strip() not in ("primary_conninfo", "primary_slot_name")
        ]
    except FileNotFoundError:
        kept = ["# Do not edit this file manually!", "# It will be overwritten by the ALTER SYSTEM command."]
    kept += [f"primary_conninfo = {_conf_quote(conninfo)}", f"primary_slot_name = {_conf_quote(slot)}"]
    _write_owned(auto_conf, "\n".join(kept) + "\n", owner)
    _write_owned(data_dir / "standby.signal", "", owner)
    actions.append(
        f"{_AUTO_CONF}: primary_conninfo -> {node.host}:{node.port} (application_name {slot}), "
        f"primary_slot_name {slot}; standby.signal"
    )


def _write_owned(path: Path, text: str, owner: os.stat_result) -> None:
    """Mode 0600, owned by the data directory's owner (we may be root, the server runs as postgres)."""
    temporary = path.with_name(f".{path.name}.drflow")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    if os.geteuid() == 0:
        os.chown(temporary, owner.st_uid, owner.st_gid)
    os.replace(temporary, path)


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
