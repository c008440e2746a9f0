"""Waiting for the standby to replay up to the fenced position, and promoting it with proof of writes."""

from __future__ import annotations

import math
import time

import psycopg
from pydantic import ValidationError
from temporalio import activity
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
from activities.heartbeat import previous_progress, progress
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


class PromoteSent(StrictModel):
    """The heartbeat sent just before ``pg_promote``: what a retry needs to recognise its own promotion."""

    region: str
    replay_lsn: str | None
    timeline: int | None


def _sent_before(region: str, timeline: int | None) -> PromoteSent | None:
    """The previous attempt's ``pg_promote`` of ``region``, if it sent one and the node has since moved to a
    later timeline (a promotion makes the next one): then that promotion was this run's, not another's."""
    for details in reversed(previous_progress()):
        try:
            sent = PromoteSent.model_validate(details)
        except ValidationError:
            continue
        later = sent.timeline is not None and timeline is not None and timeline > sent.timeline
        if sent.region == region and later:
            return sent
    return None


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
    promoted = False
    with conn:
        try:
            row = conn.execute(
                "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
                "(SELECT timeline_id FROM pg_control_checkpoint())"
            ).fetchone()
            in_recovery = bool(row and row[0])
            if in_recovery:
                replay_lsn = row[1] if row else None
                wait = max(1, math.floor(time_left(deadline)))
                actions.append(f"{region} in recovery at replay LSN {replay_lsn}: pg_promote (wait {wait}s)")
                # Told to the server before the call: a retry after a lost answer knows it was sent.
                sent = PromoteSent(region=region, replay_lsn=replay_lsn, timeline=row[2] if row else None)
                progress(sent.model_dump(mode="json"))
                done = conn.execute("SELECT pg_promote(wait => true, wait_seconds => %s)", (wait,)).fetchone()
                if not (done and done[0]):
                    raise ApplicationError(
                        f"{region} did not finish promotion within {wait}s; its log says why",
                        type=ErrorType.PROMOTION_FAILED,
                    )
                actions.append(f"{region} promoted: out of recovery")
                promoted = True
            timeline_row = conn.execute(
                "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"
            ).fetchone()
            timeline = int(timeline_row[0], 16) if timeline_row else None
            if not in_recovery:
                earlier = _sent_before(region, timeline)
                if earlier is None:
                    actions.append(f"{region} is already a primary (not in recovery): no promotion needed")
                else:
                    promoted, replay_lsn = True, earlier.replay_lsn
                    actions.append(
                        f"{region} promoted by attempt {activity.info().attempt - 1}, whose answer was lost: "
                        f"it sent pg_promote at replay LSN {earlier.replay_lsn} on timeline "
                        f"{earlier.timeline}, and {region} now writes on timeline {timeline}; "
                        "not promoted again"
                    )
            allow_connections(conn, actions)
        except psycopg.Error as err:
            raise ApplicationError(
                f"promoting {region} failed: {describe_error(err)}", type=ErrorType.PROMOTION_FAILED
            ) from None
    writable, detail = verify_writable(node, deadline)
    actions.append(detail)
    return PromoteResult(
        region=region,
        promoted=promoted,
        already_primary=not promoted,
        replay_lsn_at_promotion=replay_lsn,
        timeline=timeline,
        writable=writable,
        duration_ms=elapsed_ms(started),
        actions=actions,
    )
