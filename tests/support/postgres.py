"""Fresh PostgreSQL primary/standby pairs on free ports: ``pg_pair`` per test, ``postgres_pair()`` for modules.

Each pair is real (initdb, pg_basebackup, streaming replication) and takes about a second to build, so a
test that fences or promotes gets its own. A missing server binary fails the test, naming the package.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from activities.database.postgres.connection import PostgresTarget
from workers.sandbox.named import free_ports
from workers.sandbox.postgres import PostgresPair, PostgresPairConfig

T = TypeVar("T")


@contextlib.contextmanager
def searchable_tmp_dir(prefix: str = "drflow-test-") -> Iterator[Path]:
    """A directory the postgres system user can enter: pytest's tmp_path lives under a 0700 directory."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def postgres_pair() -> Iterator[PostgresPair]:
    with searchable_tmp_dir("drflow-pg-") as directory:
        primary_port, standby_port = free_ports(2)
        pair = PostgresPair(
            PostgresPairConfig(
                directory=directory / "pg", primary_port=primary_port, standby_port=standby_port
            )
        )
        try:
            pair.start()
            yield pair
        finally:
            pair.stop()


@pytest.fixture
def pg_pair() -> Iterator[PostgresPair]:
    """region-a primary, region-b streaming standby, database ``app`` with table ``health_probe``."""
    with postgres_pair() as pair:
        yield pair


def target(pair: PostgresPair, region: str, *, managed: bool = True) -> PostgresTarget:
    """The runbook's view of a node; ``managed=False`` drops data_directory, as for a remote server."""
    return PostgresTarget(region=region, node=pair.node(region, managed=managed))


def eventually(probe: Callable[[], T | None], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll until ``probe`` returns something truthy; replication is asynchronous."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout:g}s (last: {value!r})")
        time.sleep(0.05)
