"""Drift between the primary and a standby: the settings that break a failover (or the failback after it)
when the two sides differ, read from each node's own catalog.

A physical standby replicates data, roles and the extension catalog, but not its configuration or its
installed binaries. PostgreSQL requires a hot standby's ``max_connections``, ``max_worker_processes``,
``max_wal_senders``, ``max_prepared_transactions`` and ``max_locks_per_transaction`` to be at least the
primary's (replay stops otherwise), and the promoted side serves with its own values: any difference is
drift, since after a failback the roles swap. An extension installed in the database whose files the
standby's server lacks cannot be loaded once that side is primary.
"""

from __future__ import annotations

import psycopg
from temporalio.exceptions import ApplicationError

from activities.database.postgres.connection import PostgresTarget, connect, describe_error, where
from activities.database.results import SettingDrift

HOT_STANDBY_MINIMUMS = (
    "max_connections", "max_worker_processes", "max_wal_senders", "max_prepared_transactions",
    "max_locks_per_transaction",
)  # fmt: skip
EQUAL = ("wal_level", "max_replication_slots", "server_version_num")
_SETTINGS_SQL = "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)"
_EXTENSIONS_SQL = "SELECT extname, extversion FROM pg_extension"
_AVAILABLE_SQL = "SELECT name FROM pg_available_extensions"


def settings_drift(primary: PostgresTarget, standby: PostgresTarget) -> tuple[list[SettingDrift], list[str]]:
    """What differs, and what could not be read (an unreachable side is the replication check's finding)."""
    errors: list[str] = []
    names = [*HOT_STANDBY_MINIMUMS, *EQUAL]
    ours = _read(primary, errors, names)
    theirs = _read(standby, errors, names)
    if ours is None or theirs is None:
        return [], errors
    (primary_settings, extensions, _), (standby_settings, _, available) = ours, theirs
    drift: list[SettingDrift] = []
    for name in names:
        a, b = primary_settings.get(name), standby_settings.get(name)
        if a == b:
            continue
        if name in HOT_STANDBY_MINIMUMS and a is not None and b is not None and int(b) < int(a):
            problem = (f"lower on {standby.region}: a hot standby needs at least the primary's value (replay "
                       "stops), and once promoted it serves with fewer")  # fmt: skip
        elif name in HOT_STANDBY_MINIMUMS:
            problem = (f"lower on {primary.region}: after a failback it is the standby, and replay there "
                       "stops")  # fmt: skip
        elif name == "server_version_num" and a and b and int(a) // 10000 != int(b) // 10000:
            problem = "different major versions: physical replication needs one"
        else:
            problem = "differs: the promoted side behaves differently"
        drift.append(SettingDrift(setting=name, primary=a, standby=b, problem=problem))
    for name, version in sorted(extensions.items()):
        if name not in available:
            drift.append(SettingDrift(
                setting=f"extension {name}", primary=version, standby=None,
                problem=f"installed in the database, but {standby.region}'s server has no files for it: "
                "once promoted it cannot load it",
            ))  # fmt: skip
    return drift, errors


def _read(
    target: PostgresTarget, errors: list[str], names: list[str]
) -> tuple[dict[str, str], dict[str, str], set[str]] | None:
    try:
        with connect(target.node) as conn:
            settings = {str(n): str(v) for n, v in conn.execute(_SETTINGS_SQL, (names,)).fetchall()}
            extensions = {str(n): str(v) for n, v in conn.execute(_EXTENSIONS_SQL).fetchall()}
            available = {str(row[0]) for row in conn.execute(_AVAILABLE_SQL).fetchall()}
            return settings, extensions, available
    except (psycopg.Error, ApplicationError) as err:
        errors.append(f"{target.region} ({where(target.node)}): settings not read: {describe_error(err)}")
        return None
