"""Re-syncing a former primary as a streaming standby (pg_rewind), then switching back with no row lost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.database.activities import PrepareStandbyDatabaseRequest
from activities.database.activities import prepare_standby as db_prepare_standby
from activities.database.postgres.fence import FenceRequest, fence
from activities.database.postgres.measure import MeasureReplicationRequest, measure_replication
from activities.database.postgres.pg_ctl import pg_ctl_status
from activities.database.postgres.promote import (
    PromoteRequest,
    WaitForReplayRequest,
    promote,
    wait_for_replay,
)
from activities.database.postgres.rewind import PrepareStandbyRequest, prepare_standby
from activities.database.results import (
    FenceResult,
    PrepareStandbyResult,
    PromoteResult,
    ReplicationStatus,
    WaitForReplayResult,
)
from activities.errors import ErrorType
from runbooks.model import PostgresDatabase
from tests.support.postgres import eventually, postgres_pair, target
from workers.sandbox.postgres import PostgresPair

A, B = "region-a", "region-b"


@pytest.fixture
def pair() -> Iterator[PostgresPair]:
    with postgres_pair() as built:
        yield built


def run_prepare(pair: PostgresPair, region: str, source: str, timeout: float = 60) -> PrepareStandbyResult:
    request = PrepareStandbyRequest(
        target=target(pair, region), source=target(pair, source), timeout_seconds=timeout
    )
    result: PrepareStandbyResult = ActivityEnvironment().run(prepare_standby, request)
    return result


def run_fence(pair: PostgresPair, region: str) -> FenceResult:
    result: FenceResult = ActivityEnvironment().run(
        fence, FenceRequest(target=target(pair, region), mode="planned")
    )
    return result


def run_promote(pair: PostgresPair, region: str) -> PromoteResult:
    result: PromoteResult = ActivityEnvironment().run(promote, PromoteRequest(standby=target(pair, region)))
    return result


def write_rows(pair: PostgresPair, region: str, first: int, last: int) -> None:
    with pair.connect(region) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS failback_rows (id int PRIMARY KEY)")
        conn.execute("INSERT INTO failback_rows SELECT generate_series(%s::int, %s::int)", (first, last))


def row_ids(pair: PostgresPair, region: str) -> list[int]:
    with pair.connect(region) as conn:
        try:
            return [r[0] for r in conn.execute("SELECT id FROM failback_rows ORDER BY id").fetchall()]
        except psycopg.errors.UndefinedTable:  # not replicated yet
            return []


def in_recovery(pair: PostgresPair, region: str) -> bool:
    with pair.connect(region) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def test_the_old_primary_is_rewound_streams_and_a_planned_switchback_loses_nothing(
    pair: PostgresPair,
) -> None:
    write_rows(pair, A, 1, 50)
    eventually(lambda: row_ids(pair, B) == list(range(1, 51)), what="rows 1-50 on region-b")
    # Failover: region-a is fenced by a clean shutdown, region-b promoted and written to.
    assert run_fence(pair, A).fenced
    assert run_promote(pair, B).writable
    write_rows(pair, B, 51, 100)

    prepared = run_prepare(pair, A, B)
    assert (prepared.region, prepared.source_region) == (A, B)
    assert (prepared.already_standby, prepared.rewound, prepared.streaming) == (False, True, True)
    # A clean shutdown before the promotion leaves nothing to undo: pg_rewind says so, and still it is safe.
    assert prepared.diverged is False, prepared.actions
    assert any("pg_rewind" in action for action in prepared.actions)
    assert in_recovery(pair, A)
    eventually(lambda: row_ids(pair, A) == list(range(1, 101)), what="region-b's rows on region-a")

    # postgresql.auto.conf was region-b's copy: now it names region-b and region-a's own slot.
    auto_conf = (pair.primary.data_dir / "postgresql.auto.conf").read_text()
    assert f"port={pair.standby.port}" in auto_conf and "application_name=region_a" in auto_conf
    assert "primary_slot_name = 'region_a'" in auto_conf
    assert "password" not in auto_conf
    assert (pair.primary.data_dir / "standby.signal").exists()
    passfile = pair.primary.directory / "replication.pgpass"
    assert passfile.stat().st_mode & 0o777 == 0o600
    assert pair.password() not in " ".join(prepared.actions)
    with pair.connect(B) as conn:
        slot = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = 'region_a'").fetchone()
        sender = conn.execute(
            "SELECT state FROM pg_stat_replication WHERE application_name = 'region_a'"
        ).fetchone()
    assert slot == (True,) and sender == ("streaming",)

    # Replication is measured from the new primary to the re-synced node.
    status: ReplicationStatus = ActivityEnvironment().run(
        measure_replication, MeasureReplicationRequest(primary=target(pair, B), standby=target(pair, A))
    )
    assert status.errors == [] and status.standby_in_recovery and status.primary_in_recovery is False
    assert status.lag_bytes is not None

    # Idempotent: a second call finds it streaming and changes nothing.
    pid = pair.primary.pid
    again = run_prepare(pair, A, B)
    assert (again.already_standby, again.rewound, again.streaming) == (True, False, True)
    assert pair.primary.pid == pid

    # The planned switchback: fence region-b, wait for region-a to replay its final LSN, promote region-a.
    write_rows(pair, B, 101, 150)
    fenced = run_fence(pair, B)
    assert fenced.fenced and fenced.final_lsn is not None
    replayed: WaitForReplayResult = ActivityEnvironment().run(
        wait_for_replay,
        WaitForReplayRequest(standby=target(pair, A), lsn=fenced.final_lsn, timeout_seconds=30),
    )
    assert replayed.reached
    promoted = run_promote(pair, A)
    assert promoted.promoted and promoted.writable
    assert not in_recovery(pair, A)
    assert row_ids(pair, A) == list(range(1, 151))

    # And the old primary of the failover becomes the standby again: back to the starting shape.
    write_rows(pair, A, 151, 160)
    resynced = run_prepare(pair, B, A)
    assert (resynced.already_standby, resynced.rewound, resynced.streaming) == (False, True, True)
    assert in_recovery(pair, B)
    eventually(lambda: row_ids(pair, B) == list(range(1, 161)), what="all rows on region-b")


def test_a_diverged_primary_is_rewound_to_the_new_primarys_history(pair: PostgresPair) -> None:
    """Split brain: region-b promoted while region-a still took writes. Those writes are discarded."""
    write_rows(pair, A, 1, 10)
    eventually(lambda: row_ids(pair, B) == list(range(1, 11)), what="rows 1-10 on region-b")
    assert run_promote(pair, B).writable
    write_rows(pair, A, 1001, 1010)  # only region-a ever has these
    write_rows(pair, B, 11, 20)

    prepared = run_prepare(pair, A, B)
    assert (prepared.already_standby, prepared.rewound, prepared.diverged, prepared.streaming) == (
        False,
        True,
        True,
        True,
    ), prepared.actions
    assert any("fast shutdown of region-a" in action for action in prepared.actions)
    eventually(lambda: row_ids(pair, A) == list(range(1, 21)), what="region-b's history on region-a")


def test_refusals_name_the_problem(pair: PostgresPair) -> None:
    # The source must be the primary: region-b is still a standby here.
    with pytest.raises(ApplicationError) as from_standby:
        run_prepare(pair, A, B)
    assert from_standby.value.type == ErrorType.STANDBY_RESYNC_FAILED and from_standby.value.non_retryable
    assert "region-b is in recovery" in from_standby.value.message
    assert pg_ctl_status(pair.primary.data_dir) == "running"  # nothing was touched

    # A node without data_directory that streams already needs nothing; one that must be re-synced needs
    # the runbook's hook, and without one the refusal says so (validation refuses such runbooks first).
    unmanaged = PrepareStandbyRequest(
        target=target(pair, B, managed=False), source=target(pair, A), timeout_seconds=10
    )
    assert ActivityEnvironment().run(prepare_standby, unmanaged).already_standby
    backwards = PrepareStandbyRequest(
        target=target(pair, A, managed=False), source=target(pair, B), timeout_seconds=10
    )
    with pytest.raises(ApplicationError) as remote:
        ActivityEnvironment().run(prepare_standby, backwards)
    assert remote.value.non_retryable and "region-b is in recovery" in remote.value.message

    # The generic activity dispatches on the runbook's provider; region-b streams already.
    database = PostgresDatabase(provider="postgres", nodes={r: pair.node(r) for r in (A, B)})
    result: PrepareStandbyResult = ActivityEnvironment().run(
        db_prepare_standby, PrepareStandbyDatabaseRequest(database=database, region=B, source=A)
    )
    assert (result.already_standby, result.rewound, result.streaming) == (True, False, True)
    assert not Path(pair.standby.directory / "replication.pgpass").exists()
