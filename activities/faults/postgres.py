"""A PostgreSQL standby whose WAL replay is paused (``pg_wal_replay_pause()``), removed by resuming it.

The standby keeps receiving WAL and answering reads while it replays nothing: its replay lag grows, which is
what the readiness warnings and a failover's RPO guard must notice. Only loopback servers (the sandbox's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from activities.faults.base import FaultError, require_loopback
from activities.secrets import resolve_secret
from runbooks.model import PostgresNode

CONNECT_TIMEOUT = 5


def _connect(node: PostgresNode) -> psycopg.Connection[tuple[Any, ...]]:
    password = resolve_secret(node.password) if node.password else None
    try:
        return psycopg.connect(
            host=node.host, port=node.port, user=node.user, dbname=node.dbname, password=password,
            connect_timeout=CONNECT_TIMEOUT, autocommit=True,
        )  # fmt: skip
    except psycopg.Error as err:
        raise FaultError(f"cannot reach {node.host}:{node.port}: {' '.join(str(err).split())}") from None


def replay_paused(node: PostgresNode) -> bool | None:
    """True while replay is paused (or a pause was asked), None when the node is not a standby."""
    with _connect(node) as conn:
        row = conn.execute(
            "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() "
            "THEN pg_get_wal_replay_pause_state() END"
        ).fetchone()
    if row is None or not row[0]:
        return None
    return str(row[1]) != "not paused"


@dataclass
class ReplayPaused:
    node: PostgresNode

    def __post_init__(self) -> None:
        require_loopback(self.node.host, "PostgreSQL replay pause")

    @property
    def kind(self) -> str:
        return "postgres-replay-paused"

    def describe(self) -> str:
        return f"WAL replay paused on {self.node.host}:{self.node.port}"

    def params(self) -> dict[str, Any]:
        return {"node": self.node.model_dump(mode="json")}  # a password is a reference, never its value

    def inject(self) -> None:
        with _connect(self.node) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if not (row and row[0]):
                raise FaultError(f"{self.node.host}:{self.node.port} is not a standby: replay cannot pause")
            conn.execute("SELECT pg_wal_replay_pause()")

    def remove(self) -> None:
        """Resume; a node promoted meanwhile replays nothing any more, which is nothing to undo."""
        with _connect(self.node) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row and row[0]:
                conn.execute("SELECT pg_wal_replay_resume()")


def remove_recorded(params: dict[str, Any]) -> str:
    fault = ReplayPaused(PostgresNode.model_validate(params["node"]))
    fault.remove()
    return f"replay resumed on {fault.node.host}:{fault.node.port}"
