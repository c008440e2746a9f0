"""A whole sandbox (BIND pair, PostgreSQL primary + standby, region apps, HAProxy) per test, on free ports."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from runbooks.model import Runbook
from tests.support.postgres import searchable_tmp_dir
from workers.sandbox.named import free_port, free_ports
from workers.sandbox.postgres import PostgresPair
from workers.sandbox.world import Sandbox, SandboxPorts, Topology


@dataclass
class SandboxWorld:
    sandbox: Sandbox
    runbook: Runbook
    runbooks: Path

    @property
    def service(self) -> str:
        return self.runbook.service

    @property
    def postgres(self) -> PostgresPair:
        return self.sandbox._postgres_pair()

    def connect(self, region: str) -> psycopg.Connection[tuple[Any, ...]]:
        return self.postgres.connect(region)

    def remote_declarations(self, resync: list[str] | None = None) -> dict[str, Any]:
        """What a runbook with a node without data_directory must declare: a re-sync hook, the app's role.

        The default hook fails (``false``): tests that make one node remote for its fence do not re-sync it.
        """
        return {
            "database__hooks": {"resync": {"command": resync or ["false"]}},
            "database__application": self.postgres.app_role().model_dump(mode="json"),
        }

    def write_runbook(self, **changes: Any) -> Runbook:
        """Rewrite the runbook the worker reads, e.g. a shorter RPO or propagation budget for a test."""
        data = self.runbook.model_dump(mode="json")
        for dotted, value in changes.items():
            node = data
            *parents, leaf = dotted.split("__")
            for key in parents:
                node = node[key]
            node[leaf] = value
        self.runbook = Runbook.model_validate(data)
        # YAML is a superset of JSON: the loader reads this file like any runbook.
        (self.runbooks / f"{self.service}.yaml").write_text(json.dumps(data, indent=2))
        return self.runbook


def without_people(runbook: Runbook) -> Runbook:
    """The runbook with unverified string approvers (no people file): what most tests exercise, since
    they are about moving data and traffic; tests/test_verified_approvals.py runs with the people file."""
    approvals = runbook.approvals.model_copy(update={"people": None, "unsigned": None})
    return runbook.model_copy(update={"approvals": approvals})


@contextmanager
def sandbox_world(topology: Topology = "local", *, people: bool = False) -> Iterator[SandboxWorld]:
    with searchable_tmp_dir("drflow-sandbox-") as directory:
        dns_primary, dns_secondary, pg_primary, pg_standby, haproxy = free_ports(5)
        ports = SandboxPorts(
            dns_primary=dns_primary, dns_secondary=dns_secondary, postgres_primary=pg_primary,
            postgres_standby=pg_standby, app=free_port(), haproxy=haproxy,
        )  # fmt: skip
        sandbox = Sandbox(directory / "sandbox", ports, topology)
        runbooks = directory / "runbooks"
        runbooks.mkdir()
        try:
            sandbox.up()
            runbook = sandbox.runbook() if people else without_people(sandbox.runbook())
            world = SandboxWorld(sandbox=sandbox, runbook=runbook, runbooks=runbooks)
            # The suite shares 2 cores with a dev server, BIND, PostgreSQL pairs and Python apps: a stall of
            # the machine made the shipped 500 ms p95 (a 1 s request timeout) fail healthy canaries, and the
            # sandbox's failback then waits for a person (on_failed_analysis: ask). Latency here measures the
            # machine, not drflow; the tests of a failing canary break the region itself (errors, 503s).
            world.write_runbook(
                failback__analysis__max_p95_latency="3s", failback__analysis__max_error_rate=0.05
            )
            yield world
        finally:
            sandbox.down()


@dataclass
class Writer:
    """Commits numbered rows on a region's database until the connection breaks (the fence)."""

    world: SandboxWorld
    region: str
    acknowledged: list[int] = field(default_factory=list)
    stopped_by: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        with self.world.connect(self.region) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS acked_writes (id bigint PRIMARY KEY)")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        number = 0
        try:
            with self.world.connect(self.region) as conn:
                while not self._stop.is_set():
                    number += 1
                    conn.execute("INSERT INTO acked_writes (id) VALUES (%s)", (number,))
                    self.acknowledged.append(
                        number
                    )  # autocommit: the INSERT returned, the primary acknowledged
        except psycopg.Error as err:
            self.stopped_by = type(err).__name__

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
