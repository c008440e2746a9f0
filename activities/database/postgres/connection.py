"""Reaching a PostgreSQL node: sessions, the operator-readable form of libpq errors, deadlines.

Every mechanism module (measure, fence, promote, rewind) connects through ``connect``, which resolves the
password reference at the moment of connecting: the value never enters an input, a result or a log.
"""

from __future__ import annotations

import math
import time
from typing import Any

import psycopg
from psycopg import sql
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.database.postgres.pg_ctl import slot_name
from activities.secrets import resolve_secret
from runbooks.model import PostgresNode, StrictModel

# libpq and psycopg treat any connect_timeout below 2 s as 2 s.
CONNECT_TIMEOUT = 2.0
POLL_INTERVAL = 0.1
# Reached when the runbook's database refuses connections (a connections-cut fence that replicated).
CONTROL_DATABASE = "template1"
NOT_ACCEPTING = "is not currently accepting connections"
_ERROR_EXCERPT = 300

Connection = psycopg.Connection[tuple[Any, ...]]


class PostgresTarget(StrictModel):
    """One node of the runbook's database, named by its region."""

    region: str
    node: PostgresNode


def connect(node: PostgresNode, *, timeout: float = CONNECT_TIMEOUT, dbname: str | None = None) -> Connection:
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
        if dbname is not None or NOT_ACCEPTING not in str(err):
            raise
        return psycopg.connect(dbname=CONTROL_DATABASE, **params)


def describe_error(err: BaseException) -> str:
    """One line an operator can read: libpq's messages span lines and repeat the connection target."""
    if isinstance(err, ApplicationError):
        return err.message
    text = " ".join(str(err).split()) or type(err).__name__
    text = text.removeprefix("connection failed: ")
    return text if len(text) <= _ERROR_EXCERPT else text[:_ERROR_EXCERPT] + "..."


def where(node: PostgresNode) -> str:
    return f"{node.host}:{node.port}"


def time_left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def timeout_ms(deadline: float) -> sql.Literal:
    return sql.Literal(max(1000, int(time_left(deadline) * 1000)))


def elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def report_progress(*details: Any) -> None:
    """Heartbeat with the position reached: a retry after a worker crash resumes from what was seen."""
    if activity.in_activity():
        activity.heartbeat(*details)


def allow_connections(conn: Connection, actions: list[str]) -> int:
    """Re-allow every non-template database that refuses connections; returns how many there were."""
    refused = conn.execute(
        "SELECT datname FROM pg_database WHERE NOT datallowconn AND NOT datistemplate ORDER BY datname"
    ).fetchall()
    for (name,) in refused:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
        actions.append(f"database {name} accepts connections again (ALLOW_CONNECTIONS true)")
    return len(refused)


def try_write(node: PostgresNode) -> None:
    """Create, fill and drop a temporary table on the runbook's database, in a fresh session, as apps would;
    raises the ``psycopg.Error`` that stopped it.

    synchronous_commit=local: a synchronous standby that is gone must not hang the check.
    """
    with connect(node, dbname=node.dbname) as conn, conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = local")
        conn.execute("CREATE TEMP TABLE drflow_write_check (at timestamptz) ON COMMIT DROP")
        conn.execute("INSERT INTO drflow_write_check VALUES (now())")


def verify_writable(node: PostgresNode, deadline: float) -> tuple[bool, str]:
    """``try_write`` until it commits or the deadline passes."""
    problem = "no attempt"
    while True:
        try:
            try_write(node)
            return True, f"write verified on database {node.dbname} (temporary table, committed)"
        except psycopg.Error as err:
            problem = describe_error(err)
        if time.monotonic() >= deadline:
            return False, f"write check on database {node.dbname} failed: {problem}"
        time.sleep(0.2)


def hook_values(
    target: PostgresTarget, source: PostgresTarget | None = None, app_user: str | None = None
) -> dict[str, str]:
    """The placeholders a hook may use (``runbooks.model.HOOK_PLACEHOLDERS``)."""
    node = target.node
    values = {
        "region": target.region,
        "host": node.host,
        "port": str(node.port),
        "dbname": node.dbname,
        "user": node.user,
        "slot": slot_name(target.region),
        "app_user": app_user or "",
        "source_region": "",
        "source_host": "",
        "source_port": "",
    }
    if source is not None:
        values.update(
            source_region=source.region, source_host=source.node.host, source_port=str(source.node.port)
        )
    return values
