"""The PostgreSQL activities against a real primary and streaming standby: measure, fence, replay, promote."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.database.postgres.connection import PostgresTarget
from activities.database.postgres.fence import FenceRequest, UnfenceRequest, fence, unfence
from activities.database.postgres.measure import MeasureReplicationRequest, measure_replication
from activities.database.postgres.pg_ctl import find_pg_bindir, pg_ctl_status
from activities.database.postgres.promote import (
    PromoteRequest,
    WaitForReplayRequest,
    promote,
    wait_for_replay,
)
from activities.database.results import ReplicationStatus, UnfenceResult, lsn_diff, lsn_to_int
from activities.errors import ErrorType
from runbooks.model import PostgresNode
from tests.support.postgres import eventually, postgres_pair, target
from workers.sandbox.named import free_port
from workers.sandbox.postgres import PostgresPair

PRIMARY, STANDBY = "region-a", "region-b"


@pytest.fixture(scope="module")
def streaming() -> Iterator[PostgresPair]:
    """Shared by the tests that leave the pair as they found it (replay resumed, nothing fenced)."""
    with postgres_pair() as pair:
        yield pair


def run(fn, arg):  # type: ignore[no-untyped-def]
    return ActivityEnvironment().run(fn, arg)


def measure(pair: PostgresPair, *, managed: bool = True) -> ReplicationStatus:
    request = MeasureReplicationRequest(
        primary=target(pair, PRIMARY, managed=managed), standby=target(pair, STANDBY, managed=managed)
    )
    result: ReplicationStatus = run(measure_replication, request)
    return result


def insert_probe(pair: PostgresPair, region: str = PRIMARY) -> str:
    tag = f"test-{uuid.uuid4()}"
    with pair.connect(region) as conn:
        conn.execute("INSERT INTO health_probe (region) VALUES (%s)", (tag,))
    return tag


def visible(pair: PostgresPair, region: str, tag: str) -> bool:
    with pair.connect(region) as conn:
        return conn.execute("SELECT 1 FROM health_probe WHERE region = %s", (tag,)).fetchone() is not None


def caught_up(pair: PostgresPair) -> ReplicationStatus | None:
    status = measure(pair)
    return status if status.lag_bytes == 0 else None


def test_server_binaries_are_installed() -> None:
    assert (find_pg_bindir() / "pg_ctl").is_file()


def test_lsn_helpers_match_pg_lsn_arithmetic() -> None:
    assert lsn_to_int("0/3000060") == 0x3000060
    assert lsn_to_int("1/0") == 1 << 32
    assert lsn_diff("1/10", "0/FFFFFFF0") == 0x20
    assert lsn_diff("0/3000000", "0/3000060") == -0x60
    with pytest.raises(ValueError, match="not an LSN"):
        lsn_to_int("3000060")


def test_standby_streams_a_row_inserted_on_the_primary(streaming: PostgresPair) -> None:
    assert streaming.role(PRIMARY) == "primary"
    assert streaming.role(STANDBY) == "standby"
    tag = insert_probe(streaming)
    eventually(lambda: visible(streaming, STANDBY, tag), what="row replicated to the standby")
    with streaming.connect(STANDBY) as conn:
        row = conn.execute("SELECT status, conninfo FROM pg_stat_wal_receiver").fetchone()
    assert row is not None and row[0] == "streaming" and "application_name=region_b" in row[1]
    with streaming.connect(PRIMARY) as conn:
        sender = conn.execute("SELECT application_name, state FROM pg_stat_replication").fetchone()
    assert sender == ("region_b", "streaming")


def test_measure_reports_zero_lag_when_the_standby_has_caught_up(streaming: PostgresPair) -> None:
    insert_probe(streaming)
    status = eventually(lambda: caught_up(streaming), what="zero lag")
    assert status.primary_reachable and status.standby_reachable
    assert status.primary_in_recovery is False and status.standby_in_recovery is True
    assert status.primary_lsn == status.standby_replay_lsn
    assert status.lag_seconds == 0
    assert status.replay_paused is False
    assert status.errors == []


def test_measure_reports_lag_while_replay_is_paused_and_wait_for_replay_times_out(
    streaming: PostgresPair,
) -> None:
    insert_probe(streaming)
    eventually(lambda: caught_up(streaming), what="zero lag before pausing")
    with streaming.connect(STANDBY) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    try:
        tag = insert_probe(streaming)

        def lagging() -> ReplicationStatus | None:
            status = measure(streaming)
            received = status.standby_receive_lsn and status.primary_lsn == status.standby_receive_lsn
            return status if received and (status.lag_bytes or 0) > 0 else None

        status = eventually(lagging, what="the paused standby to receive but not replay")
        assert status.replay_paused is True
        assert status.lag_bytes is not None and status.lag_bytes > 0
        assert status.lag_seconds is not None and status.lag_seconds > 0
        assert not visible(streaming, STANDBY, tag)

        assert status.primary_lsn is not None
        waited = run(
            wait_for_replay,
            WaitForReplayRequest(
                standby=target(streaming, STANDBY), lsn=status.primary_lsn, timeout_seconds=0.5
            ),
        )
        assert waited.reached is False
        assert waited.replay_lsn == status.standby_replay_lsn
        assert waited.waited_ms >= 500
    finally:
        with streaming.connect(STANDBY) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
    eventually(lambda: visible(streaming, STANDBY, tag), what="replay to resume")


def test_planned_fence_shuts_the_primary_down_and_the_standby_is_promoted(pg_pair: PostgresPair) -> None:
    tag = insert_probe(pg_pair)
    old_primary, standby = target(pg_pair, PRIMARY), target(pg_pair, STANDBY)

    fenced = run(fence, FenceRequest(target=old_primary, mode="planned"))
    assert (fenced.method, fenced.fenced, fenced.already_fenced) == ("shutdown", True, False)
    assert fenced.final_lsn is not None and fenced.errors == []
    assert pg_ctl_status(pg_pair.primary.data_dir) == "stopped"
    with pytest.raises(psycopg.OperationalError):
        pg_pair.connect(PRIMARY).close()

    again = run(fence, FenceRequest(target=old_primary, mode="planned"))
    assert (again.fenced, again.already_fenced, again.final_lsn) == (True, True, fenced.final_lsn)

    status = measure(pg_pair)
    assert status.primary_reachable is False and status.primary_lsn is None and status.lag_bytes is None
    assert status.standby_reachable is True
    assert any(PRIMARY in error for error in status.errors)

    replayed = run(
        wait_for_replay, WaitForReplayRequest(standby=standby, lsn=fenced.final_lsn, timeout_seconds=10)
    )
    assert replayed.reached is True
    assert replayed.replay_lsn is not None and lsn_diff(replayed.replay_lsn, fenced.final_lsn) >= 0
    assert visible(pg_pair, STANDBY, tag)

    promoted = run(promote, PromoteRequest(standby=standby, timeout_seconds=30))
    assert (promoted.promoted, promoted.already_primary, promoted.writable) == (True, False, True)
    assert promoted.timeline == 2
    assert promoted.replay_lsn_at_promotion is not None
    assert lsn_diff(promoted.replay_lsn_at_promotion, fenced.final_lsn) >= 0
    assert pg_pair.role(STANDBY) == "primary"
    new_tag = insert_probe(pg_pair, STANDBY)
    assert visible(pg_pair, STANDBY, new_tag)

    again_promoted = run(promote, PromoteRequest(standby=standby, timeout_seconds=30))
    assert (again_promoted.promoted, again_promoted.already_primary) == (False, True)
    assert again_promoted.writable is True and again_promoted.timeline == 2


def test_emergency_fence_of_an_unreachable_node_reports_instead_of_raising(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("not-used\n")
    nowhere = PostgresTarget(
        region=PRIMARY,
        node=PostgresNode(
            host="127.0.0.1", port=free_port(), dbname="app", user="drflow", password=f"file:{secret}"
        ),
    )

    result = run(fence, FenceRequest(target=nowhere, mode="emergency", timeout_seconds=5))
    assert (result.fenced, result.already_fenced, result.method, result.final_lsn) == (
        False,
        False,
        "none",
        None,
    )
    assert result.errors and "Connection refused" in result.errors[0]
    assert "not-used" not in result.model_dump_json()

    with pytest.raises(ApplicationError) as raised:
        run(fence, FenceRequest(target=nowhere, mode="planned", timeout_seconds=5))
    assert raised.value.type == ErrorType.DATABASE_UNREACHABLE
    assert raised.value.non_retryable is False
    assert "cannot reach region-a (127.0.0.1:" in raised.value.message


def test_emergency_fence_of_a_local_node_whose_data_directory_is_gone(tmp_path: Path) -> None:
    node = PostgresNode(
        host="127.0.0.1", port=free_port(), user="drflow", data_directory=str(tmp_path / "gone")
    )
    result = run(fence, FenceRequest(target=PostgresTarget(region=PRIMARY, node=node), mode="emergency"))
    assert (result.fenced, result.method) == (False, "none")
    assert result.errors and "could not shut down region-a" in result.errors[0]


def test_connections_cut_fence_refuses_new_connections_until_promote_reallows(pg_pair: PostgresPair) -> None:
    remote_primary = target(pg_pair, PRIMARY, managed=False)
    remote_standby = target(pg_pair, STANDBY, managed=False)
    client = pg_pair.connect(PRIMARY)
    try:
        fenced = run(fence, FenceRequest(target=remote_primary, mode="planned", timeout_seconds=10))
        assert (fenced.method, fenced.fenced, fenced.already_fenced) == ("connections-cut", True, False)
        assert fenced.final_lsn is not None and fenced.errors == []
        assert any("database app refuses new connections" in action for action in fenced.actions)
        with pytest.raises(psycopg.OperationalError):
            client.execute("SELECT 1")
    finally:
        client.close()
    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        pg_pair.connect(PRIMARY).close()
    assert pg_ctl_status(pg_pair.primary.data_dir) == "running"

    again = run(fence, FenceRequest(target=remote_primary, mode="planned", timeout_seconds=10))
    assert (again.fenced, again.already_fenced) == (True, True)

    # The refusal replicated: the standby's app database refuses too, so the activities use template1.
    replayed = run(
        wait_for_replay,
        WaitForReplayRequest(standby=remote_standby, lsn=fenced.final_lsn, timeout_seconds=10),
    )
    assert replayed.reached is True
    eventually(
        lambda: measure(pg_pair, managed=False).standby_replay_lsn is not None,
        what="standby measurable via template1",
    )

    promoted = run(promote, PromoteRequest(standby=remote_standby, timeout_seconds=30))
    assert (promoted.promoted, promoted.writable) == (True, True)
    assert any("database app accepts connections again" in action for action in promoted.actions)
    tag = insert_probe(pg_pair, STANDBY)
    assert visible(pg_pair, STANDBY, tag)
    # The old primary keeps refusing: it is still fenced.
    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        pg_pair.connect(PRIMARY).close()


def test_unfence_gives_the_old_primary_back_after_either_fence(pg_pair: PostgresPair) -> None:
    """The compensation when a failover stops before promotion: the standby follows the old primary again."""
    managed, remote = target(pg_pair, PRIMARY), target(pg_pair, PRIMARY, managed=False)

    run(fence, FenceRequest(target=managed, mode="planned"))
    restored = run(unfence, UnfenceRequest(target=managed))
    assert (restored.restored, already_serving(restored)) == (True, False)
    assert any("started region-a" in action for action in restored.actions)
    tag = insert_probe(pg_pair)
    eventually(
        lambda: visible(pg_pair, STANDBY, tag), what="the standby to stream from the restarted primary"
    )

    run(fence, FenceRequest(target=remote, mode="planned"))
    restored = run(unfence, UnfenceRequest(target=remote))
    assert (restored.restored, already_serving(restored)) == (True, False)
    assert any("database app accepts connections again" in action for action in restored.actions)
    tag = insert_probe(pg_pair)
    eventually(
        lambda: visible(pg_pair, STANDBY, tag), what="the standby's app database to accept connections"
    )

    again = run(unfence, UnfenceRequest(target=managed))
    assert (again.restored, already_serving(again)) == (True, True)


def already_serving(result: UnfenceResult) -> bool:
    """The unfence found nothing to undo: it says so, and did nothing but checks."""
    return any("was already serving: nothing to undo" in action for action in result.actions)
