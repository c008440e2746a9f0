"""Fencing an old primary so it cannot accept writes, and the compensation that gives it its service back.

A node managed on this host (``data_directory``) is shut down cleanly; any other node has its connections
cut. Both are checked before acting, so a retried fence or unfence never does its work twice.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import psycopg
from psycopg import sql
from pydantic import Field
from temporalio.exceptions import ApplicationError

from activities.database.postgres.connection import (
    CONNECT_TIMEOUT,
    CONTROL_DATABASE,
    NOT_ACCEPTING,
    POLL_INTERVAL,
    Connection,
    PostgresTarget,
    allow_connections,
    connect,
    describe_error,
    hook_values,
    time_left,
    timeout_ms,
    try_write,
    verify_writable,
    where,
)
from activities.database.postgres.pg_ctl import (
    PostgresCommandError,
    PostgresNotInstalledError,
    pg_controldata,
    pg_ctl_start,
    pg_ctl_status,
    pg_ctl_stop,
)
from activities.database.results import FenceMode, FenceResult, UnfenceResult
from activities.errors import ErrorType
from activities.hooks import HookRun, require_success, run_hook
from runbooks.model import CommandHook, PostgresRole, StrictModel


class FenceRequest(StrictModel):
    target: PostgresTarget
    mode: FenceMode
    timeout_seconds: float = 30
    proof_role: PostgresRole | None = Field(
        default=None, description="the application's role: the fence holds when a write as it is refused"
    )
    hook: CommandHook | None = Field(default=None, description="the runbook's extra fence (firewall, ...)")


def fence(req: FenceRequest) -> FenceResult:
    """Make the old primary unable to accept writes; ``default_transaction_read_only`` would not do that.

    A node with ``data_directory`` (managed on this host) is shut down cleanly, and its final LSN is the
    shutdown checkpoint in pg_control: nothing can be written after it. Any other node has its connections
    cut instead (see ``_fence_by_cutting_connections``). Planned and drill fences raise when the node cannot
    be fenced (retryable); an emergency fence is best effort within ``timeout_seconds`` and reports what it
    could not do.
    """
    deadline = time.monotonic() + req.timeout_seconds
    if req.target.node.data_directory is not None:
        return _fence_by_shutdown(req, Path(req.target.node.data_directory), deadline)
    return _fence_by_cutting_connections(req, deadline)


def _fence_by_shutdown(req: FenceRequest, data_dir: Path, deadline: float) -> FenceResult:
    region = req.target.region
    actions: list[str] = []
    errors: list[str] = []
    emergency = req.mode == "emergency"

    def result(fenced: bool, already: bool, final_lsn: str | None) -> FenceResult:
        method: Literal["shutdown", "none"] = "shutdown" if fenced else "none"
        return FenceResult(
            region=region,
            method=method,
            fenced=fenced,
            already_fenced=already,
            final_lsn=final_lsn,
            actions=actions,
            errors=errors,
        )

    try:
        state = pg_ctl_status(data_dir)
        already = state == "stopped"
        if already:
            actions.append(f"{region} is already stopped ({data_dir})")
        else:
            remaining = time_left(deadline)
            budget = remaining * 0.7 if emergency else remaining
            actions.append(f"fast shutdown of {region} (pg_ctl stop -m fast, up to {budget:.0f}s)")
            try:
                pg_ctl_stop(data_dir, "fast", budget)
            except PostgresCommandError as err:
                if not emergency:
                    raise
                errors.append(f"fast shutdown did not complete: {err}")
                actions.append(f"immediate shutdown of {region} (pg_ctl stop -m immediate)")
                pg_ctl_stop(data_dir, "immediate", max(1.0, time_left(deadline)))
        control = pg_controldata(data_dir)
    except PostgresNotInstalledError as err:
        if emergency:
            errors.append(str(err))
            return result(False, False, None)
        raise ApplicationError(str(err), type=ErrorType.DATABASE_TOOLS_MISSING, non_retryable=True) from None
    except PostgresCommandError as err:
        if emergency:
            errors.append(f"could not shut down {region}: {err}")
            return result(False, False, None)
        raise ApplicationError(
            f"could not fence {region} by shutting it down: {err}", type=ErrorType.FENCE_FAILED
        ) from None

    cluster_state = control.get("Database cluster state", "unknown")
    checkpoint = control.get("Latest checkpoint location")
    if cluster_state in ("shut down", "shut down in recovery") and checkpoint:
        actions.append(
            f"{region} is down with a clean shutdown checkpoint at {checkpoint} ({cluster_state}): "
            "nothing can be written after it"
        )
        return result(True, already, checkpoint)
    # Stopped without a shutdown checkpoint (a crash or an immediate shutdown): it cannot write, but the
    # last LSN it wrote is past the last checkpoint and pg_control does not record it.
    errors.append(
        f"{region} is stopped but was not shut down cleanly (cluster state {cluster_state!r}): its final LSN "
        "is unknown, so writes after the last checkpoint may not have reached the standby"
    )
    return result(True, already, None)


def _fence_by_cutting_connections(req: FenceRequest, deadline: float) -> FenceResult:
    """Cut connections over SQL, run the runbook's fence hook, then prove it by a write as the app's role.

    The proof is what makes ``fenced`` true for a node drflow does not manage: refusing connections is a
    catalog setting a superuser can undo, a firewall may miss a path. Only a write as the application's role
    that the server itself refuses (the database does not accept connections, or is read-only) proves the
    fence. A write that cannot reach the server proves nothing (it is what a partition looks like too), so a
    node SQL cannot reach stays unconfirmed whatever its fence hook reported, and promotion stops at the
    unfenced gate with the hook's outcome in the message. An emergency fence returns what it found; a
    planned one raises unless proven.
    """
    strict = req.mode != "emergency"
    hook = req.hook
    try:
        cut = _cut_connections(req, deadline)
    except ApplicationError:
        if hook is None:
            raise
        # The hook may fence what SQL could not reach (STONITH, a firewall on the database's host).
        cut = None
    if cut is None:
        cut = FenceResult(
            region=req.target.region, method="none", fenced=False, already_fenced=False, final_lsn=None,
            actions=[], errors=[f"cannot reach {req.target.region} over SQL to cut its connections"],
        )  # fmt: skip
    if cut.already_fenced and cut.method == "none" and cut.fenced:
        return cut  # a standby: nothing to fence, nothing to prove
    actions, errors = list(cut.actions), list(cut.errors)
    run: HookRun | None = None
    if hook is not None:
        app_user = req.proof_role.user if req.proof_role is not None else None
        run = run_hook(hook, hook_values(req.target, app_user=app_user))
        actions.append(f"fence hook: {run.describe()}")
        if not run.succeeded:
            errors.append(f"the fence hook failed: {run.describe()}")
    hooked = run is not None and run.succeeded
    proven, proof = _prove_fenced(req)
    fenced = proven and (cut.fenced or hooked)
    if not fenced and proof not in errors:
        errors.append(proof)
    if not fenced and strict:
        raise ApplicationError(
            f"could not fence {req.target.region}: {'; '.join(errors)}",
            type=ErrorType.FENCE_FAILED,
        )
    method: Literal["connections-cut", "hook", "none"] = (
        "connections-cut" if cut.fenced or cut.method == "connections-cut" else "hook" if hooked else "none"
    )
    return cut.model_copy(
        update={
            "method": method, "fenced": fenced, "actions": actions, "errors": errors, "proof": proof,
            "hook": run,
        }
    )  # fmt: skip


_REFUSED_SQLSTATES = frozenset(
    {
        "55000",  # object_not_in_prerequisite_state: the database is not accepting connections
        "25006",  # read_only_sql_transaction: a standby or a read-only node
        "57P01",  # admin_shutdown: terminated by the fence
        "57P03",  # cannot_connect_now: shutting down or in recovery
        "42501",  # insufficient_privilege: the hook revoked the role's rights
        "28000",  # invalid_authorization_specification: pg_hba rejects the role
    }
)


# A refused connection has no SQLSTATE in psycopg (libpq reports it as text): the server's own words.
_REFUSED_MESSAGES = (
    NOT_ACCEPTING,
    "pg_hba.conf rejects connection",
    "permission denied",
    "read-only transaction",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "terminating connection due to administrator command",
)


def _prove_fenced(req: FenceRequest) -> tuple[bool, str]:
    """Try the write an application would make; (proven, how) from whether and how it was refused."""
    role = req.proof_role
    node = req.target.node
    if role is None:
        return True, "no application role declared: the fence is not proven by a write (nodes drflow manages)"
    try:
        try_write(node.model_copy(update={"user": role.user, "password": role.password}))
    except psycopg.Error as err:
        state = err.sqlstate or ""
        message = describe_error(err)
        refused = any(text in message for text in _REFUSED_MESSAGES)
        if state in _REFUSED_SQLSTATES or refused:
            return True, f"a write as {role.user} on {where(node)}/{node.dbname} is refused: {message}"
        return False, (
            f"a write as {role.user} did not reach {where(node)}, which proves no fence (a partition looks "
            f"the same): {message}"
        )
    return False, f"a write as {role.user} on {where(node)}/{node.dbname} still succeeds: NOT fenced"


def _cut_connections(req: FenceRequest, deadline: float) -> FenceResult:
    """Refuse new connections to every database, end every client session, then read the final LSN.

    ``ALTER DATABASE ... ALLOW_CONNECTIONS false`` is a catalog change, so it replicates: the standby's
    databases refuse connections too until ``promote`` re-allows them on the new primary. Template databases
    stay open (the fence works from template1; applications do not use them), and background work
    (autovacuum) may still write WAL after ``final_lsn``, but no application transaction can.
    """
    region, node = req.target.region, req.target.node
    actions: list[str] = []
    errors: list[str] = []
    strict = req.mode != "emergency"

    def result(fenced: bool, already: bool, final_lsn: str | None) -> FenceResult:
        return FenceResult(
            region=region,
            method="connections-cut" if fenced or actions else "none",
            fenced=fenced,
            already_fenced=already,
            final_lsn=final_lsn,
            actions=actions,
            errors=errors,
        )

    try:
        # PostgreSQL cannot refuse connections to the database a session is in: work from template1.
        conn = connect(node, timeout=min(CONNECT_TIMEOUT, time_left(deadline)), dbname=CONTROL_DATABASE)
    except psycopg.Error as err:
        message = f"cannot reach {region} ({where(node)}) to cut its connections: {describe_error(err)}"
        if strict:
            raise ApplicationError(message, type=ErrorType.DATABASE_UNREACHABLE) from None
        errors.append(message)
        return result(False, False, None)

    with conn:
        try:
            conn.execute(sql.SQL("SET statement_timeout = {}").format(timeout_ms(deadline)))
            row = conn.execute("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text").fetchone()
            if row is not None and row[0]:
                actions.append(f"{region} is in recovery (a standby): it cannot accept writes")
                return FenceResult(
                    region=region,
                    method="none",
                    fenced=True,
                    already_fenced=True,
                    final_lsn=row[1],
                    actions=actions,
                    errors=errors,
                )
            databases = conn.execute(
                "SELECT datname, datallowconn FROM pg_database WHERE NOT datistemplate ORDER BY datname"
            ).fetchall()
            failed = False
            for name, allowed in databases:
                if not allowed:
                    continue
                try:
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name))
                    )
                    actions.append(f"database {name} refuses new connections (ALLOW_CONNECTIONS false)")
                except psycopg.Error as err:
                    if strict:
                        raise
                    failed = True
                    errors.append(f"could not refuse connections to database {name}: {describe_error(err)}")
            ended, lingering = _terminate_client_backends(conn, deadline, actions, errors)
            already = all(not allowed for _, allowed in databases) and ended == 0
            conn.execute("CHECKPOINT")
            lsn_row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            final_lsn = lsn_row[0] if lsn_row else None
            actions.append(f"checkpoint; WAL position after the fence: {final_lsn}")
            fenced = not failed and lingering == 0
            if strict and not fenced:
                raise ApplicationError(
                    f"could not fence {region}: " + "; ".join(errors), type=ErrorType.FENCE_FAILED
                )
            return result(fenced, already, final_lsn)
        except psycopg.Error as err:
            message = f"fencing {region} by cutting connections failed: {describe_error(err)}"
            if strict:
                raise ApplicationError(message, type=ErrorType.FENCE_FAILED) from None
            errors.append(message)
            return result(False, False, None)


def _terminate_client_backends(
    conn: Connection, deadline: float, actions: list[str], errors: list[str]
) -> tuple[int, int]:
    """End every client session but ours and wait until they are gone: (sessions ended, still connected)."""
    others = """
        SELECT pid, coalesce(datname, ''), coalesce(usename, ''), coalesce(application_name, '')
        FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
    """
    sessions = conn.execute(others).fetchall()
    for pid, datname, usename, application in sessions:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        actions.append(f"terminated session {pid} ({usename}@{datname} {application})".rstrip())
    remaining = sessions
    while remaining and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        remaining = conn.execute(others).fetchall()
    if remaining:
        pids = ", ".join(str(r[0]) for r in remaining)
        errors.append(f"{len(remaining)} session(s) still connected after pg_terminate_backend: pids {pids}")
    return len(sessions), len(remaining)


class UnfenceRequest(StrictModel):
    target: PostgresTarget
    timeout_seconds: float = 60
    hook: CommandHook | None = Field(default=None, description="undoes the runbook's fence hook")
    app_user: str | None = None


def unfence(req: UnfenceRequest) -> UnfenceResult:
    """Compensation when a failover stops after the fence and before promotion: the old primary serves again.

    Undoes either fence: starts a node that was shut down (sandbox layout: port from the runbook, log and
    socket directory beside the data directory) and re-allows connections to databases that refuse them.
    Only safe while the standby has not been promoted; the workflow calls it only then, because starting the
    old primary next to a promoted standby would make two primaries.
    """
    started = time.monotonic()
    deadline = started + req.timeout_seconds
    region, node = req.target.region, req.target.node
    actions: list[str] = []
    was_running = True
    if node.data_directory is not None:
        data_dir = Path(node.data_directory)
        try:
            if pg_ctl_status(data_dir) == "stopped":
                was_running = False
                pg_ctl_start(data_dir, node.port, timeout=max(1.0, time_left(deadline)))
                actions.append(f"started {region} (pg_ctl start on port {node.port})")
            else:
                actions.append(f"{region} is running")
        except PostgresNotInstalledError as err:
            raise ApplicationError(
                str(err), type=ErrorType.DATABASE_TOOLS_MISSING, non_retryable=True
            ) from None
        except PostgresCommandError as err:
            raise ApplicationError(
                f"could not start {region}: {err}", type=ErrorType.UNFENCE_FAILED
            ) from None
    if req.hook is not None and node.data_directory is None:
        run = run_hook(req.hook, hook_values(req.target, app_user=req.app_user))
        actions.append(f"unfence hook: {run.describe()}")
        require_success(run, f"giving {region} its service back", ErrorType.UNFENCE_FAILED)
    try:
        with connect(node, dbname=CONTROL_DATABASE) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is not None and row[0]:
                actions.append(f"{region} is in recovery (a standby): it cannot serve writes, left as it is")
                return UnfenceResult(region=region, restored=False, actions=actions)
            reallowed = allow_connections(conn, actions)
    except psycopg.Error as err:
        raise ApplicationError(
            f"could not give {region} ({where(node)}) its connections back: {describe_error(err)}",
            type=ErrorType.UNFENCE_FAILED,
        ) from None
    writable, detail = verify_writable(node, deadline)
    actions.append(detail)
    if was_running and not reallowed:
        actions.append(f"{region} was already serving: nothing to undo")
    return UnfenceResult(region=region, restored=writable, actions=actions)
