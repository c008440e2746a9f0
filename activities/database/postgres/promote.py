"""Waiting for the standby to replay up to the fenced position, and promoting it with proof of writes."""

from __future__ import annotations

import math
import time

import psycopg
from temporalio.exceptions import ApplicationError

from activities.database.postgres.connection import (
    CONNECT_TIMEOUT,
    POLL_INTERVAL,
    Connection,
    PostgresTarget,
    allow_connections,
    connect,
    describe_error,
    elapsed_ms,
    report_progress,
    time_left,
    verify_writable,
    where,
)
from activities.database.results import PromoteResult, WaitForReplayResult, lsn_to_int
from activities.errors import ErrorType
from runbooks.model import StrictModel


class WaitForReplayRequest(StrictModel):
    standby: PostgresTarget
    lsn: str
    timeout_seconds: float


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
                    conn = connect(req.standby.node, timeout=min(CONNECT_TIMEOUT, time_left(deadline)))
                row = conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()
                replay_lsn = row[0] if row else None
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
            if replay_lsn is not None and lsn_to_int(replay_lsn) >= target:
                return WaitForReplayResult(reached=True, replay_lsn=replay_lsn, waited_ms=elapsed_ms(started))
            report_progress(replay_lsn)
            if time.monotonic() >= deadline:
                return WaitForReplayResult(
                    reached=False, replay_lsn=replay_lsn, waited_ms=elapsed_ms(started)
                )
            time.sleep(min(POLL_INTERVAL, time_left(deadline)))
    finally:
        if conn is not None:
            conn.close()


class PromoteRequest(StrictModel):
    standby: PostgresTarget
    timeout_seconds: float = 60


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
        conn = connect(node)
    except psycopg.Error as err:
        raise ApplicationError(
            f"cannot reach {region} ({where(node)}) to promote it: {describe_error(err)}",
            type=ErrorType.DATABASE_UNREACHABLE,
        ) from None
    replay_lsn: str | None = None
    with conn:
        try:
            row = conn.execute("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text").fetchone()
            in_recovery = bool(row and row[0])
            if in_recovery:
                replay_lsn = row[1] if row else None
                wait = max(1, math.floor(time_left(deadline)))
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
            allow_connections(conn, actions)
        except psycopg.Error as err:
            raise ApplicationError(
                f"promoting {region} failed: {describe_error(err)}", type=ErrorType.PROMOTION_FAILED
            ) from None
    writable, detail = verify_writable(node, deadline)
    actions.append(detail)
    return PromoteResult(
        region=region,
        promoted=in_recovery,
        already_primary=not in_recovery,
        replay_lsn_at_promotion=replay_lsn,
        timeline=timeline,
        writable=writable,
        duration_ms=elapsed_ms(started),
        actions=actions,
    )
