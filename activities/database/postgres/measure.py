"""Replication as PostgreSQL itself reports it: WAL positions on the primary and the standby, replay lag.

Both nodes are read in one attempt, the primary first, so the lag is never underestimated; an unreachable
node is a finding, not a failure.
"""

from __future__ import annotations

from typing import Any

import psycopg
from temporalio.exceptions import ApplicationError

from activities.database.postgres.connection import PostgresTarget, connect, describe_error, where
from activities.database.results import ReplicationStatus, lsn_diff
from runbooks.model import StrictModel


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
        with connect(target.node) as conn:
            return conn.execute(query).fetchone()
    except (psycopg.Error, ApplicationError) as err:
        errors.append(f"{target.region} ({where(target.node)}): {describe_error(err)}")
        return None
