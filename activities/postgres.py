"""Self-managed PostgreSQL: measure replication, fence the old primary, wait for replay, promote the standby,
and re-sync a former primary as a standby (pg_rewind) for a failback.

Every activity checks state before acting, so a retry after a lost result does no harm. The password stays
a SecretRef in every input and result; it is resolved here, at the moment of connecting. The activities
block (psycopg, pg_ctl), so they are plain functions that the worker runs in its thread pool.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import ErrorType
from activities.secrets import resolve_secret
from runbooks.model import PostgresNode, StrictModel
from workers.sandbox.postgres import (
    PostgresCommandError,
    PostgresNotInstalledError,
    pg_binary,
    pg_controldata,
    pg_ctl_start,
    pg_ctl_status,
    pg_ctl_stop,
    run_as_owner,
    slot_name,
)

# libpq and psycopg treat any connect_timeout below 2 s as 2 s.
CONNECT_TIMEOUT = 2.0
POLL_INTERVAL = 0.1
# Reached when the runbook's database refuses connections (a connections-cut fence that replicated).
CONTROL_DATABASE = "template1"
_NOT_ACCEPTING = "is not currently accepting connections"
_ERROR_EXCERPT = 300

Connection = psycopg.Connection[tuple[Any, ...]]


class PostgresTarget(StrictModel):
    """One node of the runbook's database, named by its region."""

    region: str
    node: PostgresNode


# ---------------------------------------------------------------------------------------------- LSNs
def lsn_to_int(lsn: str) -> int:
    """``"0/3000060"`` -> 50331744: the two hex halves of a pg_lsn as one byte position."""
    high, sep, low = lsn.strip().partition("/")
    if not sep:
        raise ValueError(f"{lsn!r} is not an LSN (expected X/Y in hexadecimal, e.g. 0/3000060)")
    return (int(high, 16) << 32) | int(low, 16)


def lsn_diff(a: str, b: str) -> int:
    """Bytes from ``b`` to ``a`` (positive when ``a`` is ahead), as ``pg_wal_lsn_diff(a, b)``."""
    return lsn_to_int(a) - lsn_to_int(b)


# ------------------------------------------------------------------------------------------ measure
class ReplicationStatus(StrictModel):
    primary_region: str
    standby_region: str
    primary_reachable: bool
    primary_in_recovery: bool | None
    primary_lsn: str | None = Field(description="pg_current_wal_lsn() on the primary")
    standby_reachable: bool
    standby_in_recovery: bool | None
    standby_receive_lsn: str | None
    standby_replay_lsn: str | None
    replay_paused: bool | None
    lag_bytes: int | None = Field(description="primary_lsn - standby_replay_lsn; None if either is unknown")
    lag_seconds: float | None = Field(
        description="0 when replay has caught up, else now() - pg_last_xact_replay_timestamp() on the standby"
    )
    errors: list[str]


class MeasureReplicationRequest(StrictModel):
    primary: PostgresTarget
    standby: PostgresTarget


_PRIMARY_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END
"""
_STANDBY_SQL = """
SELECT pg_is_in_recovery(),
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END,
       EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8
"""


@activity.defn(name="pg_measure_replication")
def measure_replication(req: MeasureReplicationRequest) -> ReplicationStatus:
    """Read the primary first, then the standby, so the lag is never underestimated.

    An unreachable node is reported (reachable=False and a reason in ``errors``), never raised: the workflow
    decides whether what could be seen is enough. When the primary is unknown, "caught up" means the standby
    has replayed everything it received.
    """
    errors: list[str] = []
    primary = _query_one(req.primary, _PRIMARY_SQL, errors)
    standby = _query_one(req.standby, _STANDBY_SQL, errors)
    primary_in_recovery = bool(primary[0]) if primary else None
    primary_lsn: str | None = primary[1] if primary else None
    if primary_in_recovery:
        errors.append(f"{req.primary.region} is in recovery (a standby), so it has no current WAL position")
    receive_lsn: str | None = standby[1] if standby else None
    replay_lsn: str | None = standby[2] if standby else None
    if standby is not None and not standby[0]:
        errors.append(f"{req.standby.region} is not in recovery: it is a primary, not a standby")

    lag_bytes = max(0, lsn_diff(primary_lsn, replay_lsn)) if primary_lsn and replay_lsn else None
    lag_seconds: float | None = None
    if standby is not None:
        if lag_bytes is not None:
            caught_up = lag_bytes == 0
        else:
            caught_up = bool(receive_lsn and replay_lsn and lsn_diff(replay_lsn, receive_lsn) >= 0)
        replay_age = standby[4]
        lag_seconds = 0.0 if caught_up else (max(0.0, float(replay_age)) if replay_age is not None else None)
    return ReplicationStatus(
        primary_region=req.primary.region,
        standby_region=req.standby.region,
        primary_reachable=primary is not None,
        primary_in_recovery=primary_in_recovery,
        primary_lsn=primary_lsn,
        standby_reachable=standby is not None,
        standby_in_recovery=bool(standby[0]) if standby else None,
        standby_receive_lsn=receive_lsn,
        standby_replay_lsn=replay_lsn,
        replay_paused=standby[3] if standby else None,
        lag_bytes=lag_bytes,
        lag_seconds=lag_seconds,
        errors=errors,
    )


def _query_one(target: PostgresTarget, query: str, errors: list[str]) -> tuple[Any, ...] | None:
    try:
        with _connect(target.node) as conn:
            return conn.execute(query).fetchone()
    except (psycopg.Error, ApplicationError) as err:
        errors.append(f"{target.region} ({_where(target.node)}): {_describe(err)}")
        return None


# -------------------------------------------------------------------------------------------- fence
FenceMode = Literal["planned", "emergency", "drill"]


class FenceRequest(StrictModel):
    target: PostgresTarget
    mode: FenceMode
    timeout_seconds: float = 30


class FenceResult(StrictModel):
    region: str
    method: Literal["shutdown", "connections-cut", "none"]
    fenced: bool
    already_fenced: bool
    final_lsn: str | None = Field(description="the last LSN the old primary can ever have written")
    actions: list[str] = Field(description="what was done, in order")
    errors: list[str] = Field(description="what could not be done (emergency: best effort)")


@activity.defn(name="pg_fence")
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
            remaining = _remaining(deadline)
            budget = remaining * 0.7 if emergency else remaining
            actions.append(f"fast shutdown of {region} (pg_ctl stop -m fast, up to {budget:.0f}s)")
            try:
                pg_ctl_stop(data_dir, "fast", budget)
            except PostgresCommandError as err:
                if not emergency:
                    raise
                errors.append(f"fast shutdown did not complete: {err}")
                actions.append(f"immediate shutdown of {region} (pg_ctl stop -m immediate)")
                pg_ctl_stop(data_dir, "immediate", max(1.0, _remaining(deadline)))
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
        conn = _connect(node, timeout=min(CONNECT_TIMEOUT, _remaining(deadline)), dbname=CONTROL_DATABASE)
    except psycopg.Error as err:
        message = f"cannot reach {region} ({_where(node)}) to cut its connections: {_describe(err)}"
        if strict:
            raise ApplicationError(message, type=ErrorType.DATABASE_UNREACHABLE) from None
        errors.append(message)
        return result(False, False, None)

    with conn:
        try:
            conn.execute(sql.SQL("SET statement_timeout = {}").format(_timeout_ms(deadline)))
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
                    errors.append(f"could not refuse connections to database {name}: {_describe(err)}")
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
            message = f"fencing {region} by cutting connections failed: {_describe(err)}"
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


# ---------------------------------------------------------------------------------- wait for replay
class WaitForReplayRequest(StrictModel):
    standby: PostgresTarget
    lsn: str
    timeout_seconds: float


class WaitForReplayResult(StrictModel):
    reached: bool
    replay_lsn: str | None
    waited_ms: float


@activity.defn(name="pg_wait_for_replay")
def wait_for_replay(req: WaitForReplayRequest) -> WaitForReplayResult:
    """Poll the standby's replay position about every 100 ms, heartbeating, until it reaches ``lsn``.

    A timeout is an answer (reached=False), not an error: the workflow weighs it against the RPO. A
    connection lost while polling is retried until the timeout.
    """
    target = lsn_to_int(req.lsn)
    started = time.monotonic()
    deadline = started + req.timeout_seconds
    replay_lsn: str | None = None
    conn: Connection | None = None
    try:
        while True:
            try:
                if conn is None:
                    conn = _connect(req.standby.node, timeout=min(CONNECT_TIMEOUT, _remaining(deadline)))
                row = conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()
                replay_lsn = row[0] if row else None
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
            if replay_lsn is not None and lsn_to_int(replay_lsn) >= target:
                return WaitForReplayResult(
                    reached=True, replay_lsn=replay_lsn, waited_ms=_elapsed_ms(started)
                )
            _heartbeat(replay_lsn)
            if time.monotonic() >= deadline:
                return WaitForReplayResult(
                    reached=False, replay_lsn=replay_lsn, waited_ms=_elapsed_ms(started)
                )
            time.sleep(min(POLL_INTERVAL, _remaining(deadline)))
    finally:
        if conn is not None:
            conn.close()


# ------------------------------------------------------------------------------------------ promote
class PromoteRequest(StrictModel):
    standby: PostgresTarget
    timeout_seconds: float = 60


class PromoteResult(StrictModel):
    region: str
    promoted: bool
    already_primary: bool
    replay_lsn_at_promotion: str | None = Field(
        description="pg_last_wal_replay_lsn() right before pg_promote"
    )
    timeline: int | None
    writable: bool = Field(description="a real write (temporary table) committed on the runbook's database")
    duration_ms: float = Field(description="from the start of the activity until writability was verified")
    actions: list[str]


@activity.defn(name="pg_promote")
def promote(req: PromoteRequest) -> PromoteResult:
    """Promote the standby unless it already is a primary, re-allow connections, then prove it takes writes.

    Databases that refuse connections are re-allowed: the connections-cut fence of the old primary
    replicated that refusal here. Writability is proved by a write, not by ``pg_is_in_recovery()``.
    """
    started = time.monotonic()
    deadline = started + req.timeout_seconds
    region, node = req.standby.region, req.standby.node
    actions: list[str] = []
    try:
        conn = _connect(node)
    except psycopg.Error as err:
        raise ApplicationError(
            f"cannot reach {region} ({_where(node)}) to promote it: {_describe(err)}",
            type=ErrorType.DATABASE_UNREACHABLE,
        ) from None
    replay_lsn: str | None = None
    with conn:
        try:
            row = conn.execute("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text").fetchone()
            in_recovery = bool(row and row[0])
            if in_recovery:
                replay_lsn = row[1] if row else None
                wait = max(1, math.floor(_remaining(deadline)))
                actions.append(f"{region} in recovery at replay LSN {replay_lsn}: pg_promote (wait {wait}s)")
                done = conn.execute("SELECT pg_promote(wait => true, wait_seconds => %s)", (wait,)).fetchone()
                if not (done and done[0]):
                    raise ApplicationError(
                        f"{region} did not finish promotion within {wait}s; its log says why",
                        type=ErrorType.PROMOTION_FAILED,
                    )
                actions.append(f"{region} promoted: out of recovery")
            else:
                actions.append(f"{region} is already a primary (not in recovery): no promotion needed")
            timeline_row = conn.execute(
                "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"
            ).fetchone()
            timeline = int(timeline_row[0], 16) if timeline_row else None
            _allow_connections(conn, actions)
        except psycopg.Error as err:
            raise ApplicationError(
                f"promoting {region} failed: {_describe(err)}", type=ErrorType.PROMOTION_FAILED
            ) from None
    writable, detail = _verify_writable(node, deadline)
    actions.append(detail)
    return PromoteResult(
        region=region,
        promoted=in_recovery,
        already_primary=not in_recovery,
        replay_lsn_at_promotion=replay_lsn,
        timeline=timeline,
        writable=writable,
        duration_ms=_elapsed_ms(started),
        actions=actions,
    )


def _verify_writable(node: PostgresNode, deadline: float) -> tuple[bool, str]:
    """Create, fill and drop a temporary table on the runbook's database, in a fresh session, as apps would.

    synchronous_commit=local: a synchronous standby that is gone must not hang the check.
    """
    problem = "no attempt"
    while True:
        try:
            with _connect(node, dbname=node.dbname) as conn, conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = local")
                conn.execute("CREATE TEMP TABLE drflow_write_check (at timestamptz) ON COMMIT DROP")
                conn.execute("INSERT INTO drflow_write_check VALUES (now())")
            return True, f"write verified on database {node.dbname} (temporary table, committed)"
        except psycopg.Error as err:
            problem = _describe(err)
        if time.monotonic() >= deadline:
            return False, f"write check on database {node.dbname} failed: {problem}"
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------ unfence
class UnfenceRequest(StrictModel):
    target: PostgresTarget
    timeout_seconds: float = 60


class UnfenceResult(StrictModel):
    region: str
    restored: bool = Field(description="the node is a primary again and a real write succeeded")
    already_serving: bool
    actions: list[str]


@activity.defn(name="pg_unfence")
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
                pg_ctl_start(data_dir, node.port, timeout=max(1.0, _remaining(deadline)))
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
    try:
        with _connect(node, dbname=CONTROL_DATABASE) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is not None and row[0]:
                actions.append(f"{region} is in recovery (a standby): it cannot serve writes, left as it is")
                return UnfenceResult(region=region, restored=False, already_serving=False, actions=actions)
            reallowed = _allow_connections(conn, actions)
    except psycopg.Error as err:
        raise ApplicationError(
            f"could not give {region} ({_where(node)}) its connections back: {_describe(err)}",
            type=ErrorType.UNFENCE_FAILED,
        ) from None
    writable, detail = _verify_writable(node, deadline)
    actions.append(detail)
    return UnfenceResult(
        region=region, restored=writable, already_serving=was_running and not reallowed, actions=actions
    )


def _allow_connections(conn: Connection, actions: list[str]) -> int:
    """Re-allow every non-template database that refuses connections; returns how many there were."""
    refused = conn.execute(
        "SELECT datname FROM pg_database WHERE NOT datallowconn AND NOT datistemplate ORDER BY datname"
    ).fetchall()
    for (name,) in refused:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
        actions.append(f"database {name} accepts connections again (ALLOW_CONNECTIONS true)")
    return len(refused)


# ---------------------------------------------------------------------------------- prepare standby
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


class PrepareStandbyResult(StrictModel):
    region: str
    source_region: str
    already_standby: bool = Field(description="it was already streaming from the source: nothing was done")
    rewound: bool = Field(description="pg_rewind ran against the source (see diverged for what it undid)")
    diverged: bool | None = Field(
        description="it had WAL the source never received, which pg_rewind discarded; None if not rewound"
    )
    streaming: bool = Field(
        description="its WAL receiver streams from the source, which lists it as a standby"
    )
    actions: list[str]


@activity.defn(name="pg_prepare_standby")
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
        raise ApplicationError(
            f"{target.region} ({_where(target.node)}) has no data_directory: drflow re-syncs only nodes it "
            f"manages on this host; rebuild it as a standby of {source.region} with your own tooling "
            "(pg_rewind or pg_basebackup)",
            type=ErrorType.STANDBY_RESYNC_FAILED,
            non_retryable=True,
        )
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
                grace = min(_FOLLOW_GRACE, _remaining(deadline) / 3)
                actions.append(
                    f"{target.region} follows {source.region} but is not streaming: waiting {grace:.0f}s"
                )
                if _wait_streaming(target, source, slot, time.monotonic() + grace) is None:
                    actions.append(f"{target.region} is now streaming from {source.region}")
                    return result(already=True, rewound=False, diverged=None)
                actions.append(f"{target.region} did not start streaming: rewinding it")
            actions.append(f"fast shutdown of {target.region} (pg_ctl stop -m fast)")
            pg_ctl_stop(data_dir, "fast", max(1.0, _remaining(deadline)))
        else:
            actions.append(f"{target.region} is stopped ({data_dir})")
        _ensure_slot(source, slot, actions)
        diverged = _rewind(target, source, data_dir, deadline, actions)
        _configure_standby(target, source, data_dir, slot, actions)
        pg_ctl_start(data_dir, target.node.port, timeout=max(1.0, _remaining(deadline)))
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
            f"re-syncing {target.region} from {source.region} failed: {_describe(err)}",
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


def _require_primary(source: PostgresTarget) -> None:
    try:
        with _connect(source.node) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error as err:
        raise ApplicationError(
            f"cannot reach {source.region} ({_where(source.node)}), the primary to re-sync from: "
            + _describe(err),
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
        with _connect(target.node) as conn:
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
            with _connect(target.node, timeout=CONNECT_TIMEOUT) as conn:
                row = conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
            receiver = row[0] if row else None
            with _connect(source.node, timeout=CONNECT_TIMEOUT) as conn:
                row = conn.execute(
                    "SELECT state FROM pg_stat_replication WHERE application_name = %s", (slot,)
                ).fetchone()
            sender = row[0] if row else None
            if receiver == "streaming" and sender == "streaming":
                return None
            problem = f"WAL receiver: {receiver or 'none'}, on {source.region}: {sender or 'not connected'}"
        except psycopg.Error as err:
            problem = _describe(err)
        _heartbeat(problem)
        if time.monotonic() >= deadline:
            return problem
        time.sleep(min(0.2, _remaining(deadline)))


def _ensure_slot(source: PostgresTarget, slot: str, actions: list[str]) -> None:
    """The physical slot on the source, reserving WAL now; a slot whose WAL is gone is made afresh."""
    with _connect(source.node) as conn:
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
    with _connect(node) as conn:
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
        timeout=max(1.0, _remaining(deadline)),
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


# ------------------------------------------------------------------------------------------ helpers
def _connect(
    node: PostgresNode, *, timeout: float = CONNECT_TIMEOUT, dbname: str | None = None
) -> Connection:
    """An autocommit session; without an explicit ``dbname``, falls back to template1 when the runbook's
    database refuses connections (a fenced node, or a standby of one)."""
    password = resolve_secret(node.password) if node.password is not None else None
    params: dict[str, Any] = {
        "host": node.host,
        "port": node.port,
        "user": node.user,
        "password": password,
        "connect_timeout": max(2, math.ceil(timeout)),
        "application_name": "drflow",
        "autocommit": True,
    }
    try:
        return psycopg.connect(dbname=dbname or node.dbname, **params)
    except psycopg.OperationalError as err:
        if dbname is not None or _NOT_ACCEPTING not in str(err):
            raise
        return psycopg.connect(dbname=CONTROL_DATABASE, **params)


def _describe(err: BaseException) -> str:
    """One line an operator can read: libpq's messages span lines and repeat the connection target."""
    if isinstance(err, ApplicationError):
        return err.message
    text = " ".join(str(err).split()) or type(err).__name__
    text = text.removeprefix("connection failed: ")
    return text if len(text) <= _ERROR_EXCERPT else text[:_ERROR_EXCERPT] + "..."


def _where(node: PostgresNode) -> str:
    return f"{node.host}:{node.port}"


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _timeout_ms(deadline: float) -> sql.Literal:
    return sql.Literal(max(1000, int(_remaining(deadline) * 1000)))


def _elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _heartbeat(*details: Any) -> None:
    if activity.in_activity():
        activity.heartbeat(*details)
